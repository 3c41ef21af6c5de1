"""Which texts a model has seen: a short hash of every text it trained or was selected on, kept beside the
weights (seen_texts.txt), so that scoring data the model learned from can be noticed (`audit` refuses it:
probabilities of a text the model trained on say nothing about its label)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from finetune_bert.data.hashing import row_hashes, split_hashes, text_key

__all__ = ["SEEN_FILE", "SeenLines", "text_key", "seen_text", "seen_splits", "read_seen"]

SEEN_FILE = "seen_texts.txt"
_HEADER = "# finetune-bert: blake2b-64 of each training and validation text (whitespace collapsed), one a line\n"


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


class SeenLines:
    """The file's contents for these keys (sorted and unique: their order says nothing), made a block of keys at
    a time as they are written: until then a million rows are 8 MB of keys, never a string of 17 MB and its
    copies (the peak memory of a run on a large file would grow with its rows)."""

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = np.unique(keys)

    def __iter__(self) -> Iterator[bytes]:
        yield _HEADER.encode("ascii")
        for start in range(0, len(self.keys), 1 << 16):
            raw = self.keys[start:start + (1 << 16)].astype(">u8").view(np.uint8).reshape(-1, 8)
            lines = np.empty((len(raw), 17), dtype=np.uint8)
            lines[:, 0:16:2], lines[:, 1:16:2], lines[:, 16] = _HEX[raw >> 4], _HEX[raw & 15], ord("\n")
            yield lines.tobytes()

    def text(self) -> str:
        return b"".join(self).decode("ascii")


def seen_text(texts: Iterable[str], pairs: Iterable[str] | None = None) -> str:
    """The file's contents for these texts (and their pairs' second texts)."""
    texts = list(texts)
    return SeenLines(row_hashes(texts, None if pairs is None else list(pairs), "seen")).text()


def seen_splits(splits: list[Any]) -> SeenLines:
    """The file's contents for every row of these splits (data.splits.Split), stored or in memory: a stored
    split's keys are read from its store, never its texts."""
    keys = [split_hashes(s, "seen") for s in splits]
    return SeenLines(np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64))


def read_seen(folder: Path | None) -> set[str] | None:
    """The keys a model folder records, or None where it records none (trained elsewhere, or before this file
    was written): then nothing can be said about overlap."""
    path = folder / SEEN_FILE if folder is not None else None
    if path is None or not path.is_file():
        return None
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")}
