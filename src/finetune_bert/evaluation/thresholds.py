"""Per-label decision thresholds for multi-label models: the probability above which a label is predicted.

One sigmoid per label gives independent probabilities, and 0.5 is rarely the best cut: a rare label's
probabilities stay low, so at 0.5 it is almost never predicted. Each label gets the threshold that maximises
its own F1 on validation (precision-recall curve, every distinct score a candidate), set half-way to the next
lower score so that a probability moving by a rounding error (another backend, bf16) does not change a
decision made on validation.
"""

from __future__ import annotations

import numpy as np

from finetune_bert.tasks import DEFAULT_THRESHOLD

# A threshold at the very edge is fitted to one or two extreme validation scores: at 0.999 a label would
# almost never be predicted on new data, at 0.001 almost always. The clip keeps every label reachable and
# refusable whatever a small validation set happened to hold.
THRESHOLD_RANGE = (0.01, 0.99)


def _best_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    """The F1-maximising threshold of one label; the label must have a positive."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, scores = precision_recall_curve(labels, probs)
    # the last (precision, recall) pair is the "predict nothing" end, which has no threshold
    precision, recall = precision[:-1], recall[:-1]
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                   where=(precision + recall) > 0)
    chosen = float(scores[int(np.argmax(f1))])  # ties: the lowest threshold, the one that finds more
    lower = probs[probs < chosen]
    below = float(lower.max()) if lower.size else 0.0  # everything predicted: half-way down to 0
    return (chosen + below) / 2


def tune_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One threshold per label (K,) from probabilities (n, K) and 0/1 labels (n, K): each label's F1-best on
    this data; a label with no positive here keeps DEFAULT_THRESHOLD (there is no F1 to maximise)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels) > 0.5
    out = np.full(probs.shape[1], DEFAULT_THRESHOLD, dtype=np.float64)
    for k in range(probs.shape[1]):
        if labels[:, k].any():
            out[k] = _best_threshold(probs[:, k], labels[:, k])
    return np.clip(out, *THRESHOLD_RANGE)


def decide(probs: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    """Which labels are predicted (bool, (n, K)): a probability at or above its label's threshold, the
    convention of scikit-learn's precision_recall_curve, so decisions match the curve thresholds came from."""
    probs = np.asarray(probs)
    if thresholds is None:
        thresholds = np.full(probs.shape[-1], DEFAULT_THRESHOLD)
    return probs >= np.asarray(thresholds, dtype=np.float64)
