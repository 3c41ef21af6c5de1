"""The metrics stage: streaming metrics, which accumulate batch by batch so memory does not grow with the data.

ROC-AUC usually needs every score kept; here each class's scores go into a fixed histogram over the
log-odds (0.01 wide bins on [-30, 30]), which gives the AUC to well under 1e-3 at constant memory.

How far confidence is from accuracy, also streamed: ECE over 15 equal-width bins of the top-label confidence
(Guo et al. 2017: sum over bins of |accuracy - mean confidence| weighted by the bin's share of texts), and
the Brier score in its original multi-class form, the mean over texts of sum_k (p_k - y_k)^2 (twice
scikit-learn's binary `brier_score_loss`, which scores the positive class alone). NLL is `log_loss`.

For the report (report_page.py), also streamed: the reliability diagram's bins, a histogram of top-label
confidence for correct and wrong predictions, accuracy by text length in tokens, and the most confident
mistakes (`ConfidentMistakes`, a bounded heap).

Multi-label and regression metrics are task_metrics.py's; `metrics_for` picks the class of a task kind, and
`score` / `scores_of` score any kind through it. A scikit-learn metric named by --metric (named.py) is added by
each from the outputs it scored: classification then also keeps each row's label and probabilities.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any, Callable

import numpy as np
import torch

from finetune_bert.data.tokens import Encoded
from finetune_bert.evaluation import named as named_metrics
from finetune_bert.evaluation.tables import format_metrics
from finetune_bert.evaluation.task_metrics import MultiLabelMetrics, RegressionMetrics
from finetune_bert.tasks import CLASSIFICATION, MULTI_LABEL, REGRESSION

__all__ = ["StreamingMetrics", "ConfidentMistakes", "metrics_for", "score", "scores_of", "snippet",
           "format_metrics", "greater_is_better", "is_better"]  # format_metrics: in tables.py, imported from here

AUC_BINS = 6000
AUC_RANGE = 30.0
ECE_BINS = 15
CONFIDENCE_BINS = 20
# Accuracy by text length: token counts (special tokens included, before truncation) at these edges.
LENGTH_EDGES = (0, 64, 128, 256, 512, 1024)


class StreamingMetrics:
    def __init__(self, label_names: list[str], metric: str | None = None):
        self.names = label_names
        self.named = named_metrics.lookup(metric, CLASSIFICATION)
        self.kept: tuple[list[np.ndarray], ...] = ([], [], [])  # labels, predictions, probabilities: --metric's
        k = len(label_names)
        self.confusion = np.zeros((k, k), dtype=np.int64)
        self.loss_sum = 0.0
        self.count = 0
        self.pos_hist = np.zeros((k, AUC_BINS), dtype=np.int64)
        self.neg_hist = np.zeros((k, AUC_BINS), dtype=np.int64)
        # per confidence bin: texts, summed top-label confidence, correct predictions
        self.ece_bins = np.zeros((3, ECE_BINS), dtype=np.float64)
        self.brier_sum = 0.0
        self.confidence_hist = np.zeros((2, CONFIDENCE_BINS), dtype=np.int64)  # wrong, correct
        self.by_length = np.zeros((2, len(LENGTH_EDGES)), dtype=np.int64)     # texts, correct

    def _calibration(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        confidence, predicted = probs.max(-1)
        # bins (lo, hi] as Guo et al.'s reference code has them: ceil(c * K) - 1
        bins = (torch.ceil(confidence.double() * ECE_BINS).long() - 1).clamp(0, ECE_BINS - 1).numpy()
        for row, values in enumerate((np.ones(len(bins)), confidence.double().numpy(),
                                      (predicted == labels).double().numpy())):
            np.add.at(self.ece_bins[row], bins, values)
        correct = (predicted == labels).numpy().astype(np.int64)
        hist_bins = (confidence * CONFIDENCE_BINS).long().clamp(max=CONFIDENCE_BINS - 1).numpy()
        np.add.at(self.confidence_hist, (correct, hist_bins), 1)
        onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(probs.dtype)
        self.brier_sum += float(((probs - onehot) ** 2).sum())

    def update(self, logits: torch.Tensor, labels: torch.Tensor, lengths: np.ndarray | None = None) -> None:
        """Add a batch: logits (n, k), class ids (n,), and optionally each text's length in tokens."""
        logits, labels = logits.float().cpu(), labels.cpu()
        logp = torch.log_softmax(logits, dim=-1)
        self.loss_sum += float(-logp.gather(1, labels[:, None]).sum())
        self.count += len(labels)
        predicted = logp.argmax(-1).numpy()
        np.add.at(self.confusion, (labels.numpy(), predicted), 1)
        self._calibration(logp.exp(), labels)
        if self.named is not None:
            for kept, values in zip(self.kept, (labels.numpy(), predicted, logp.double().exp().numpy())):
                kept.append(values)
        if lengths is not None:
            bucket = np.searchsorted(LENGTH_EDGES, np.asarray(lengths), side="right") - 1
            np.add.at(self.by_length, (np.zeros_like(bucket), bucket), 1)
            np.add.at(self.by_length, (np.ones_like(bucket), bucket), (predicted == labels.numpy()).astype(np.int64))
        k = logits.shape[1]
        for c in range(k):
            others = torch.logsumexp(torch.cat([logp[:, :c], logp[:, c + 1:]], dim=1), dim=1)
            log_odds = (logp[:, c] - others).clamp(-AUC_RANGE, AUC_RANGE)
            # the index clamped too: in fp32, AUC_RANGE minus a small epsilon rounds back to the top edge
            bins = ((log_odds + AUC_RANGE) / (2 * AUC_RANGE) * AUC_BINS).long().clamp(0, AUC_BINS - 1).numpy()
            is_c = (labels == c).numpy()
            np.add.at(self.pos_hist[c], bins[is_c], 1)
            np.add.at(self.neg_hist[c], bins[~is_c], 1)

    def _auc(self, c: int) -> float | None:
        pos, neg = self.pos_hist[c], self.neg_hist[c]
        if pos.sum() == 0 or neg.sum() == 0:
            return None
        neg_below = np.cumsum(neg) - neg
        return float((pos * (neg_below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))

    def _ece(self) -> float:
        texts, confidence, correct = self.ece_bins
        return float(np.abs(correct - confidence).sum() / max(texts.sum(), 1))

    def _figures_data(self) -> dict[str, Any]:
        texts, confidence, correct = self.ece_bins
        lengths = [{"from": lo, "to": hi, "n": int(n), "accuracy": float(c / n) if n else None}
                   for lo, hi, n, c in zip(LENGTH_EDGES, (*LENGTH_EDGES[1:], None), *self.by_length)]
        return {"reliability": {"bins": ECE_BINS, "count": texts.astype(int).tolist(),
                                "confidence": np.divide(confidence, texts, out=np.zeros_like(texts), where=texts > 0).tolist(),
                                "accuracy": np.divide(correct, texts, out=np.zeros_like(texts), where=texts > 0).tolist()},
                "confidence_histogram": {"bins": CONFIDENCE_BINS, "wrong": self.confidence_hist[0].tolist(),
                                         "correct": self.confidence_hist[1].tolist()},
                "by_length": [row for row in lengths if row["n"]] if self.by_length[0].any() else []}

    def compute(self) -> dict[str, Any]:
        cm = self.confusion
        tp = np.diag(cm).astype(float)
        predicted, actual = cm.sum(0).astype(float), cm.sum(1).astype(float)
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                       where=(precision + recall) > 0)
        k = len(self.names)
        aucs = [self._auc(c) for c in (range(k) if k > 2 else [1])]
        aucs = [a for a in aucs if a is not None]
        per_class = {name: {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": int(actual[i])}
                     for i, name in enumerate(self.names)}
        present = actual > 0
        return {
            "task": CLASSIFICATION,
            "n": int(self.count),
            "accuracy": float(tp.sum() / max(self.count, 1)),
            "precision_macro": float(precision[present].mean()) if present.any() else 0.0,
            "recall_macro": float(recall[present].mean()) if present.any() else 0.0,
            "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
            "roc_auc": float(np.mean(aucs)) if aucs else None,
            "log_loss": self.loss_sum / max(self.count, 1),
            "loss": self.loss_sum / max(self.count, 1),
            "ece": self._ece(),
            "brier": self.brier_sum / max(self.count, 1),
            "per_class": {n: {k2: float(v) if k2 != "support" else v for k2, v in d.items()}
                          for n, d in per_class.items()},
            "confusion_matrix": cm.tolist(),
            "labels": list(self.names),
            **self._figures_data(),
            **self._named(),
        }

    def _named(self) -> dict[str, float | None]:
        """--metric's scikit-learn metric on the predictions and probabilities kept, or nothing."""
        if self.named is None:
            return {}
        k = len(self.names)
        labels, predicted, probs = (np.concatenate(kept) if kept else np.zeros(shape)
                                    for kept, shape in zip(self.kept, ((0,), (0,), (0, k))))
        return {self.named.name: named_metrics.value(self.named, labels, predicted, probs, task=CLASSIFICATION)}


class ConfidentMistakes:
    """The `k` wrong predictions made with the highest confidence, kept in a heap of at most k while batches
    stream by; `describe(j)` gives the j-th row of a batch as a dict (its text, where it stood), and is only
    called for rows that enter the heap."""

    def __init__(self, k: int, label_names: list[str]):
        self.k, self.names = k, label_names
        self._heap: list[tuple[float, int, dict[str, Any]]] = []
        self._order = itertools.count()

    def update(self, logits: torch.Tensor, labels: torch.Tensor, describe: Callable[[int], dict[str, Any]]) -> None:
        if self.k <= 0:
            return
        probs = torch.softmax(logits.float().cpu(), dim=-1)
        confidence, predicted = probs.max(-1)
        floor = self._heap[0][0] if len(self._heap) >= self.k else -1.0
        for j in torch.nonzero((predicted != labels.cpu()) & (confidence > floor)).flatten().tolist():
            row = {**describe(j), "true_label": self.names[int(labels[j])],
                   "predicted": self.names[int(predicted[j])], "confidence": float(confidence[j]),
                   **{f"prob_{n}": float(p) for n, p in zip(self.names, probs[j].tolist())}}
            item = (float(confidence[j]), -next(self._order), row)  # ties: the earlier row stays
            if len(self._heap) < self.k:
                heapq.heappush(self._heap, item)
            elif item > self._heap[0]:
                heapq.heapreplace(self._heap, item)

    def rows(self) -> list[dict[str, Any]]:
        """Most confident first (ties: the earlier row first)."""
        return [row for _, _, row in sorted(self._heap, key=lambda x: (x[0], x[1]), reverse=True)]


def metrics_for(task: str, label_names: list[str], *, thresholds: np.ndarray | None = None,
                scale: tuple[float, float] = (0.0, 1.0), integer_targets: bool = False, metric: str | None = None):
    """The metrics accumulator of a task kind; each answers `update(logits, labels, lengths)` and `compute()`.
    `thresholds` matter to multi-label only, `scale` and `integer_targets` to regression only; `metric`: a
    scikit-learn metric by name, added to what the kind computes (named.py)."""
    if task == MULTI_LABEL:
        return MultiLabelMetrics(label_names, thresholds, metric=metric)
    if task == REGRESSION:
        return RegressionMetrics(label_names, integer_targets, scale, metric=metric)
    if task != CLASSIFICATION:
        raise ValueError(f"unknown task kind {task!r}")
    return StreamingMetrics(label_names, metric)


def score(engine, encoded: Encoded, label_names: list[str], batch_size: int,
          on_batch: Callable[[int], None] | None = None, *, task: str = CLASSIFICATION,
          thresholds: np.ndarray | None = None, scale: tuple[float, float] = (0.0, 1.0),
          integer_targets: bool = False, metric: str | None = None) -> dict[str, Any]:
    """The metrics of `engine` (torch_engine.Engine) on labelled token ids; `on_batch(i)` after the i-th batch.
    encoded.labels: class ids (n,), multi-hot rows (n, K) or standardised targets (n,), by `task`."""
    metrics = metrics_for(task, label_names, thresholds=thresholds, scale=scale, integer_targets=integer_targets,
                          metric=metric)
    for i, (index, logits) in enumerate(engine.infer(encoded, batch_size)):
        metrics.update(logits, torch.from_numpy(encoded.labels[index]), encoded.full_lengths[index])
        if on_batch is not None:
            on_batch(i + 1)
    return metrics.compute()


def scores_of(logits: torch.Tensor, encoded: Encoded, label_names: list[str], *, task: str = CLASSIFICATION,
              thresholds: np.ndarray | None = None, scale: tuple[float, float] = (0.0, 1.0),
              integer_targets: bool = False, metric: str | None = None) -> dict[str, Any]:
    """The metrics of logits already computed (n, k), rows in `encoded`'s order."""
    metrics = metrics_for(task, label_names, thresholds=thresholds, scale=scale, integer_targets=integer_targets,
                          metric=metric)
    metrics.update(logits, torch.from_numpy(encoded.labels), encoded.full_lengths)
    return metrics.compute()


def snippet(text: str, limit: int = 400) -> str:
    """A long text shortened for a table: its start and its end, the cut marked."""
    if len(text) <= limit:
        return text
    tail = limit // 4
    return text[:limit - tail - 3].rstrip() + " … " + text[-tail:].lstrip()


def greater_is_better(metric: str) -> bool:
    """Which way `metric` is better: the kind's own as tasks.LOWER_IS_BETTER says, scikit-learn's as its scorer
    (or its name: a loss, an error) says."""
    return named_metrics.greater_is_better(metric)


def is_better(metric: str, value: float, best: float | None) -> bool:
    """Whether `value` of `metric` beats `best` (None: nothing to beat yet)."""
    if best is None:
        return True
    return value > best if greater_is_better(metric) else value < best
