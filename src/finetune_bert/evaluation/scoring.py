"""Scoring by task kind, in one place: the metrics of logits or of an engine under a `tasks.Scoring`, with a
multi-label model's decision thresholds tuned on the data where asked (validation, never test)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from finetune_bert.data.tokens import Encoded
from finetune_bert.evaluation.metrics import score, scores_of
from finetune_bert.evaluation.thresholds import tune_thresholds
from finetune_bert.tasks import CLASSIFICATION, MULTI_LABEL, Scoring, activate


def thresholds_for(logits: torch.Tensor, encoded: Encoded, scoring: Scoring, tune: bool) -> np.ndarray | None:
    """The thresholds to decide with: tuned on these labels (`tune`, multi-label, none fixed), the fixed
    ones, or None (0.5 each)."""
    if scoring.task != MULTI_LABEL:
        return None
    if tune and scoring.thresholds is None:
        return tune_thresholds(activate(logits.numpy(), MULTI_LABEL), encoded.labels)
    return None if scoring.thresholds is None else np.asarray(scoring.thresholds, dtype=np.float64)


def score_logits(logits: torch.Tensor, encoded: Encoded, label_names: list[str], scoring: Scoring,
                 tune: bool = False) -> dict[str, Any]:
    """The kind's metrics of logits already computed (n, k), rows in `encoded`'s order."""
    logits = logits.float().cpu()
    return scores_of(logits, encoded, label_names, task=scoring.task,
                     thresholds=thresholds_for(logits, encoded, scoring, tune), scale=scoring.scale,
                     integer_targets=scoring.integer_targets, metric=scoring.metric)


def score_engine(engine, encoded: Encoded, label_names: list[str], batch_size: int, scoring: Scoring, *,
                 on_batch: Callable[[int], None] | None = None, tune: bool = False) -> dict[str, Any]:
    """The metrics of `engine` (torch_engine.Engine) on labelled token ids; `on_batch(i)` after the i-th
    batch. Classification streams (constant memory); the other kinds keep the logits to rank and tune."""
    if scoring.task == CLASSIFICATION:
        return score(engine, encoded, label_names, batch_size, on_batch, metric=scoring.metric)
    logits = torch.zeros(len(encoded), engine.config.num_labels)
    for i, (index, batch) in enumerate(engine.infer(encoded, batch_size)):
        logits[torch.from_numpy(index)] = batch.float().cpu()
        if on_batch is not None:
            on_batch(i + 1)
    return score_logits(logits, encoded, label_names, scoring, tune)
