"""The tokens stage: texts to token ids, truncated the way the model was trained, for every split.

Texts are tokenized once, without special tokens and without truncation, so that the data report knows
every text's true length; truncation then keeps the head, the tail, or both, and the model's own special
tokens ([CLS] ... [SEP] for BERT) are added around what is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

TOKENIZE_CHUNK = 2048


@dataclass
class Encoded:
    ids: list[np.ndarray]       # one int32 array per text, special tokens included, truncated
    full_lengths: np.ndarray    # tokens each text would need, special tokens included, before truncation
    labels: np.ndarray | None   # class ids (n,), multi-hot rows (n, labels) or standardised targets (n,)
    type_ids: list[np.ndarray] | None = None  # text pairs: each row's token type ids (0: first text, 1: second)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a single text ([CLS] / [SEP] for BERT, <s> / </s> ...)."""
    inner = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(inner) + 1):
        if full[start:start + len(inner)] == inner:
            return full[:start], full[start + len(inner):]
    raise ValueError("cannot locate the special tokens of this tokenizer")


def truncate(ids: list[int], budget: int, strategy: str, head_tokens: int = 128) -> list[int]:
    """Keep `budget` tokens: the first ones (head), the last ones (tail), or the first `head_tokens`
    (at most half the budget) plus the last ones (head+tail, Sun et al. 2019)."""
    if len(ids) <= budget:
        return ids
    if strategy == "head":
        return ids[:budget]
    if strategy == "tail":
        return ids[len(ids) - budget:]
    head = min(head_tokens, budget // 2)
    return ids[:head] + ids[len(ids) - (budget - head):]


def max_length_for(tokenizer, model_config, requested: int) -> tuple[int, str | None]:
    """Clamp to what the model's position embeddings allow; say so when clamped."""
    limits = [getattr(model_config, "max_position_embeddings", None)]
    # RoBERTa-style models offset positions by the padding index.
    if limits[0] and getattr(model_config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limits[0] -= 2
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if tok_limit and tok_limit < 1_000_000:
        limits.append(tok_limit)
    limit = min(x for x in limits if x) if any(limits) else requested
    if requested > limit:
        return limit, f"--max-length {requested} is more than this model supports; using {limit}"
    return requested, None


def _token_lists(tokenizer, texts: list[str]):
    """Each text's token ids, no special tokens, no truncation; tokenized a chunk of texts at a time."""
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        yield from tokenizer(texts[start:start + TOKENIZE_CHUNK], add_special_tokens=False,
                             return_attention_mask=False, return_token_type_ids=False, verbose=False)["input_ids"]


def encode(tokenizer, texts: list[str], labels: list[int] | None, max_length: int, strategy: str,
           head_tokens: int = 128) -> Encoded:
    prefix, suffix = special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    ids, full = [], np.empty(len(texts), dtype=np.int64)
    for i, tokens in enumerate(_token_lists(tokenizer, texts)):
        full[i] = len(tokens) + len(prefix) + len(suffix)
        ids.append(np.asarray(prefix + truncate(tokens, budget, strategy, head_tokens) + suffix, dtype=np.int32))
    label_array = None if labels is None else np.asarray(labels, dtype=np.int64)
    return Encoded(ids, full, label_array)


def window_size(tokenizer, max_length: int) -> int:
    """How many of a text's own tokens fit in one window: the max length less the special tokens."""
    prefix, suffix = special_tokens(tokenizer)
    return max_length - len(prefix) - len(suffix)


def window_starts(n: int, size: int, stride: int) -> list[int]:
    """Where the windows over `n` tokens start: every `size - stride` tokens, the last one ending on the
    last token (so it overlaps its neighbour by at least `stride`); one window when the text fits."""
    if n <= size:
        return [0]
    return [*range(0, n - size, size - stride), n - size]


@dataclass
class Windows:
    """Texts read whole: `encoded` holds one row per window (special tokens around each), `owner` the text
    each window belongs to, `full_lengths` each text's length in tokens (special tokens included)."""

    encoded: Encoded
    owner: np.ndarray
    full_lengths: np.ndarray


def encode_windows(tokenizer, texts: list[str], max_length: int, stride: int) -> Windows:
    """Every text as overlapping windows of `max_length` tokens (special tokens included), `stride` tokens of
    overlap; a text that fits is one window, the same ids truncation would give it."""
    prefix, suffix = special_tokens(tokenizer)
    size = max_length - len(prefix) - len(suffix)
    ids, owner, full = [], [], np.empty(len(texts), dtype=np.int64)
    for i, tokens in enumerate(_token_lists(tokenizer, texts)):
        full[i] = len(tokens) + len(prefix) + len(suffix)
        for start in window_starts(len(tokens), size, stride):
            ids.append(np.asarray(prefix + tokens[start:start + size] + suffix, dtype=np.int32))
            owner.append(i)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    return Windows(Encoded(ids, lengths, None), np.asarray(owner, dtype=np.int64), full)


@dataclass
class TokenizedSplits:
    """Every split of a dataset as token ids, and the max length they were cut to (the requested one, clamped
    to what the model supports: `warning` says so when it was)."""

    splits: dict[str, Encoded]
    max_length: int
    warning: str | None = None


def encode_splits(ds: Any, tokenizer, model_config, *, max_length: int, truncation: str,
                  head_tokens: int) -> TokenizedSplits:
    """Tokenize train, validation and test (those present) of a data.Dataset, labels as class ids."""
    length, warning = max_length_for(tokenizer, model_config, max_length)
    splits = {}
    for name, split in (("train", ds.train), ("validation", ds.val), ("test", ds.test)):
        if split:
            splits[name] = encode(tokenizer, split.texts, None, length, truncation, head_tokens)
            splits[name].labels = ds.encode_labels(split)
    return TokenizedSplits(splits, length, warning)


def pad_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's own, or 0 for a tokenizer without one."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
