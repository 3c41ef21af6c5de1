"""Per-label thresholds: each label's F1-best cut, half-way between scores, clipped, recovered on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from finetune_bert.evaluation.thresholds import THRESHOLD_RANGE, decide, tune_thresholds


def _separable(n: int = 400, seed: int = 0):
    """Label 0: positives above 0.3, negatives below 0.25. Label 1: positives above 0.7, negatives below 0.6.
    Label 2: never positive."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 3), dtype=np.float32)
    labels[: n // 4, 0] = 1
    labels[n // 2:, 1] = 1
    probs = np.empty((n, 3))
    probs[:, 0] = np.where(labels[:, 0] > 0, rng.uniform(0.3, 0.95, n), rng.uniform(0.0, 0.25, n))
    probs[:, 1] = np.where(labels[:, 1] > 0, rng.uniform(0.7, 1.0, n), rng.uniform(0.0, 0.6, n))
    probs[:, 2] = rng.uniform(0.0, 1.0, n)
    return probs, labels


def test_a_separable_labels_threshold_lands_in_the_gap_half_way_between_the_scores():
    probs, labels = _separable()
    t = tune_thresholds(probs, labels)
    assert 0.25 < t[0] < 0.3 and 0.6 < t[1] < 0.7
    lowest_positive = probs[labels[:, 0] > 0, 0].min()
    highest_negative = probs[labels[:, 0] == 0, 0].max()
    assert t[0] == pytest.approx((lowest_positive + highest_negative) / 2)
    assert t[2] == 0.5  # no positive: nothing to tune
    assert (decide(probs, t)[:, :2] == (labels[:, :2] > 0)).all()


def test_tuned_f1_is_never_below_f1_at_0_5_on_the_same_data():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(3)
    labels = (rng.uniform(size=(2000, 5)) < np.array([0.4, 0.2, 0.05, 0.1, 0.3])).astype(int)
    # overlapping, and for the rare labels low: at 0.5 they are seldom predicted
    probs = 1 / (1 + np.exp(-(rng.normal(size=(2000, 5)) + labels * 1.5 - np.array([0, 1, 2, 1.5, 0.3]))))
    t = tune_thresholds(probs, labels)
    tuned, half = decide(probs, t), decide(probs)
    for k in range(5):
        assert f1_score(labels[:, k], tuned[:, k]) >= f1_score(labels[:, k], half[:, k]) - 1e-12
    assert f1_score(labels, tuned, average="macro") > f1_score(labels, half, average="macro") + 0.05


def test_a_tiny_shift_of_a_probability_does_not_change_a_decision():
    probs, labels = _separable(seed=1)
    t = tune_thresholds(probs, labels)
    assert (decide(probs + 1e-6, t) == decide(probs - 1e-6, t)).all()


def test_thresholds_are_clipped_to_their_range():
    """One positive at 0.999 and negatives up to 0.998: the F1-best cut would be 0.9985; clipped to 0.99.
    Every row positive at tiny scores: the cut would be half the lowest score; clipped to 0.01."""
    probs = np.array([[0.999, 0.004], [0.998, 0.003], [0.5, 0.002], [0.2, 0.005]])
    labels = np.array([[1, 1], [0, 1], [0, 1], [0, 1]])
    t = tune_thresholds(probs, labels)
    assert t.tolist() == [THRESHOLD_RANGE[1], THRESHOLD_RANGE[0]]


def test_decide_defaults_to_0_5_and_counts_a_probability_at_its_threshold():
    probs = np.array([[0.5, 0.49], [0.7, 0.3]])
    assert decide(probs).tolist() == [[True, False], [True, False]]
    assert decide(probs, np.array([0.7, 0.3])).tolist() == [[False, True], [True, True]]
