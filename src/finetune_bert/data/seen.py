"""Which texts a model has seen: a short hash of every text it trained or was selected on, kept beside the
weights (seen_texts.txt), so that scoring data the model learned from can be noticed (`audit` refuses it:
probabilities of a text the model trained on say nothing about its label)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

SEEN_FILE = "seen_texts.txt"
_HEADER = "# finetune-bert: blake2b-64 of each training and validation text (whitespace collapsed), one a line\n"


def text_key(text: str, pair: str | None = None) -> str:
    """A text's (or a pair's) identity: 16 hex digits of its hash, whitespace collapsed so that a copy that
    differs only in spacing or line ends is the same text."""
    joined = " ".join(text.split()) + ("" if pair is None else "\x1f" + " ".join(pair.split()))
    return hashlib.blake2b(joined.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def seen_text(texts: Iterable[str], pairs: Iterable[str] | None = None) -> str:
    """The file's contents for these texts (sorted and unique: their order says nothing)."""
    keys = (text_key(t) for t in texts) if pairs is None else (text_key(t, p) for t, p in zip(texts, pairs))
    return _HEADER + "".join(k + "\n" for k in sorted(set(keys)))


def read_seen(folder: Path | None) -> set[str] | None:
    """The keys a model folder records, or None where it records none (trained elsewhere, or before this file
    was written): then nothing can be said about overlap."""
    path = folder / SEEN_FILE if folder is not None else None
    if path is None or not path.is_file():
        return None
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")}
