"""The tokens stage: truncation strategies, special tokens, exact token ids, the max-length clamp."""

import numpy as np
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



# --- text pairs: one sequence in the tokenizer's pair template, cut as transformers' longest_first cuts it -----------

def _pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Pairs of every length from 1 to 20 words on each side, in random combinations."""
    import random

    from conftest import FILLER, POSITIVE

    rng = random.Random(seed)
    words = FILLER + POSITIVE
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 20))) for _ in range(n)]
    return texts, [" ".join(rng.choices(words, k=rng.randint(1, 20))) for _ in range(n)]


def test_pair_template_of_bert_is_cls_a_sep_b_sep_with_type_ids(tokenizer):
    from finetune_bert.data.tokens import pair_template

    template = pair_template(tokenizer)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert (template.prefix, template.middle, template.suffix) == ([cls], [sep], [sep])
    assert template.ids([10, 11], [12]).tolist() == [cls, 10, 11, sep, 12, sep]
    assert template.type_ids(2, 1).tolist() == [0, 0, 0, 0, 1, 1]


def test_pairs_give_transformers_ids_and_type_ids_at_every_max_length(tokenizer):
    texts, pairs = _pairs(60, seed=0)
    for max_length in (3, 4, 5, 8, 9, 16, 17, 25, 40, 64):
        enc = encode(tokenizer, texts, [1] * len(texts), max_length, "head+tail", pairs=pairs)
        assert enc.labels.tolist() == [1] * len(texts)
        for i, (a, b) in enumerate(zip(texts, pairs)):
            theirs = tokenizer(a, b, truncation="longest_first", max_length=max_length)
            assert enc.ids[i].tolist() == theirs["input_ids"], (a, b, max_length)
            assert enc.type_ids[i].tolist() == theirs["token_type_ids"], (a, b, max_length)
            assert enc.full_lengths[i] == len(tokenizer(a, b)["input_ids"])


def test_pairs_are_cut_from_the_longer_text_and_the_strategy_is_for_single_texts(tokenizer):
    vocab = tokenizer.get_vocab()
    long, short = "the movie was good and the plot was dull very", "loved it"
    for strategy in ("head", "tail", "head+tail"):
        enc = encode(tokenizer, [long], None, 10, strategy, pairs=[short])
        kept = [vocab[w] for w in long.split()[:5]]
        assert enc.ids[0].tolist() == [vocab["[CLS]"], *kept, vocab["[SEP]"], vocab["loved"], vocab["it"],
                                       vocab["[SEP]"]]
    assert enc.full_lengths.tolist() == [15] and enc.lengths.tolist() == [10]
    assert encode(tokenizer, ["good"], None, 10, "head").type_ids is None  # single texts: no type ids


def test_longest_first_cuts_a_token_at_a_time_from_the_longer_text():
    from finetune_bert.data.tokens import longest_first

    def one_at_a_time(first, second, budget):
        second_was_shorter = len(second) < len(first)  # on a tie, tokenizers cuts the one that was the shorter
        while len(first) + len(second) > budget:
            if len(second) > len(first) or (len(second) == len(first) and second_was_shorter):
                second = second[:-1]
            else:
                first = first[:-1]
        return first, second

    for n1 in range(12):
        for n2 in range(12):
            for budget in range(0, 26):
                first, second = list(range(n1)), list(range(100, 100 + n2))
                assert longest_first(first, second, budget) == one_at_a_time(first, second, budget), (n1, n2, budget)


def _roberta_like():
    """A byte-level-free WordLevel tokenizer with RoBERTa's post-processor: <s> a </s></s> b </s>, no type ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from conftest import FILLER, POSITIVE

    vocab = {w: i for i, w in enumerate(["<s>", "<pad>", "</s>", "<unk>", *FILLER, *POSITIVE])}
    rust = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    rust.pre_tokenizer = pre_tokenizers.Whitespace()
    rust.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(tokenizer_object=rust, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_input_names=["input_ids", "attention_mask"])


def test_roberta_style_pairs_have_two_separators_between_and_type_ids_all_zero():
    from finetune_bert.data.tokens import pair_template

    tok = _roberta_like()
    template = pair_template(tok)
    assert (template.prefix, template.middle, template.suffix) == ([0], [2, 2], [2])
    texts, pairs = _pairs(30, seed=1)
    for max_length in (5, 6, 9, 20, 64):
        enc = encode(tok, texts, None, max_length, "head", pairs=pairs)
        assert [x.tolist() for x in enc.ids] == [tok(a, b, truncation="longest_first", max_length=max_length)["input_ids"]
                                                 for a, b in zip(texts, pairs)]
        assert all(not t.any() and len(t) == len(x) for t, x in zip(enc.type_ids, enc.ids))


def test_pairs_are_tokenized_a_chunk_at_a_time(tokenizer, monkeypatch):
    from finetune_bert.data import tokens

    monkeypatch.setattr(tokens, "TOKENIZE_CHUNK", 7)
    texts, pairs = _pairs(30, seed=2)
    chunked = encode(tokenizer, texts, None, 24, "head", pairs=pairs)
    monkeypatch.setattr(tokens, "TOKENIZE_CHUNK", 2048)
    whole = encode(tokenizer, texts, None, 24, "head", pairs=pairs)
    assert [x.tolist() for x in chunked.ids] == [x.tolist() for x in whole.ids]
    assert [x.tolist() for x in chunked.type_ids] == [x.tolist() for x in whole.type_ids]


def test_encode_splits_passes_each_splits_second_texts(tokenizer, tiny_model):
    from transformers import AutoConfig

    from finetune_bert.data.splits import Split
    from finetune_bert.data.tokens import encode_splits

    class Dataset:  # the two things encode_splits reads of a data.Dataset
        train = Split("train", "t.csv", ["good film", "bad plot"], ["yes", "no"], ["1", "2"], ["great movie", "dull"])
        val, test = None, Split("test", "s.csv", ["loved it"], ["yes"], ["1"], None)

        def encode_labels(self, split):
            return np.array([int(v == "yes") for v in split.labels])

    done = encode_splits(Dataset(), tokenizer, AutoConfig.from_pretrained(tiny_model), max_length=32,
                         truncation="head", head_tokens=8)
    train, test = done.splits["train"], done.splits["test"]
    assert train.ids[0].tolist() == tokenizer("good film", "great movie")["input_ids"]
    assert train.type_ids[1].tolist() == tokenizer("bad plot", "dull")["token_type_ids"]
    assert train.labels.tolist() == [1, 0] and test.type_ids is None and "validation" not in done.splits
