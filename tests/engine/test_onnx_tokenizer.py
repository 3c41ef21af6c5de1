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


def test_pairs_give_the_hf_tokenizers_ids_and_type_ids(hf, tmp_path):
    info = tokenizer_file.save(hf, tmp_path / "tokenizer.json")
    assert info["type_ids"] is True  # BERT's tokenizer gives token type ids
    ours = TokenizerFile(tmp_path / "tokenizer.json", info["pad_token_id"], info["model_max_length"], info["type_ids"])
    firsts, seconds = TEXTS, TEXTS[::-1]
    mine, theirs = ours(firsts, seconds), hf(firsts, seconds)
    assert mine["input_ids"] == theirs["input_ids"] and mine["token_type_ids"] == theirs["token_type_ids"]
    assert ours("a", "b") == {"input_ids": hf("a", "b")["input_ids"], "token_type_ids": hf("a", "b")["token_type_ids"]}
    assert "token_type_ids" not in ours(firsts, return_token_type_ids=False)


def test_encode_reads_pairs_through_either_tokenizer_alike(hf, tmp_path):
    """tokens.encode with pairs: the ONNX backend's tokenizer gives the ids and type ids transformers' gives."""
    from finetune_bert.data.tokens import encode

    info = tokenizer_file.save(hf, tmp_path / "tokenizer.json")
    ours = TokenizerFile(tmp_path / "tokenizer.json", info["pad_token_id"], info["model_max_length"], info["type_ids"])
    seconds = ["the plot", "good " * 40, "x", "A GOOD film", "bad", "very long " * 30, "ok"]
    for max_length in (6, 16, 64):
        a = encode(ours, TEXTS, None, max_length, "head", pairs=seconds)
        b = encode(hf, TEXTS, None, max_length, "head", pairs=seconds)
        assert [x.tolist() for x in a.ids] == [x.tolist() for x in b.ids]
        assert [x.tolist() for x in a.type_ids] == [x.tolist() for x in b.type_ids]
        assert a.full_lengths.tolist() == b.full_lengths.tolist()


def test_a_tokenizer_without_type_ids_reads_pairs_as_type_zero(hf, tmp_path):
    """A model whose tokenizer names no token type ids (RoBERTa, DistilBERT) reads every pair token as type 0,
    whatever the saved post-processor would give."""
    from finetune_bert.data.tokens import encode

    info = tokenizer_file.save(hf, tmp_path / "tokenizer.json")
    ours = TokenizerFile(tmp_path / "tokenizer.json", info["pad_token_id"], info["model_max_length"], type_ids=False)
    assert "token_type_ids" not in ours("a", "b")
    enc = encode(ours, ["good film"], None, 16, "head", pairs=["bad plot"])
    assert enc.ids[0].tolist() == hf("good film", "bad plot")["input_ids"] and not enc.type_ids[0].any()


def test_a_tokenizer_that_disagrees_on_pairs_is_not_saved(hf, tmp_path):
    class SwapsPairs:
        """An HF tokenizer whose Python side puts a pair's texts the other way round."""
        backend_tokenizer, pad_token_id, model_max_length = hf.backend_tokenizer, hf.pad_token_id, hf.model_max_length
        model_input_names = hf.model_input_names

        def __call__(self, texts, pairs=None, **kw):
            return hf(texts, **kw) if pairs is None else hf(pairs, texts, **kw)

    assert tokenizer_file.save(SwapsPairs(), tmp_path / "tokenizer.json") is None
    assert not (tmp_path / "tokenizer.json").exists()
