"""tokenizer_file: the Rust tokenizer alone gives the Hugging Face tokenizer's ids, or is not used."""

import pytest

from finetune_bert.engine import onnx_tokenizer as tokenizer_file
from finetune_bert.engine.onnx_tokenizer import TokenizerFile

TEXTS = ["A GOOD film", "naïve café", "<br />br", "   spaced   out  ", "word " * 500, "emoji 🎬", "x"]


@pytest.fixture(scope="module")
def hf(tiny_model):
    from finetune_bert.engine.model_folder import load_tokenizer
    return load_tokenizer(str(tiny_model))


def test_same_ids_as_the_hf_tokenizer(hf, tmp_path):
    info = tokenizer_file.save(hf, tmp_path / "tokenizer.json")
    assert info is not None and info["pad_token_id"] == hf.pad_token_id
    ours = TokenizerFile(tmp_path / "tokenizer.json", info["pad_token_id"], info["model_max_length"])
    for special in (False, True):
        assert ours(TEXTS, add_special_tokens=special)["input_ids"] == hf(TEXTS, add_special_tokens=special)["input_ids"]
    assert ours("x")["input_ids"] == hf("x")["input_ids"]  # one string: one list, not a list of lists
    assert len(ours(["word " * 500], add_special_tokens=False)["input_ids"][0]) == 500  # never truncated


def test_a_tokenizer_that_disagrees_is_not_saved(hf, tmp_path):
    class Lowered:
        """An HF tokenizer whose Python side changes the text before the Rust tokenizer sees it."""
        backend_tokenizer, pad_token_id, model_max_length = hf.backend_tokenizer, hf.pad_token_id, hf.model_max_length

        def __call__(self, texts, **kw):
            return hf([t[::-1] for t in texts], **kw)

    assert tokenizer_file.save(Lowered(), tmp_path / "tokenizer.json") is None
    assert not (tmp_path / "tokenizer.json").exists()


def test_an_option_it_does_not_implement_is_refused(hf, tmp_path):
    info = tokenizer_file.save(hf, tmp_path / "tokenizer.json")
    ours = TokenizerFile(tmp_path / "tokenizer.json", info["pad_token_id"], info["model_max_length"])
    with pytest.raises(TypeError):
        ours(["a"], truncation=True)  # silently ignored, it would read the whole text
