"""Which rows' labels are likely wrong, from out-of-fold outputs: confident learning through cleanlab, the
reference implementation of Northcutt et al. (cleanlab.filter.find_label_issues), never a copy of it.

Classes: cleanlab's confident joint prunes by noise rate; rows are ranked by their label quality (the
out-of-fold probability of the given label, or its normalised margin over the best other). Label sets: its
multi-label filter. Targets: cleanlab's regression ranks rows by how far the out-of-fold value is from the
given one; its own flagging retrains the model with rows dropped (impossible at a fine-tune's cost), so a row
is flagged when its residual is beyond three robust standard deviations of all residuals (1.4826 x MAD)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from finetune_bert.tasks import MULTI_LABEL, REGRESSION

# A residual this many robust standard deviations out is flagged (regression); ~0.3% of a normal's mass.
OUTLIER_SIGMAS = 3.0


@dataclass(frozen=True)
class Findings:
    """The rows flagged, worst first; each row's label quality (low: likely wrong) and suggested label (a class
    id, a tuple of label ids, or a value); and the per-class picture: noise rate and the joint of given against
    suggested labels (classes), or each label's issue rate (label sets)."""

    flagged: np.ndarray        # row indices, worst first
    quality: np.ndarray        # (n,) in [0, 1]
    suggested: list[Any]       # (n,)
    ranked_by: str
    noise_rate: dict[str, float]
    joint: list[list[float]] | None = None  # classes: P(given = row, suggested = column), estimated


def find_issues(task: str, labels: list[Any], outputs: np.ndarray, names: list[str], *,
                rank_by: str = "self_confidence", thresholds: np.ndarray | None = None) -> Findings:
    """The label issues of `labels` (class ids, tuples of label ids, or targets) given out-of-sample `outputs`
    (probabilities (n, k), or values (n, 1)); `thresholds`: each label's decision threshold (label sets)."""
    with warnings.catch_warnings():  # cleanlab warns of tiny classes; the summary states their counts
        warnings.simplefilter("ignore")
        if task == MULTI_LABEL:
            return _label_sets(labels, outputs, names, rank_by, thresholds)
        if task == REGRESSION:
            return _targets(np.asarray(labels, dtype=np.float64), outputs[:, 0].astype(np.float64))
        return _classes(np.asarray(labels, dtype=np.int64), outputs, names, rank_by)


def _classes(labels: np.ndarray, probs: np.ndarray, names: list[str], rank_by: str) -> Findings:
    from cleanlab.count import estimate_joint
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs = _renormalised(probs)
    flagged = np.asarray(find_label_issues(labels, probs, return_indices_ranked_by=rank_by, n_jobs=1), dtype=np.int64)
    quality = get_label_quality_scores(labels, probs, method=rank_by)
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -1.0  # the suggestion is never the label already given
    suggested = others.argmax(axis=1).tolist()
    joint = estimate_joint(labels, probs)
    rows = joint.sum(axis=1)
    noise = {n: float(1 - joint[i, i] / rows[i]) if rows[i] > 0 else 0.0 for i, n in enumerate(names)}
    return Findings(flagged, np.asarray(quality, dtype=np.float64), suggested, rank_by, noise,
                    [[round(float(x), 6) for x in row] for row in joint])


def _renormalised(probs: np.ndarray) -> np.ndarray:
    """Rows summing to 1 in float64: cleanlab checks it, and float32 softmax rows may miss by 1e-7."""
    probs = np.clip(probs.astype(np.float64), 1e-12, None)
    return probs / probs.sum(axis=1, keepdims=True)


def _label_sets(labels: list[tuple[int, ...]], probs: np.ndarray, names: list[str], rank_by: str,
                thresholds: np.ndarray | None) -> Findings:
    from cleanlab.multilabel_classification.filter import find_label_issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores

    given = [sorted(int(x) for x in row) for row in labels]
    probs = np.clip(probs.astype(np.float64), 1e-9, 1 - 1e-9)
    flagged = np.asarray(find_label_issues(given, probs, return_indices_ranked_by=rank_by, n_jobs=1), dtype=np.int64)
    quality = get_label_quality_scores(given, probs, method=rank_by)
    cut = thresholds if thresholds is not None else np.full(probs.shape[1], 0.5)
    suggested = [tuple(int(j) for j in np.flatnonzero(row >= cut)) for row in probs]
    # each label's share, among the rows where the given or the suggested set holds it, where the two disagree
    hot = np.zeros_like(probs, dtype=bool)
    for i, row in enumerate(given):
        hot[i, row] = True
    predicted = probs >= cut
    either = hot | predicted
    noise = {n: float((hot[:, j] != predicted[:, j])[either[:, j]].mean()) if either[:, j].any() else 0.0
             for j, n in enumerate(names)}
    return Findings(flagged, np.asarray(quality, dtype=np.float64), suggested, rank_by, noise)


def _targets(labels: np.ndarray, values: np.ndarray) -> Findings:
    from cleanlab.regression.rank import get_label_quality_scores

    quality = np.asarray(get_label_quality_scores(labels, values), dtype=np.float64)
    residual = values - labels
    spread = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    out = np.abs(residual - np.median(residual)) > OUTLIER_SIGMAS * max(spread, 1e-12)
    flagged = np.flatnonzero(out)
    flagged = flagged[np.argsort(quality[flagged], kind="stable")]
    return Findings(flagged.astype(np.int64), quality, values.tolist(), "residual",
                    {"residual_robust_std": spread})
