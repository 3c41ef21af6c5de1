"""Per-row hashes of a split's texts, so that questions about all of them (which repeat, which another split
shares, which a model has seen) are answered from 8 bytes a row, never from a set of the texts themselves.

`exact`: blake2b-64 of the text as kept (deduplication, the data report's duplicate and shared counts);
`seen`: the text's key in seen_texts.txt (`text_key`: whitespace collapsed, with a pair's second text) as a
number. A stored split (data.store) keeps both, computed as its rows were tokenized; an in-memory one computes
them when asked. Two different texts with one hash (about one chance in 10^5 among ten million rows) would count
as one in the report; deduplication compares the texts themselves before it drops a row.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import numpy as np

KINDS = ("exact", "seen")


def text_key(text: str, pair: str | None = None) -> str:
    """A text's (or a pair's) identity: 16 hex digits of its hash, whitespace collapsed so that a copy that
    differs only in spacing or line ends is the same text."""
    joined = " ".join(text.split()) + ("" if pair is None else "\x1f" + " ".join(pair.split()))
    return hashlib.blake2b(joined.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def text_hash(text: str) -> int:
    """The exact text's hash, as an unsigned 64-bit number."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def seen_key(text: str, pair: str | None = None) -> int:
    """`text_key` as a number: its 16 hex digits are this number's, so sorting either sorts both."""
    return int(text_key(text, pair), 16)


def row_hashes(texts, pairs, kind: str) -> np.ndarray:
    """The `kind` hash of each row of `texts` (and `pairs`, for `seen`), as uint64."""
    if kind == "exact":
        return np.fromiter((text_hash(t) for t in texts), dtype=np.uint64, count=len(texts))
    seconds = pairs if pairs is not None else itertools.repeat(None)
    return np.fromiter((seen_key(t, p) for t, p in zip(texts, seconds)), dtype=np.uint64, count=len(texts))


def split_hashes(split: Any, kind: str) -> np.ndarray:
    """A split's `kind` hashes: read from its store where it has one, else computed from its texts."""
    stored = getattr(split.texts, "hashes", None)
    found = stored(kind) if stored is not None else None
    return found if found is not None else row_hashes(split.texts, split.pairs, kind)
