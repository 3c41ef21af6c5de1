"""Splits of a dataset: the rows, their sampling, the validation split and deduplication."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
import numpy as np
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
        labels = None if self.labels is None else [self.labels[i] for i in index]
        pairs = None if self.pairs is None else [self.pairs[i] for i in index]
        return Split(self.name, self.source, [self.texts[i] for i in index], labels,
                     [self.where[i] for i in index], pairs, self.columns)


# ---------------------------------------------------------------- splits and labels

def seeded_sample(split: Split, n: int | None, seed: int) -> Split:
    """The first n rows after a seeded shuffle: a reproducible, unbiased sample of sorted files."""
    keep = sample_mask(len(split), n, seed)
    return split if keep is None else split.subset(np.flatnonzero(keep).tolist())


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
    labels = np.array(strata if strata is not None else [str(x) for x in split.labels])
    val_index, alone = [], []
    for value in sorted(set(labels)):
        members = np.flatnonzero(labels == value)
        if len(members) < 2:
            alone.append(str(value))
            continue
        take = min(max(1, round(len(members) * fraction)), len(members) - 1)
        val_index.extend(rng.permutation(members)[:take].tolist())
    if strata is not None:
        alone = []  # a stratum is not a class: with one row it is simply trained on, nothing to say
    if 0 < len(alone) <= 3:
        notes.extend(f"class {v!r} has 1 training example(s): none held out for validation" for v in alone)
    elif alone:  # one note, not a screen of them (a label column of label sets makes hundreds)
        named = ", ".join(repr(v) for v in alone[:5])
        notes.append(f"{len(alone)} classes have 1 training example each, so none of them is held out for validation "
                     f"(e.g. {named}, ...)")
    val_set = set(val_index)
    train_index = [i for i in range(len(split)) if i not in val_set]
    val = split.subset(sorted(val_index))
    val.name = "validation"
    return split.subset(train_index), val


def dedupe_train(train: Split, held_out: list[Split], skipped: list[SkippedRow]) -> tuple[Split, str]:
    """--dedupe: drop train rows whose text is in a held-out split (leakage) or repeats an earlier row."""
    elsewhere = set().union(*(set(s.texts) for s in held_out))
    first: dict[str, int] = {}
    keep, leaked, repeated = [], 0, 0
    for i, text in enumerate(train.texts):
        if text in elsewhere:
            leaked += 1
            reason = "text also appears in " + " or ".join(s.name for s in held_out if text in s.texts) + " (--dedupe)"
        elif text in first:
            repeated += 1
            reason = f"duplicate of {train.where[first[text]]} (--dedupe)"
        else:
            first[text] = i
            keep.append(i)
            continue
        skipped.append(SkippedRow("train", train.source, train.where[i], "text", reason, repr(text[:200])))
    return train.subset(keep), (f"--dedupe removed {repeated} duplicate rows and {leaked} rows whose text is "
                                "also held out from train (listed in skipped_rows.csv)")
