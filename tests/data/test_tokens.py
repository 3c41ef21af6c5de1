"""The tokens stage: truncation strategies, special tokens, exact token ids, the max-length clamp."""

import pytest

from finetune_bert.data.tokens import encode, max_length_for, special_tokens, truncate


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model)

def test_truncate_strategies_on_known_ids():
    ids = list(range(100, 120))  # 20 tokens
    assert truncate(ids, 8, "head") == list(range(100, 108))
    assert truncate(ids, 8, "tail") == list(range(112, 120))
    assert truncate(ids, 8, "head+tail", head_tokens=3) == [100, 101, 102, 115, 116, 117, 118, 119]
    assert truncate(ids, 8, "head+tail", head_tokens=128) == [100, 101, 102, 103, 116, 117, 118, 119]
    assert truncate(ids, 30, "head+tail") == ids


def test_head_tail_for_bert_at_512_keeps_128_plus_382():
    ids = list(range(1000))
    kept = truncate(ids, 510, "head+tail", 128)
    assert kept[:128] == list(range(128)) and kept[128:] == list(range(618, 1000))


def test_special_tokens_are_cls_and_sep(tokenizer):
    assert special_tokens(tokenizer) == ([tokenizer.cls_token_id], [tokenizer.sep_token_id])


def test_encode_head_tail_exact_token_ids(tokenizer):
    words = ["the", "movie", "was", "good", "and", "the", "plot", "was", "dull", "very"]
    vocab = tokenizer.get_vocab()
    enc = encode(tokenizer, [" ".join(words)], [1], max_length=8, strategy="head+tail", head_tokens=2)
    expected = [vocab["[CLS]"], vocab["the"], vocab["movie"]] + [vocab[w] for w in words[-4:]] + [vocab["[SEP]"]]
    assert enc.ids[0].tolist() == expected
    assert enc.full_lengths.tolist() == [12] and enc.lengths.tolist() == [8]
    head = encode(tokenizer, [" ".join(words)], None, 8, "head")
    assert head.ids[0].tolist() == [vocab["[CLS]"]] + [vocab[w] for w in words[:6]] + [vocab["[SEP]"]]


def test_short_text_is_not_padded_or_cut(tokenizer):
    enc = encode(tokenizer, ["good film", "bad"], [1, 0], 32, "head+tail")
    assert enc.lengths.tolist() == [4, 3]

def test_max_length_is_clamped_with_warning(tokenizer, tiny_model):
    from transformers import AutoConfig
    length, warning = max_length_for(tokenizer, AutoConfig.from_pretrained(tiny_model), 512)
    assert length == 64 and "--max-length 512 is more than this model supports; using 64" in warning
    assert max_length_for(tokenizer, AutoConfig.from_pretrained(tiny_model), 32) == (32, None)


def test_window_starts_step_by_size_less_stride_and_end_on_the_last_token():
    from finetune_bert.data.tokens import window_starts

    assert window_starts(4, 4, 1) == [0]
    assert window_starts(10, 4, 1) == [0, 3, 6]      # [0:4] [3:7] [6:10]
    assert window_starts(11, 4, 1) == [0, 3, 6, 7]   # the last window ends on token 11: overlap of 3 there
    assert window_starts(600, 510, 128) == [0, 90]
    assert window_starts(1200, 510, 128) == [0, 382, 690]


def test_windows_cover_every_token_and_a_text_that_fits_is_its_truncated_self(tokenizer):
    from finetune_bert.data.tokens import encode_windows

    texts = ["the movie was good", " ".join(["the movie was good and the plot dull"] * 6)]
    windows = encode_windows(tokenizer, texts, 16, 4)
    assert windows.owner.tolist().count(0) == 1
    assert windows.encoded.ids[0].tolist() == encode(tokenizer, texts[:1], None, 16, "head+tail").ids[0].tolist()
    inner = tokenizer(texts[1], add_special_tokens=False)["input_ids"]
    pieces = [w.tolist()[1:-1] for w, o in zip(windows.encoded.ids, windows.owner) if o == 1]
    assert all(len(p) == 14 for p in pieces) and pieces[0] == inner[:14] and pieces[-1] == inner[-14:]
    assert windows.full_lengths.tolist() == [len(tokenizer(t)["input_ids"]) for t in texts]
