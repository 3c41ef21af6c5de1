"""Rows and their out-of-sample outputs, the audit's middle: from cross-validation (audit.folds) or from a
fine-tuned model scoring data it did not train on. That model's folder records the texts it trained and was
selected on (data.seen); a row among them is a bad row, refused (or skipped with --on-bad-rows skip), since a
model's probability for a text it learned says nothing about that text's label."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from finetune_bert.auditing.files import Shown
from finetune_bert.console import console
from finetune_bert.data.seen import read_seen, text_key
from finetune_bert.data.skipped import SkippedRow
from finetune_bert.data.splits import Split, seeded_sample
from finetune_bert.errors import UserError
from finetune_bert.inference.reading import Reading


@dataclass
class Scored:
    rows: Split                     # every audited row, where it stood, its text
    labels: list[Any]               # class ids, tuples of label ids, or targets
    outputs: np.ndarray             # (n, k) probabilities, or (n, 1) values, each from a model that never saw the row
    shown: Shown
    task: str
    fold: np.ndarray | None = None  # each row's fold (cross-validation)
    runner: Any = None              # audit.folds.FoldRunner (cross-validation)
    skipped: list[SkippedRow] = field(default_factory=list)
    thresholds: np.ndarray | None = None  # multi-label decision thresholds, for suggested label sets
    split: str = "test"             # the split of --data that was read ("train" for cross-validation)
    model: Any = None               # the fine-tuned classifier (its own mode), for the report's words
    reading: dict[str, Any] = field(default_factory=dict)


def scorer(batch_size: int) -> Callable[[Any, Split], tuple[np.ndarray, Any]]:
    """`score(model, split)`: a split's outputs (probabilities, or values) with a model folder or a loaded
    Classifier, reading long texts whole as predict does by default, and the classifier used."""
    def score(model: Any, split: Split) -> tuple[np.ndarray, Any]:
        from finetune_bert.inference.classifier import load
        # a folder is a fold's model, which is never exported: torch, as auto would say at every fold
        clf = load(str(model), reading=Reading(), backend="torch") if isinstance(model, (str, Path)) else model
        prepared, _ = clf.prepare(split.texts, cleaned=True, pairs=split.pairs)
        return clf.score_prepared([prepared], batch_size)[0], clf
    return score


def read_for_model(cfg) -> Scored:
    """The rows of --data a fine-tuned model scores, checked (labels it knows, texts it never trained on), and
    their outputs."""
    from finetune_bert.data.chunks import chunk_rows
    from finetune_bert.engine.model_folder import ModelFolder
    from finetune_bert.inference.classifier import LabelMap, load
    from finetune_bert.inference.files import labelled_rows, read_columns

    folder = ModelFolder.open(cfg.model)
    labels = LabelMap.of(folder.config(), folder.info)
    chunked = labelled_rows(cfg.data, labels, clean=folder.info.clean, columns=read_columns(cfg, folder.info, True),
                            on_bad_rows=cfg.on_bad_rows, rows_per_chunk=chunk_rows(None, cfg.eval_batch_size))
    chunked.check()
    rows = _joined(list(chunked))
    rows = seeded_sample(rows, cfg.max_train_samples, cfg.seed)
    skipped = list(chunked.skipped)
    rows = _unseen(rows, read_seen(folder.path), cfg, skipped)
    clf = load(folder, reading=Reading())
    outputs, _ = scorer(cfg.eval_batch_size)(clf, rows)
    info = folder.info
    shown = Shown(clf.task, clf.label_names, list(info.raw_labels) if info.raw_labels else None,
                  info.label_separator, info.integer_targets)
    thresholds = clf.thresholds if clf.task == "multi-label" else None
    return Scored(rows, list(rows.labels), outputs, shown, clf.task, skipped=skipped, thresholds=thresholds,
                  model=clf, reading=clf.reading_json())


def _joined(chunks: list[Split]) -> Split:
    first = chunks[0]
    pairs = None if first.pairs is None else [p for c in chunks for p in c.pairs]
    return Split(first.name, first.source, [t for c in chunks for t in c.texts], [x for c in chunks for x in c.labels],
                 [w for c in chunks for w in c.where], pairs, first.columns)


def _unseen(rows: Split, seen: set[str] | None, cfg, skipped: list[SkippedRow]) -> Split:
    """The rows the model did not train or select on: the others refused, or skipped and listed."""
    if seen is None:
        console.warn(f"{cfg.model} does not record the texts it trained on (trained elsewhere, or by an older "
                     "finetune-bert): audit cannot check that the data is new to it. Probabilities of texts it "
                     "learned would hide their label errors")
        return rows
    pairs = rows.pairs or [None] * len(rows)
    hit = [i for i, (t, p) in enumerate(zip(rows.texts, pairs)) if text_key(t, p) in seen]
    if not hit:
        return rows
    column = rows.columns.text if rows.columns else "text"
    if cfg.on_bad_rows != "skip":
        raise UserError(f"{rows.source}: {rows.where[hit[0]]}, column {column!r}: the model {cfg.model} trained on this "
                        f"text ({len(hit)} of the {len(rows)} rows are in its training or validation data), so its "
                        "probabilities for them say nothing about their labels. Audit data the model did not learn "
                        "from, cross-validate with its base model (--model BASE --folds 5), or pass --on-bad-rows skip "
                        "to audit the other rows")
    skipped.extend(SkippedRow("audit", rows.source, rows.where[i], column, "the model trained on this text",
                              rows.texts[i][:80]) for i in hit)
    console.say(f"note: {len(hit)} rows are texts the model trained on: skipped, listed in skipped_rows.csv")
    if len(hit) == len(rows):
        raise UserError(f"{rows.source}: every row is a text the model {cfg.model} trained on; nothing is left to audit "
                        "(skipped_rows.csv would list them all). Audit other data, or cross-validate with --folds")
    hit_set = set(hit)
    return rows.subset([i for i in range(len(rows)) if i not in hit_set])
