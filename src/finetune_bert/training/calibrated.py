"""The end of training per task kind: what calibration fits on validation and folds into the model, and how
the finished model is then scored.

Classification: one temperature (evaluation.calibration). Multi-label: a temperature per label, folded into
its row of the head, then each label's decision threshold tuned on the calibrated validation probabilities
for that label's best F1 (or --threshold for all). Regression: no temperature; the target scaling is folded
into the head, so the model predicts in the user's units from here on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from finetune_bert.evaluation.calibration import (Temperature, calibrate, calibrate_labels, label_measures,
                                                   score_calibrated, summary_line)
from finetune_bert.evaluation.scoring import score_logits, thresholds_for
from finetune_bert.tasks import MULTI_LABEL, REGRESSION, Scoring
from finetune_bert.training.kinds import prior_correction, shift_bias


@dataclass
class Calibrated:
    """What calibration did: `decided` goes into finetune_bert.json, `record` into metrics.json, `log` into
    the run log; `score(engine, encoded, names, batch_size)` scores the finished model on more data, giving
    (metrics, calibration measures before and after or None, logits)."""

    temperature: float
    save: bool  # whether the model must be saved again (weights folded, or thresholds decided)
    record: dict[str, Any]
    logits: torch.Tensor  # validation's, calibrated
    scoring: Scoring
    score: Callable[..., tuple[dict[str, Any], dict[str, Any] | None, torch.Tensor]]
    decided: dict[str, Any] = field(default_factory=dict)
    log: dict[str, Any] = field(default_factory=dict)
    fit: Temperature | None = None  # classification: the one temperature fitted

    def summary(self, record: dict[str, Any]) -> str:
        """One line for a person: what was fitted and what it did on each split."""
        if self.fit is not None:
            return summary_line(self.fit, {s: record[s] for s in ("validation", "test") if s in record})
        parts = [record["note"]]
        for split in ("validation", "test"):
            if split in record:
                b, a = record[split]["before"], record[split]["after"]
                parts.append(f"{split} mean per-label ECE {100 * b['ece']:.2f}% -> {100 * a['ece']:.2f}%, "
                             f"NLL {b['log_loss']:.4f} -> {a['log_loss']:.4f}")
        return "calibration: " + "; ".join(parts)


def calibrate_kind(job) -> Calibrated:
    """Calibrate `job`'s (training.job.Job) best model on validation as its kind asks."""
    if job.ds.task == MULTI_LABEL:
        return _multi_label(job)
    if job.ds.task == REGRESSION:
        return _regression(job)
    engine, val, names, size = job.engine, job.enc["validation"], job.ds.label_names, job.state.eval_batch_size
    t, measures, logits = calibrate(engine, val, names, size, job.cfg.calibrate)
    return Calibrated(t.value, t.kept, {**t.to_json(), "validation": measures}, logits,
                      Scoring(metric=job.cfg.metric), lambda *a: score_calibrated(*a, t, job.cfg.metric),
                      log={"temperature": t.value, "fitted": t.fitted, "note": t.note}, fit=t)


def _multi_label(job) -> Calibrated:
    engine, val, names, size = job.engine, job.enc["validation"], job.ds.label_names, job.state.eval_batch_size
    shift = prior_correction(job.step_options.weights)
    if shift is not None:  # --class-weights: the labels' odds back as they are, before any temperature
        engine.load_weights(shift_bias(engine.weights(), engine.model, shift))
    temps, measures, logits = calibrate_labels(engine, val, names, size, job.cfg.calibrate)
    values = [t.value for t in temps]
    thresholds = thresholds_for(logits, val, job.scoring, tune=True)
    kept = sum(t.kept for t in temps)
    how = f"--threshold {job.cfg.threshold}" if job.cfg.threshold is not None else \
        "each label's threshold tuned on validation for its best F1"
    note = (f"{kept} of {len(temps)} labels calibrated with their own temperature on {len(val)} validation rows"
            if job.cfg.calibrate else "not calibrated: --no-calibrate") + f"; decisions: {how}" + \
        (f"; each label's logit lowered by log of its pos_weight (--class-weights {job.cfg.class_weights})"
         if shift is not None else "")
    scoring = Scoring(MULTI_LABEL, thresholds=tuple(float(x) for x in thresholds), metric=job.cfg.metric)
    record = {"note": note, "temperatures": values, "thresholds": list(scoring.thresholds), "validation": measures,
              "label_notes": {n: t.note for n, t in zip(names, temps)},
              **({"prior_correction": shift.tolist()} if shift is not None else {})}

    def score(engine, encoded, label_names, batch_size):
        after = engine.logits(encoded, batch_size)
        before = after * torch.tensor(values, dtype=after.dtype)
        return (score_logits(after, encoded, label_names, scoring),
                label_measures(before, after, torch.from_numpy(encoded.labels), label_names), after)

    return Calibrated(1.0, True, record, logits, scoring, score,
                      {"label_temperatures": tuple(values), "thresholds": scoring.thresholds},
                      {"temperatures": values, "thresholds": list(scoring.thresholds), "note": note})


def _regression(job) -> Calibrated:
    # the engine keeps predicting z-scores and is scored through the scale, like the encoded targets; the scaling
    # is folded into the weights saved (job.saved_weights)
    engine, ds = job.engine, job.ds
    mean, std = ds.target_scale
    note = (f"no temperature for regression; the target scaling (train mean {mean:g}, standard deviation {std:g}) "
            "is folded into the head, so the model predicts in the targets' units")
    scoring = Scoring(REGRESSION, ds.target_scale, ds.integer_targets, metric=job.cfg.metric)
    logits = engine.logits(job.enc["validation"], job.state.eval_batch_size)

    def score(engine, encoded, label_names, batch_size):
        out = engine.logits(encoded, batch_size)
        return score_logits(out, encoded, label_names, scoring), None, out

    return Calibrated(1.0, True, {"note": note, "target_scale": [mean, std]}, logits, scoring, score,
                      log={"note": note})
