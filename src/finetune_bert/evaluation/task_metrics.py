"""Metrics of the two task kinds besides single-label classification: multi-label and regression.

Both keep what they score (n * K logits, or n predictions): the set-based and ranking metrics of scikit-learn
and scipy need every row, and unlike classification's streamed histograms a few floats per row is all they
cost. They answer StreamingMetrics' interface (`update`, `compute`), so `metrics.metrics_for` hands any of
the three to the same loop. The terminal tables live in tables.py and are re-exported here.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np
import torch

from finetune_bert.evaluation import named as named_metrics
from finetune_bert.evaluation.tables import format_any, format_multilabel, format_regression
from finetune_bert.evaluation.thresholds import decide
from finetune_bert.tasks import DEFAULT_THRESHOLD, MULTI_LABEL, REGRESSION

__all__ = ["MultiLabelMetrics", "RegressionMetrics", "format_any", "format_multilabel", "format_regression"]

SCATTER_POINTS = 2000
RESIDUAL_BINS = 30


def _bce(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of sigmoid(logits) over every cell, from the logits: softplus(z) - y z, which
    is what BCEWithLogitsLoss computes in training and never takes log(0)."""
    z = logits.astype(np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - labels * z)) if z.size else 0.0


def _set_scores(labels: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """The metrics of 0/1 decisions against 0/1 labels, as scikit-learn defines them (macro: over all labels)."""
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_score, recall_score

    out: dict[str, Any] = {f"f1_{avg}": float(f1_score(labels, predicted, average=avg, zero_division=0))
                           for avg in ("micro", "macro", "weighted")}
    for name, fn in (("precision", precision_score), ("recall", recall_score)):
        for avg in ("micro", "macro"):
            out[f"{name}_{avg}"] = float(fn(labels, predicted, average=avg, zero_division=0))
    out["subset_accuracy"] = float(accuracy_score(labels, predicted))
    out["hamming_loss"] = float(hamming_loss(labels, predicted))
    out["labels_per_text"] = {"true": float(labels.sum(1).mean()), "predicted": float(predicted.sum(1).mean())}
    return out


def _ranking(labels: np.ndarray, scores: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """Each label's ROC-AUC (None without both classes) and average precision (None without a positive).
    Scored on the logits: the same order as the probabilities, without float32 sigmoids tying at 1.0."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    aucs, aps = [], []
    for k in range(labels.shape[1]):
        positives = int(labels[:, k].sum())
        both = 0 < positives < len(labels)
        aucs.append(float(roc_auc_score(labels[:, k], scores[:, k])) if both else None)
        aps.append(float(average_precision_score(labels[:, k], scores[:, k])) if positives else None)
    return aucs, aps


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


class MultiLabelMetrics:
    """One sigmoid per label; a label is predicted at or above its threshold (0.5 each unless given). A
    scikit-learn `metric` (named.py) is scored on the label-indicator matrix of those decisions, or on the
    probabilities where it reads scores."""

    def __init__(self, label_names: list[str], thresholds: np.ndarray | None = None, *, metric: str | None = None):
        self.names = list(label_names)
        self.named = named_metrics.lookup(metric, MULTI_LABEL)
        k = len(self.names)
        self.thresholds = np.full(k, DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds, float)
        if self.thresholds.shape != (k,):
            raise ValueError(f"{len(self.thresholds)} thresholds for {k} labels")
        self._logits: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(self, logits: torch.Tensor, labels: torch.Tensor, lengths: np.ndarray | None = None) -> None:
        """Add a batch: logits (n, K) and multi-hot labels (n, K); lengths are accepted and not used."""
        self._logits.append(logits.detach().float().cpu().numpy().reshape(-1, len(self.names)))
        self._labels.append((labels.detach().cpu().numpy() > 0.5).reshape(-1, len(self.names)).astype(np.int64))

    def compute(self) -> dict[str, Any]:
        from sklearn.metrics import precision_recall_fscore_support

        k = len(self.names)
        logits = np.concatenate(self._logits) if self._logits else np.zeros((0, k), np.float32)
        labels = np.concatenate(self._labels) if self._labels else np.zeros((0, k), np.int64)
        probs = 0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))  # the sigmoid, without exp's overflow
        predicted = decide(probs, self.thresholds).astype(np.int64)
        at_half = decide(probs).astype(np.int64)
        precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, average=None,
                                                                         labels=list(range(k)), zero_division=0)
        half = _set_scores(labels, at_half)
        f1_half = precision_recall_fscore_support(labels, at_half, average=None, labels=list(range(k)),
                                                  zero_division=0)[2]
        aucs, aps = _ranking(labels, logits)
        loss = _bce(logits, labels)
        per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                            "support": int(support[i]), "roc_auc": aucs[i], "average_precision": aps[i],
                            "threshold": float(self.thresholds[i])} for i, name in enumerate(self.names)}
        named = {} if self.named is None else \
            {self.named.name: named_metrics.value(self.named, labels, predicted, probs, task=MULTI_LABEL)}
        return {"task": MULTI_LABEL, "n": len(labels), "labels": list(self.names), **named,
                "thresholds": [float(t) for t in self.thresholds], **_set_scores(labels, predicted),
                "roc_auc": _mean(aucs), "map": _mean(aps), "loss": loss, "log_loss": loss, "per_class": per_class,
                "at_0.5": {**{key: half[key] for key in ("f1_micro", "f1_macro", "f1_weighted", "subset_accuracy",
                                                         "hamming_loss", "labels_per_text")},
                           "f1_per_label": {name: float(v) for name, v in zip(self.names, f1_half)}}}


def _correlation(fn, x: np.ndarray, y: np.ndarray) -> float | None:
    """A correlation, or None where it is undefined (fewer than two rows, or a constant side)."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(fn(x, y)[0])


def _residuals(errors: np.ndarray) -> dict[str, Any]:
    count, edges = np.histogram(errors, bins=RESIDUAL_BINS) if len(errors) else (np.zeros(RESIDUAL_BINS),
                                                                                np.linspace(-1, 1, RESIDUAL_BINS + 1))
    return {"bins": RESIDUAL_BINS, "edges": edges.tolist(), "count": np.asarray(count, dtype=int).tolist()}


class RegressionMetrics:
    """One output; predictions and targets arrive standardised (what the model is trained on) and are scored
    in the user's units, x * scale[1] + scale[0]; the loss stays in standardised units, as training has it."""

    def __init__(self, label_names: list[str], integer_targets: bool = False,
                 scale: tuple[float, float] = (0.0, 1.0), *, metric: str | None = None):
        self.names = list(label_names)
        self.named = named_metrics.lookup(metric, REGRESSION)  # scored in the user's units too
        self.integer_targets = integer_targets
        self.scale = (float(scale[0]), float(scale[1]))
        self._predicted: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []

    def update(self, logits: torch.Tensor, targets: torch.Tensor, lengths: np.ndarray | None = None) -> None:
        """Add a batch: predictions (n, 1) or (n,) and targets (n,); lengths are accepted and not used."""
        self._predicted.append(logits.detach().double().cpu().numpy().reshape(-1))
        self._targets.append(targets.detach().double().cpu().numpy().reshape(-1))

    def compute(self) -> dict[str, Any]:
        from scipy.stats import pearsonr, spearmanr
        from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

        standard_pred = np.concatenate(self._predicted) if self._predicted else np.zeros(0)
        standard_true = np.concatenate(self._targets) if self._targets else np.zeros(0)
        shift, factor = self.scale
        pred, true = standard_pred * factor + shift, standard_true * factor + shift
        n = len(true)
        out: dict[str, Any] = {"task": REGRESSION, "n": n, "labels": list(self.names)}
        if n:
            out.update(rmse=float(np.sqrt(mean_squared_error(true, pred))), mae=float(mean_absolute_error(true, pred)),
                       r2=float(r2_score(true, pred)) if n > 1 else None)
        else:
            out.update(rmse=0.0, mae=0.0, r2=None)
        out.update(pearson=_correlation(pearsonr, true, pred), spearman=_correlation(spearmanr, true, pred))
        if self.named is not None:
            out[self.named.name] = named_metrics.value(self.named, true, pred, None, task=REGRESSION) if n else None
        if self.integer_targets:
            out["within_1"] = float(np.mean(np.abs(pred - true) <= 1)) if n else 0.0
        out["loss"] = float(np.mean((standard_pred - standard_true) ** 2)) if n else 0.0
        # evenly spaced over the rows: the same points on every rebuild, and the data's order kept
        shown = np.unique(np.linspace(0, n - 1, min(n, SCATTER_POINTS)).round().astype(int)) if n else []
        out["scatter"] = [[float(true[i]), float(pred[i])] for i in shown]
        out["residuals"] = _residuals(pred - true)
        out["target"] = ({"mean": float(true.mean()), "std": float(true.std()), "min": float(true.min()),
                          "max": float(true.max())} if n else dict.fromkeys(("mean", "std", "min", "max")))
        return out


class LargestErrors:
    """A regression's `k` predictions furthest from their targets, kept in a heap of at most k while batches
    stream by (what confident mistakes are to a classifier: a wrong target in the data, or what the model has
    not learned); `describe(j)` gives the j-th row of a batch as a dict, called only for rows kept."""

    def __init__(self, k: int, scale: tuple[float, float] = (0.0, 1.0)):
        self.k, self.scale = k, scale
        self._heap: list[tuple[float, int, dict]] = []
        self._order = 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, describe) -> None:
        mean, std = self.scale
        predicted = outputs.float().cpu().reshape(-1).numpy().astype(np.float64) * std + mean
        true = targets.float().cpu().reshape(-1).numpy().astype(np.float64) * std + mean
        for j in np.argsort(-np.abs(predicted - true), kind="stable")[:self.k]:
            error = float(abs(predicted[j] - true[j]))
            self._order += 1
            item = (error, -self._order, {**describe(int(j)), "true": float(true[j]),
                                          "predicted": round(float(predicted[j]), 4), "error": round(error, 4)})
            if len(self._heap) < self.k:
                heapq.heappush(self._heap, item)
            elif item[:2] > self._heap[0][:2]:
                heapq.heapreplace(self._heap, item)

    def rows(self) -> list[dict]:
        """Largest error first (ties: the earlier row first)."""
        return [row for *_, row in sorted(self._heap, key=lambda x: (x[0], x[1]), reverse=True)]
