"""`finetune-bert distill`: knowledge distillation, as a training run of the student.

The student is trained by training.train.run_training like any model (the same loop, checkpoints, calibration,
test and report); what distillation adds travels with the training split: each row's teacher outputs
(data.tokens.Encoded.teacher), which the batches carry and the step's loss mixes with the true labels
(training.kinds.distill_loss_sum). Texts from --unlabeled join the training split with no label, so that the
teacher alone teaches them. The teacher's outputs are computed once and kept in the output folder (teacher.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any

import numpy as np

from finetune_bert.compression.config import DistillConfig
from finetune_bert.compression.record import check_or_record, locked
from finetune_bert.compression.teacher import Teacher, cache_key, open_teacher, teacher_outputs
from finetune_bert.console import console
from finetune_bert.data.dataset import Dataset
from finetune_bert.data.prepared import Prepared
from finetune_bert.data.rows import to_split
from finetune_bert.data.sources import read_source
from finetune_bert.data.splits import Split, dedupe_train
from finetune_bert.data.tokens import Encoded, encode
from finetune_bert.errors import UserError
from finetune_bert.ranks import launched
from finetune_bert.tasks import REGRESSION
from finetune_bert.training.finish import TrainResult
from finetune_bert.training.kinds import no_labels
from finetune_bert.training.train import checked, preflight, process_settings, run_training


def distill(cfg: DistillConfig | None = None, **overrides: Any) -> TrainResult:
    """Train `cfg.model` (the student) on `cfg.teacher`'s outputs and `cfg.data`'s labels into `cfg.output`,
    an ordinary model folder as train makes it (see the module docstring)."""
    if launched():
        raise UserError("distill trains its student in one process: start it without torchrun")
    cfg = checked(cfg or DistillConfig(), **overrides)
    process_settings(cfg)
    started = time.time()
    prepared = preflight(cfg)  # the output folder checked, every row read and validated, the student's tokenizer
    ds = prepared.ds
    teacher = open_teacher(cfg.teacher, ds.label_names, ds.task, cfg.trust_remote_code)
    _check_student_layers(cfg, prepared)
    unlabeled = _read_unlabeled(cfg, ds)
    texts = ds.train.texts + (unlabeled.texts if unlabeled is not None else [])
    pairs = None if ds.train.pairs is None else ds.train.pairs + (unlabeled.pairs if unlabeled is not None else [])
    key = cache_key(cfg, teacher, texts, pairs, prepared.tokens.max_length)
    with locked(cfg.output):  # no other run in the folder while its record and the teacher's outputs are written
        check_or_record(cfg.output, cfg.resume, _settings(cfg, key))
        outputs = teacher_outputs(cfg, teacher, texts, pairs, key)
    prepared = with_teacher(prepared, _encoded(cfg, prepared, unlabeled), _as_targets(outputs, teacher, ds))
    prepared = dataclasses.replace(prepared, unlabeled=unlabeled)
    return run_training(cfg, prepared, started=started)


def _check_student_layers(cfg: DistillConfig, prepared: Prepared) -> None:
    """--student-layers within the student's depth, refused before the teacher's outputs are computed."""
    if cfg.student_layers is None:
        return
    total = getattr(prepared.model.config(cfg.trust_remote_code), "num_hidden_layers", None)
    if total is not None and cfg.student_layers > total:
        raise UserError(f"--student-layers {cfg.student_layers}: the student {cfg.model} has {total} layers; "
                        f"keep 1 to {total}")


def _read_unlabeled(cfg: DistillConfig, ds: Dataset) -> Split | None:
    """--unlabeled's texts, read and checked as --data's are (bad rows stop the run or are skipped, listed in
    skipped_rows.csv); text pairs when the data is."""
    if not cfg.unlabeled:
        return None
    records = read_source(cfg.unlabeled, "train")[0]
    split = to_split(records, "unlabeled", cfg.text_column, None, cfg.clean, None, skipped=ds.skipped,
                     on_bad_rows=cfg.on_bad_rows, pair_column=cfg.text_pair_column, pairs=ds.train.pairs is not None)
    if (split.pairs is None) != (ds.train.pairs is None):
        raise UserError(f"{split.source}: has no second text column, but {ds.train.source} is read as text pairs; "
                        "give --unlabeled the same columns")
    if cfg.dedupe:
        split, note = dedupe_train(split, [s for s in (ds.val, ds.test) if s is not None], ds.skipped)
        console.say(f"--unlabeled: {note}")
    console.say(f"unlabeled: {len(split)} texts from {split.source}, learned from the teacher alone")
    return split


def _settings(cfg: DistillConfig, key: dict[str, Any]) -> dict[str, Any]:
    """What a resumed distillation must share with the run it continues, beyond train's own fingerprint."""
    outputs = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return {"command": "distill", "teacher_outputs": outputs, "kd_temperature": cfg.kd_temperature,
            "kd_alpha": cfg.kd_alpha, "student_layers": cfg.student_layers, "layer_pick": cfg.layer_pick}


def _encoded(cfg: DistillConfig, prepared: Prepared, unlabeled: Split | None) -> Encoded | None:
    """The unlabelled texts as the student reads them: its tokenizer, max length and truncation."""
    if unlabeled is None:
        return None
    return encode(prepared.tokenizer, unlabeled.texts, None, prepared.tokens.max_length, cfg.truncation,
                  cfg.head_tokens, pairs=unlabeled.pairs)


def _as_targets(outputs: np.ndarray, teacher: Teacher, ds: Dataset) -> np.ndarray:
    """The teacher's outputs as the student learns them: columns in the data's label order; a regression
    teacher's values (in the targets' units) as z-scores of train's targets, which the student learns."""
    targets = outputs[:, teacher.columns].astype(np.float64)
    if ds.task == REGRESSION:
        mean, std = ds.target_scale
        targets = (targets - mean) / std
    return targets.astype(np.float32)


def with_teacher(prepared: Prepared, unlabeled: Encoded | None, targets: np.ndarray) -> Prepared:
    """`prepared` whose training split carries each row's teacher outputs, with the unlabelled rows after
    the labelled ones (their labels marked as none: training.kinds.no_labels)."""
    train = prepared.tokens.splits["train"]
    if unlabeled is not None:
        k = train.labels.shape[1] if train.labels.ndim == 2 else 1
        labels = np.concatenate([train.labels, no_labels(prepared.ds.task, len(unlabeled), k)])
        types = None if train.type_ids is None else train.type_ids + unlabeled.type_ids
        train = Encoded(train.ids + unlabeled.ids, np.concatenate([train.full_lengths, unlabeled.full_lengths]),
                        labels, types)
    if len(targets) != len(train):
        raise ValueError(f"{len(targets)} teacher outputs for {len(train)} training rows")
    train = dataclasses.replace(train, teacher=targets)
    splits = {**prepared.tokens.splits, "train": train}
    return dataclasses.replace(prepared, tokens=dataclasses.replace(prepared.tokens, splits=splits))
