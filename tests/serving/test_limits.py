"""The per-request token budget, counted a piece of text at a time before a request is tokenized whole."""

from __future__ import annotations

import pytest

from finetune_bert.serving import limits
from finetune_bert.serving.requests import Refused


@pytest.fixture(scope="module")
def classifier(trained):
    from finetune_bert import load

    return load(trained.output, device="cpu")


def _tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def test_pieces_cut_at_spaces_so_their_tokens_add_up_to_the_texts(classifier, monkeypatch):
    monkeypatch.setattr(limits, "PIECE_CHARS", 50)
    text = "the movie was good and the plot superb, " * 40 + "x" * 120 + " a wonderful ending"
    pieces = list(limits._pieces(text))
    assert "".join(pieces) == text and len(pieces) > 10
    assert sum(_tokens(classifier.tokenizer, p) for p in pieces) == _tokens(classifier.tokenizer, text)


def test_the_count_stops_as_soon_as_the_budget_is_passed(classifier, monkeypatch):
    seen = []
    tokenizer = classifier.tokenizer

    def counting(piece, **kwargs):
        seen.append(len(piece))
        return tokenizer(piece, **kwargs)

    monkeypatch.setattr(classifier, "tokenizer", counting)
    with pytest.raises(Refused) as refused:
        limits.refuse_over_budget(classifier, ["good film " * 1_000_000], budget=10_000)
    assert refused.value.status == 413 and "--max-request-tokens" in refused.value.message
    assert sum(seen) < 100_000  # of 10 MB: it stopped after the budget's worth of text
    seen.clear()
    limits.refuse_over_budget(classifier, ["good film"] * 10, budget=10_000)
    assert seen == []  # 100 bytes cannot hold 10,000 tokens: nothing to count
