"""Splits of a dataset: the rows, their sampling, the validation split and deduplication."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
import numpy as np
from finetune_bert.data.columns import CodedLabels, take
from finetune_bert.data.hashing import split_hashes
from finetune_bert.data.skipped import SkippedRow


@dataclass
class Split:
    """One split of labelled (or, for predict, unlabelled) texts."""

    name: str
    source: str
    texts: list[str]
    labels: list[Any] | None
    where: list[str]
    pairs: list[str] | None = None  # the second text of each row (text pairs), or None
    columns: tuple | None = None  # rows.Columns the split was read from (text, label, pair), where known

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: list[int] | np.ndarray) -> "Split":
        """The rows at `index`: lists for a split in memory, views of the same files for a stored one."""
        texts = take(self.texts, index)

        def along(values):  # a stored column that shows the texts' rows shares their index: one array, not three
            if values is None:
                return None
            if hasattr(values, "with_rows") and values.rows is getattr(self.texts, "rows", False):
                return values.with_rows(texts.rows)
            return take(values, index)
        return Split(self.name, self.source, texts, along(self.labels), along(self.where), along(self.pairs),
                     self.columns)


# ---------------------------------------------------------------- splits and labels

def seeded_sample(split: Split, n: int | None, seed: int) -> Split:
    """The first n rows after a seeded shuffle: a reproducible, unbiased sample of sorted files."""
    keep = sample_mask(len(split), n, seed)
    return split if keep is None else split.subset(np.flatnonzero(keep))


def sample_mask(size: int, n: int | None, seed: int) -> np.ndarray | None:
    """Which of `size` rows `seeded_sample` keeps (None: all); for data that is read a chunk at a time."""
    if n is None or n >= size:
        return None
    keep = np.zeros(size, dtype=bool)
    keep[np.random.default_rng(seed).permutation(size)[:n]] = True
    return keep


def stratified_split(split: Split, fraction: float, seed: int, notes: list[str],
                     strata: list[str] | None = None) -> tuple[Split, Split]:
    """Hold out `fraction` of every class (at least one example of each class that has two or more);
    `strata`: what to stratify by instead of the labels (a row's rarest label, a target's decile)."""
    rng = np.random.default_rng(seed)
    values, codes = factorized(strata if strata is not None else split.labels)
    order = np.argsort(codes, kind="stable")  # each value's rows, in file order, one stretch after another
    ends = np.cumsum(np.bincount(codes, minlength=len(values)))
    held, alone = [], []
    for code in sorted(range(len(values)), key=lambda c: str(values[c])):
        members = order[_start(ends, code):ends[code]]
        if not len(members):  # a stored column's value that none of these rows has
            continue
        if len(members) < 2:
            alone.append(str(values[code]))
            continue
        take_n = min(max(1, round(len(members) * fraction)), len(members) - 1)
        held.append(rng.permutation(members)[:take_n])
    if strata is not None:
        alone = []  # a stratum is not a class: with one row it is simply trained on, nothing to say
    if 0 < len(alone) <= 3:
        notes.extend(f"class {v!r} has 1 training example(s): none held out for validation" for v in alone)
    elif alone:  # one note, not a screen of them (a label column of label sets makes hundreds)
        named = ", ".join(repr(v) for v in alone[:5])
        notes.append(f"{len(alone)} classes have 1 training example each, so none of them is held out for validation "
                     f"(e.g. {named}, ...)")
    in_val = np.zeros(len(split), dtype=bool)
    if held:
        in_val[np.concatenate(held)] = True
    val = split.subset(np.flatnonzero(in_val))
    val.name = "validation"
    return split.subset(np.flatnonzero(~in_val)), val


def _start(ends: np.ndarray, code: int) -> int:
    return int(ends[code - 1]) if code else 0


def factorized(values) -> tuple[list, np.ndarray]:
    """(the distinct values, each row's index into them): a stored label column's own codes, else counted
    here. Values are told apart by their text, as the validation split has always grouped them."""
    if isinstance(values, CodedLabels):
        where: dict[str, int] = {}
        lookup = np.asarray([where.setdefault(str(v), len(where)) for v in values.values] or [0], dtype=np.int64)
        return list(where), lookup[values.codes]
    found: dict[str, int] = {}
    codes = np.fromiter((found.setdefault(str(v), len(found)) for v in values), dtype=np.int64, count=len(values))
    return list(found), codes


def dedupe_train(train: Split, held_out: list[Split], skipped: list[SkippedRow]) -> tuple[Split, str]:
    """--dedupe: drop train rows whose text is in a held-out split (leakage) or repeats an earlier row. Rows are
    matched by their texts' hashes (data.hashing: 8 bytes a row, not a set of the texts), and a row is dropped
    only once its text has been compared with the text it matched."""
    hashes = split_hashes(train, "exact")
    leaked_in: dict[int, list[str]] = {}
    for other in held_out:
        theirs = split_hashes(other, "exact")
        order = np.argsort(theirs, kind="stable")
        ordered = theirs[order]
        for i in np.flatnonzero(np.isin(hashes, theirs)).tolist():
            lo, hi = np.searchsorted(ordered, hashes[i], "left"), np.searchsorted(ordered, hashes[i], "right")
            text = train.texts[i]
            if any(other.texts[int(j)] == text for j in order[lo:hi]):
                leaked_in.setdefault(i, []).append(other.name)
    first = _first_rows(train, hashes, leaked_in)
    dropped = sorted([*leaked_in, *first])
    for i in dropped:
        reason = (f"text also appears in {' or '.join(leaked_in[i])}" if i in leaked_in
                  else f"duplicate of {train.where[first[i]]}")
        skipped.append(SkippedRow("train", train.source, train.where[i], "text", f"{reason} (--dedupe)",
                                  repr(train.texts[i][:200])))
    keep = np.ones(len(train), dtype=bool)
    keep[dropped] = False
    return train.subset(np.flatnonzero(keep)), (f"--dedupe removed {len(first)} duplicate rows and {len(leaked_in)} "
                                                "rows whose text is also held out from train (listed in skipped_rows.csv)")


def _first_rows(train: Split, hashes: np.ndarray, leaked: dict[int, list[str]]) -> dict[int, int]:
    """Each row (not leaked) that repeats an earlier row's text: the earliest row with that text."""
    rows = np.flatnonzero(~np.isin(np.arange(len(train)), list(leaked)))
    _, first, inverse = np.unique(hashes[rows], return_index=True, return_inverse=True)
    earliest = rows[first][inverse.reshape(-1)]
    found = {}
    for i, j in zip(rows[earliest != rows].tolist(), earliest[earliest != rows].tolist()):
        if train.texts[i] == train.texts[j]:  # not two texts with one hash
            found[i] = j
    return found
