"""From a user's data source to clean, validated, labelled splits.

Sources: files (see readers.py), aclImdb-style folders, Hugging Face hub dataset names. Rows keep their
location so that a bad one can be reported where the user sees it, or skipped with a written record.
"""

from __future__ import annotations

import difflib
import html
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from finetune_bert.errors import UserError
from finetune_bert.labels import as_label, case_variants, label_mapping
from finetune_bert.readers import Records
from finetune_bert.skipped import SkippedRow
from finetune_bert.sources import read_source

TEXT_COLUMNS = ("text", "review", "sentence", "content")
LABEL_COLUMNS = ("label", "labels", "sentiment", "target", "class")


@dataclass
class Split:
    """One split of labelled (or, for predict, unlabelled) texts."""

    name: str
    source: str
    texts: list[str]
    labels: list[Any] | None
    where: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: list[int] | np.ndarray) -> "Split":
        labels = None if self.labels is None else [self.labels[i] for i in index]
        return Split(self.name, self.source, [self.texts[i] for i in index], labels,
                     [self.where[i] for i in index])


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split | None
    label_names: list[str]          # id -> name
    raw_labels: list[Any]           # id -> label value as it appeared in the data
    skipped: list[SkippedRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    train_all: Split | None = None  # train as given, before the validation split

    @property
    def label_to_id(self) -> dict[Any, int]:
        return {raw: i for i, raw in enumerate(self.raw_labels)}


# ---------------------------------------------------------------- cleaning

_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def clean_text(text: str) -> str:
    """'<br />' becomes a newline and HTML entities their characters; nothing else changes."""
    return html.unescape(_BR.sub("\n", text))


# ---------------------------------------------------------------- columns

def pick_column(records: Records, wanted: str | None, candidates: tuple[str, ...], kind: str,
                option: str, besides: str | None = None) -> str:
    """The named column, or the one column whose name is a candidate (any case); `besides` is already taken.
    Two candidates ('text' and 'review', or 'text' and 'Text') are refused: either could be meant."""
    if wanted:
        if wanted in records.columns:
            return wanted
        raise UserError(_missing_column(records, wanted, kind, option))
    found = [c for c in records.columns if c.strip().lower() in candidates and c != besides]
    if len(found) > 1:
        raise UserError(f"{records.source}: {len(found)} columns could be the {kind} column "
                        f"({', '.join(map(repr, found))}); name one with {option}")
    if found:
        return found[0]
    raise UserError(_missing_column(records, None, kind, option, candidates))


def _missing_column(records: Records, wanted: str | None, kind: str, option: str,
                    candidates: tuple[str, ...] = ()) -> str:
    found = ", ".join(repr(c) for c in records.columns) or "none"
    close = difflib.get_close_matches(wanted or candidates[0], records.columns, n=1, cutoff=0.4)
    hint = f"; did you mean {option} {close[0]!r}?" if close else f"; name it with {option}"
    what = f"{kind} column {wanted!r} not found" if wanted else \
        f"no {kind} column found (looked for {', '.join(candidates)})"
    return f"{records.source}: {what}; columns are {found}{hint}"


# ---------------------------------------------------------------- rows

def _is_missing(value: Any) -> bool:
    """Only a truly empty cell is missing: 'none', 'NA', 'null' and 'nan' can be real class names."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        (isinstance(value, str) and not value.strip())


def _kind(value: Any) -> str:
    name = type(value).__name__
    return {list: "a list", tuple: "a list", dict: "an object"}.get(type(value), f"{'an' if name[0] in 'aeiou' else 'a'} {name}")


def to_split(records: Records, name: str, text_column: str | None, label_column: str | None,
             clean: bool, need_labels: bool | None, *, skipped: list[SkippedRow], on_bad_rows: str) -> Split:
    """Validate every row; bad ones either stop the run (all counted) or are skipped and recorded."""
    tcol, lcol = split_columns(records, text_column, label_column, need_labels)
    split, bad = check_rows(records, name, tcol, lcol, clean, optional_labels=not need_labels)
    kinds = first_label_kinds(split, {})
    if len(kinds) > 1 and need_labels:
        raise mixed_labels_error(records.source, lcol, kinds)
    report_bad_rows(bad, on_bad_rows, skipped)
    if not split.texts:
        raise UserError(f"{records.source}: no usable rows" + all_skipped(bad[0] if bad else None, len(bad)))
    return split


def split_columns(records: Records, text_column: str | None, label_column: str | None,
                  need_labels: bool | None) -> tuple[str, str | None]:
    """The text column and the label column: required (need_labels True), used if there is one (False:
    predict copies it to its output), or never looked for (None: predict --ignore-labels)."""
    tcol = pick_column(records, text_column, TEXT_COLUMNS, "text", "--text-column")
    lcol = None
    if need_labels is None:
        return tcol, None
    if need_labels or label_column:
        lcol = pick_column(records, label_column, LABEL_COLUMNS, "label", "--label-column")
    elif any(c.strip().lower() in LABEL_COLUMNS and c != tcol for c in records.columns):
        lcol = pick_column(records, None, LABEL_COLUMNS, "label", "--label-column", tcol)
    if lcol == tcol:  # the labels would be trained on as the texts, or the texts taken as classes
        raise UserError(f"{records.source}: column {tcol!r} is both the text column and the label column; "
                        "name the other one with " + ("--label-column" if text_column else "--text-column"))
    return tcol, lcol


def check_rows(records: Records, name: str, tcol: str, lcol: str | None, clean: bool,
               optional_labels: bool = False, *, judge_cleaned: bool | None = None) -> tuple[Split, list[SkippedRow]]:
    """The usable rows as a split, and the bad ones (text missing, not a string, or with nothing visible, as
    cleaned if `judge_cleaned` (default: `clean`); label missing unless `optional_labels`, or not a single
    value). Texts are kept cleaned if `clean`: predict keeps the text as given and lets the model clean it."""
    judged = clean if judge_cleaned is None else judge_cleaned
    texts, labels, where, bad = [], [] if lcol else None, [], []
    for row, loc in zip(records.rows, records.where):
        text, label = row.get(tcol), None
        column, problem = tcol, _text_problem(text)
        cleaned = clean_text(text) if problem is None and (clean or judged) else text
        if problem is None:
            problem = _nothing_visible(cleaned if judged else text, judged and cleaned != text)
        if problem is None and lcol is not None:
            column, raw = lcol, row.get(lcol)
            if _is_missing(raw):
                problem = None if optional_labels else "label is missing"
            elif isinstance(raw, (list, tuple, dict)):
                problem = f"label is {_kind(raw)}, not a single class"
            else:
                label = as_label(raw)
        if problem:
            bad.append(SkippedRow(name, records.source, loc, column, problem, repr(row.get(column))[:200]))
            continue
        texts.append(cleaned if clean else text)
        if labels is not None:
            labels.append(label)
        where.append(loc)
    return Split(name, records.source, texts, labels, where), bad


def _text_problem(text: Any) -> str | None:
    """Why a text cell is unusable: a number or a list (a Parquet list column) is never trained on as its
    Python repr."""
    if _is_missing(text):
        return "text is missing" if not isinstance(text, str) else "text is empty"
    if not isinstance(text, str):
        return f"text is {_kind(text)}, not a string"
    return None


def visible(text: str) -> bool:
    """Whether `text` has a character that shows: one of only spaces or zero-width characters gives the model
    nothing but [CLS] [SEP]."""
    return any(ch.isprintable() and not ch.isspace() for ch in text)


def _nothing_visible(text: str, by_cleaning: bool) -> str | None:
    """A text with nothing visible (also once '<br />' tags are cleaned away) is a bad row, as an empty one is."""
    if visible(text):
        return None
    if by_cleaning:
        return "text is empty once cleaned ('<br />' tags and HTML entities removed)"
    return "text has no visible characters (only spaces or invisible ones)"


def first_label_kinds(split: Split, kinds: dict[type, tuple[str, Any]]) -> dict[type, tuple[str, Any]]:
    """Add to `kinds` the (location, label) of the split's first text and first integer label, if new."""
    for kind in (str, int):
        if kind not in kinds and split.labels:
            found = next(((loc, x) for x, loc in zip(split.labels, split.where) if isinstance(x, kind)), None)
            if found:
                kinds[kind] = found
    return kinds


def mixed_labels_error(source: str, lcol: str | None, kinds: dict[type, tuple[str, Any]]) -> UserError:
    (str_at, str_label), (int_at, int_label) = kinds[str], kinds[int]
    return UserError(f"{source}: {str_at}, column '{lcol}': label {str_label!r} is text but {int_at} has the "
                     f"integer label {int_label!r}; use one kind of label throughout")


def report_bad_rows(bad: list[SkippedRow], on_bad_rows: str, skipped: list[SkippedRow]) -> None:
    if not bad:
        return
    if on_bad_rows == "skip":
        skipped.extend(bad)
        return
    raise bad_rows_error(bad[0], len(bad))


def all_skipped(first: SkippedRow | None, count: int, doing: str = "use") -> str:
    """The end of a "no usable rows" message when every row was bad and skipped; `doing` is what the
    command would have done with them (use, score, predict)."""
    if first is None:
        return ""
    return (f": all {count} rows are bad (the first: {first.where}, column '{first.column}': {first.reason}); "
            f"nothing is left to {doing}")


def bad_rows_error(first: SkippedRow, count: int) -> UserError:
    others = f" ({count - 1} more bad rows)" if count > 1 else ""
    return UserError(f"{first.source}: {first.where}, column '{first.column}': {first.reason}{others}; "
                     "fix the data or pass --on-bad-rows skip")


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


def stratified_split(split: Split, fraction: float, seed: int, notes: list[str]) -> tuple[Split, Split]:
    """Hold out `fraction` of every class (at least one example of each class that has two or more)."""
    rng = np.random.default_rng(seed)
    labels = np.array([str(x) for x in split.labels])
    val_index = []
    for value in sorted(set(labels)):
        members = np.flatnonzero(labels == value)
        if len(members) < 2:
            notes.append(f"class {str(value)!r} has {len(members)} training example(s): none held out for validation")
            continue
        take = min(max(1, round(len(members) * fraction)), len(members) - 1)
        val_index.extend(rng.permutation(members)[:take].tolist())
    val_set = set(val_index)
    train_index = [i for i in range(len(split)) if i not in val_set]
    val = split.subset(sorted(val_index))
    val.name = "validation"
    return split.subset(train_index), val


def _unknown_labels(split: Split, known: set, on_bad_rows: str, skipped: list[SkippedRow]) -> Split:
    """Rows whose label train never had: the model cannot predict them, so they cannot be scored."""
    bad = [i for i, x in enumerate(split.labels) if x not in known]
    if not bad:
        return split
    rows = [SkippedRow(split.name, split.source, split.where[i], "label",
                       f"label {split.labels[i]!r} does not occur in the training data", repr(split.labels[i]))
            for i in bad]
    report_bad_rows(rows, on_bad_rows, skipped)
    bad_set = set(bad)
    return split.subset([i for i in range(len(split)) if i not in bad_set])


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


def load_dataset(cfg) -> Dataset:
    """Train, validation and test splits with a deterministic label mapping, from a DataConfig."""
    skipped: list[SkippedRow] = []
    notes: list[str] = []

    def split_from(records: Records, name: str) -> Split:
        notes.extend(n for n in records.notes if n not in notes)  # how it was read: into the data report
        return to_split(records, name, cfg.text_column, cfg.label_column, cfg.clean, True, skipped=skipped,
                        on_bad_rows=cfg.on_bad_rows)

    train_records, brought, hub_names = read_source(cfg.data, "train")
    train = seeded_sample(split_from(train_records, "train"), cfg.max_train_samples, cfg.seed)

    val = None
    if cfg.val_data:
        val_records, _, _ = read_source(cfg.val_data, "validation")
        val = split_from(val_records, "validation")
    elif "validation" in brought:
        val = split_from(brought["validation"], "validation")
    test = None
    if cfg.test_data:
        test_records, _, _ = read_source(cfg.test_data, "test")
        test = split_from(test_records, "test")
    elif "test" in brought and brought["test"] is not train_records:
        test = split_from(brought["test"], "test")
        notes.append(f"test split taken from {cfg.data}")
    if test is not None:
        test = seeded_sample(test, cfg.max_test_samples, cfg.seed)
    elif cfg.max_test_samples is not None:
        notes.append("--max-test-samples has no effect: there is no test data")

    case_variants([s for s in (train, val, test) if s is not None], cfg.fold_labels, notes)
    if cfg.dedupe:
        train, note = dedupe_train(train, [s for s in (val, test) if s is not None], skipped)
        notes.append(note)
    raw, names = label_mapping(train.labels, cfg.label_names, hub_names, train.source)
    train_all = train
    if val is None:
        train, val = stratified_split(train, cfg.val_fraction, cfg.seed, notes)
        notes.append(f"validation: {len(val)} rows held out of train (stratified, seed {cfg.seed})")
    known = set(raw)
    val = _unknown_labels(val, known, cfg.on_bad_rows, skipped)
    if test is not None:
        test = _unknown_labels(test, known, cfg.on_bad_rows, skipped)
    if len(val) == 0:
        raise UserError(f"{val.source}: no validation rows left to score" if cfg.val_data or "validation" in brought
                        else f"{train.source}: too few rows to hold out a validation set; pass --val-data")
    if test is not None and len(test) == 0:  # every test row skipped: scoring nothing is not a result
        raise UserError(f"{test.source}: no test rows left to score; every row was skipped (see skipped_rows.csv "
                        "reasons with --on-bad-rows skip), or drop --test-data")
    return Dataset(train, val, test, names, raw, skipped, notes, train_all)


