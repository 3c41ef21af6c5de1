"""The per-request token budget (--max-request-tokens), counted before a request is tokenized whole.

A text within the payload limit can still be hours of work: 2 MB of text is about half a million tokens,
read whole as windows. The budget counts the tokens the model would read for a request: each text as cut
(--long-texts truncate), or every window of it, overlaps included (chunks). The batcher checks that count
exactly once a request is tokenized (batcher.TooLarge). Tokenizing 2 MB takes seconds by itself, so a
request that could be over the budget is counted here first, a piece of text at a time, and refused as soon
as its texts alone pass the budget (their windows hold at least as many tokens): at once, whatever its size.
"""

from __future__ import annotations

import re

from finetune_bert.data.rows import clean_text
from finetune_bert.serving.requests import Refused

# Characters tokenized per call while counting (pieces end at a space, so their counts add up to the text's).
PIECE_CHARS = 16384
_SPACE = re.compile(r"\s")


def refuse_over_budget(classifier, texts: list[str], budget: int) -> None:
    """Refused (413) as soon as the texts' own tokens pass `budget`; nothing when they cannot (cut texts, whose
    tokens the batcher counts, or texts too short to hold that many tokens)."""
    if classifier.reading.mode != "chunks" or classifier.pairs:
        return  # each text (and every pair) is cut to the model's length: tokenizing is bounded by the payload, the work by the cut
    # A text holds fewer tokens than UTF-8 bytes (each token is at least one byte of it): nothing to count below
    # that; the rare normalizer that expands characters is still caught by the batcher's exact count
    if sum(len(t.encode("utf-8")) + 2 for t in texts) <= budget:
        return
    counted = 0
    for text in texts:
        for piece in _pieces(clean_text(text) if classifier.clean else text):
            counted += len(classifier.tokenizer(piece, add_special_tokens=False, return_attention_mask=False,
                                                return_token_type_ids=False, verbose=False)["input_ids"])
            if counted > budget:
                raise Refused(413, f"the request's texts hold over {budget} tokens, more than the limit of {budget} "
                                   "(--max-request-tokens); send shorter texts, or fewer")


def _pieces(text: str):
    """The text in pieces of about PIECE_CHARS, each ending before a space so that no word is cut in two (a
    word cut would count as two); only a "word" of over 4 pieces' length is cut where it stands."""
    start = 0
    while start < len(text):
        end = start + PIECE_CHARS
        if end < len(text):
            space = _SPACE.search(text, end, end + 4 * PIECE_CHARS)
            end = space.start() if space else end
        yield text[start:end]
        start = end


def refuse_explain_over_budget(classifier, texts: list, budget: int, steps: int) -> None:
    """Refused (413) when explaining the texts is more work than `budget` tokens: each step of Integrated Gradients
    is a forward and a backward pass of what the model reads of them (cut, or every window), so their tokens count
    `steps` times. Called once refuse_over_budget has passed them: they are tokenized as the batcher does."""
    tokens = classifier.prepare_items(texts)[1]
    if tokens * steps > budget:
        raise Refused(413, f"explaining these texts is {tokens} tokens x {steps} steps = {tokens * steps} tokens of "
                           f"work, over the limit of {budget} (--max-request-tokens); explain fewer or shorter "
                           "texts, or ask for no explanation")
