"""The training data of a run: train, validation and test read, checked and labelled."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from finetune_bert.errors import UserError
from finetune_bert.tasks import CLASSIFICATION, MULTI_LABEL, REGRESSION
from finetune_bert.data.kinds import label_sets_hint, multi_label_mapping, strata, target_scale, unknown_in_sets
from finetune_bert.data.labels import LabelSpec, case_variants, label_mapping
from finetune_bert.data.readers import Records
from finetune_bert.data.skipped import SkippedRow
from finetune_bert.data.sources import read_source
from finetune_bert.data.stored import stored_train
from finetune_bert.data.rows import report_bad_rows, to_split
from finetune_bert.data.splits import Split, dedupe_train, seeded_sample, stratified_split


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
    task: str = CLASSIFICATION
    target_scale: tuple[float, float] = (0.0, 1.0)  # regression: train's (mean, std); the model learns z-scores

    @property
    def label_to_id(self) -> dict[Any, int]:
        return {raw: i for i, raw in enumerate(self.raw_labels)}

    @property
    def integer_targets(self) -> bool:
        """Regression: every training target is a whole number (star ratings): 'within one' then means something."""
        if self.task != REGRESSION:
            return False
        values = np.asarray(self.train.labels, dtype=np.float64)
        return bool(np.all(values == np.round(values)))

    def encode_labels(self, split: Split) -> np.ndarray:
        """A split's labels as the loss takes them: class ids (n,), multi-hot rows (n, labels) in float32, or
        regression targets standardised with train's mean and deviation (n,) in float32."""
        if self.task == MULTI_LABEL:
            to_id, out = self.label_to_id, np.zeros((len(split), len(self.raw_labels)), dtype=np.float32)
            for row, names in enumerate(split.labels):
                out[row, [to_id[x] for x in names]] = 1.0
            return out
        if self.task == REGRESSION:
            mean, std = self.target_scale
            return ((np.asarray(split.labels, dtype=np.float64) - mean) / std).astype(np.float32)
        to_id = self.label_to_id
        codes = getattr(split.labels, "codes", None)
        if codes is not None:  # a stored column (data.columns.CodedLabels): its distinct values, then a lookup
            lookup = np.asarray([to_id.get(v, -1) for v in split.labels.values] or [0], dtype=np.int64)
            return lookup[codes]
        return np.asarray([to_id[x] for x in split.labels], dtype=np.int64)


def _unknown_labels(split: Split, known: set, on_bad_rows: str, skipped: list[SkippedRow], task: str) -> Split:
    """Rows whose label train never had: the model cannot predict them, so they cannot be scored."""
    if task == REGRESSION:
        return split
    if task == MULTI_LABEL:
        bad = unknown_in_sets(split, known)
        why = [f"label {next(x for x in split.labels[i] if x not in known)!r} does not occur in the training data"
               for i in bad]
    else:
        bad = [i for i, x in enumerate(split.labels) if x not in known]
        why = [f"label {split.labels[i]!r} does not occur in the training data" for i in bad]
    if not bad:
        return split
    column = split.columns.label if split.columns else "label"
    rows = [SkippedRow(split.name, split.source, split.where[i], column, reason, repr(split.labels[i]))
            for i, reason in zip(bad, why)]
    report_bad_rows(rows, on_bad_rows, skipped)
    bad_set = set(bad)
    return split.subset([i for i in range(len(split)) if i not in bad_set])


def _read_splits(cfg, skipped: list[SkippedRow], notes: list[str]) -> tuple[Split, Split | None, Split | None, Any, Any]:
    """Train, validation and test as given (validation and test None where there are none), what else the
    training source brought, and the hub's label names."""
    spec = LabelSpec(cfg.task, cfg.label_separator)

    def split_from(records: Records, name: str) -> Split:
        notes.extend(n for n in records.notes if n not in notes)  # how it was read: into the data report
        return to_split(records, name, cfg.text_column, cfg.label_column, cfg.clean, True, skipped=skipped,
                        on_bad_rows=cfg.on_bad_rows, pair_column=cfg.text_pair_column, pairs=True, spec=spec)

    stored = stored_train(cfg)  # a file, read a chunk at a time into the token cache (or read from it)
    if stored is not None:
        train_records, brought, hub_names = None, {}, None
        skipped.extend(stored.skipped)
        notes.extend(n for n in stored.notes if n not in notes)
        train = stored.split
    else:
        train_records, brought, hub_names = read_source(cfg.data, "train")
        train = split_from(train_records, "train")
    train = seeded_sample(train, cfg.max_train_samples, cfg.seed)
    if cfg.task == CLASSIFICATION and (hint := label_sets_hint(train, cfg.label_separator, train.columns.label)):
        raise UserError(hint)
    val = None
    if cfg.val_data:
        val = split_from(read_source(cfg.val_data, "validation")[0], "validation")
    elif "validation" in brought:
        val = split_from(brought["validation"], "validation")
    test = None
    if cfg.test_data:
        test = split_from(read_source(cfg.test_data, "test")[0], "test")
    elif "test" in brought and brought["test"] is not train_records:
        test = split_from(brought["test"], "test")
        notes.append(f"test split taken from {cfg.data}")
    if test is not None:
        test = seeded_sample(test, cfg.max_test_samples, cfg.seed)
    elif cfg.max_test_samples is not None:
        notes.append("--max-test-samples has no effect: there is no test data")
    _same_columns(train, [s for s in (val, test) if s is not None])
    return train, val, test, brought, hub_names


def _same_columns(train: Split, others: list[Split]) -> None:
    """Pairs in train and single texts elsewhere (or the reverse) would be scored on texts read another way."""
    for other in others:
        if (train.pairs is None) != (other.pairs is None):
            has, lacks = (train, other) if train.pairs is not None else (other, train)
            raise UserError(f"{lacks.source}: has no second text column, but {has.source} is read as text pairs "
                            f"({has.columns.text!r} and {has.columns.pair!r}); give both the same columns")


def _mapping(cfg, train: Split, hub_names) -> tuple[list[Any], list[str]]:
    """The label values in id order and their names, per kind (regression: the target column's name)."""
    if cfg.task == MULTI_LABEL:
        return multi_label_mapping(train, cfg.label_names)
    if cfg.task == REGRESSION:
        return [], [str(train.columns.label if train.columns else "value")]
    return label_mapping(train.labels, cfg.label_names, hub_names, train.source)


def load_dataset(cfg) -> Dataset:
    """Train, validation and test splits with a deterministic label mapping, from a DataConfig."""
    skipped: list[SkippedRow] = []
    notes: list[str] = []
    train, val, test, brought, _hub = _read_splits(cfg, skipped, notes)
    if cfg.task != REGRESSION:
        case_variants([s for s in (train, val, test) if s is not None], cfg.fold_labels, notes)
    if cfg.dedupe:
        train, note = dedupe_train(train, [s for s in (val, test) if s is not None], skipped)
        notes.append(note)
    raw, names = _mapping(cfg, train, _hub)
    train_all = train
    if val is None:
        strata_of = None if cfg.task == CLASSIFICATION else strata(train, cfg.task)
        train, val = stratified_split(train, cfg.val_fraction, cfg.seed, notes, strata_of)
        notes.append(f"validation: {len(val)} rows held out of train (stratified, seed {cfg.seed})")
    known = set(raw)
    val = _unknown_labels(val, known, cfg.on_bad_rows, skipped, cfg.task)
    if test is not None:
        test = _unknown_labels(test, known, cfg.on_bad_rows, skipped, cfg.task)
    if len(val) == 0:
        raise UserError(f"{val.source}: no validation rows left to score" if cfg.val_data or "validation" in brought
                        else f"{train.source}: too few rows to hold out a validation set; pass --val-data")
    if test is not None and len(test) == 0:  # every test row skipped: scoring nothing is not a result
        raise UserError(f"{test.source}: no test rows left to score; every row was skipped (see skipped_rows.csv "
                        "reasons with --on-bad-rows skip), or drop --test-data")
    scale = target_scale(train) if cfg.task == REGRESSION else (0.0, 1.0)
    return Dataset(train, val, test, names, raw, skipped, notes, train_all, cfg.task, scale)
