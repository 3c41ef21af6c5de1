"""The training data of a run: train, validation and test read, checked and labelled."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from finetune_bert.errors import UserError
from finetune_bert.tasks import CLASSIFICATION, MULTI_LABEL, REGRESSION
from finetune_bert.data.labels import case_variants, label_mapping
from finetune_bert.data.readers import Records
from finetune_bert.data.skipped import SkippedRow
from finetune_bert.data.sources import read_source
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
        return np.asarray([to_id[x] for x in split.labels], dtype=np.int64)


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
