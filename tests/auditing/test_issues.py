"""audit.issues on outputs whose truth is known: cleanlab's flags, the ranking, the suggested labels, per kind."""

from __future__ import annotations

import numpy as np

from finetune_bert.auditing.issues import find_issues


def test_classes_flipped_against_confident_outputs_are_flagged_worst_first():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 300)
    probs = np.full((300, 3), 0.05)
    probs[np.arange(300), truth] = 0.9
    labels = truth.copy()
    flipped = rng.choice(300, 15, replace=False)
    labels[flipped] = (truth[flipped] + 1) % 3
    found = find_issues("classification", labels.tolist(), probs, ["a", "b", "c"])
    assert set(found.flagged.tolist()) == set(flipped.tolist())
    assert all(found.suggested[i] == truth[i] for i in flipped)
    assert np.all(np.diff(found.quality[found.flagged]) >= 0)  # worst first
    assert found.quality[flipped].max() < found.quality[np.setdiff1d(np.arange(300), flipped)].min()
    assert 0 < found.noise_rate["a"] < 0.2 and np.allclose(np.sum(found.joint), 1, atol=1e-6)


def test_label_sets_with_a_missing_or_extra_label_are_flagged():
    rng = np.random.default_rng(1)
    truth = rng.random((200, 3)) < 0.4
    probs = np.where(truth, 0.95, 0.03)
    given = [tuple(np.flatnonzero(row).tolist()) for row in truth]
    for i in (3, 50, 120):  # a label dropped or added by the annotator
        row = set(given[i]) ^ {0}
        given[i] = tuple(sorted(row))
    found = find_issues("multi-label", given, probs, ["x", "y", "z"], thresholds=np.full(3, 0.5))
    assert {3, 50, 120} <= set(found.flagged.tolist()) and len(found.flagged) <= 6
    assert found.suggested[3] == tuple(np.flatnonzero(truth[3]).tolist())


def test_targets_far_from_their_out_of_fold_value_are_flagged():
    rng = np.random.default_rng(2)
    values = rng.uniform(1, 10, 400)
    given = values + rng.normal(0, 0.3, 400)
    given[[7, 99, 250]] += np.array([6.0, -5.0, 7.0])
    found = find_issues("regression", given.tolist(), values[:, None], ["rating"])
    assert set(found.flagged[:3].tolist()) == {7, 99, 250}  # the three planted errors, the worst first
    assert found.flagged[0] == 250 and len(found.flagged) <= 3 + 8  # and few of the normal noise's tail
