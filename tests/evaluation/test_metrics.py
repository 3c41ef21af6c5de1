"""Streaming metrics equal scikit-learn's on the same predictions, fed batch by batch."""

import numpy as np
import pytest
import torch

from finetune_bert.evaluation.metrics import StreamingMetrics


def test_streaming_metrics_match_sklearn_in_batches():
    from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 3000)
    logits = rng.normal(size=(3000, 2)) + np.stack([1 - labels, labels], 1) * 1.5
    m = StreamingMetrics(["neg", "pos"])
    for start in range(0, 3000, 128):  # batch by batch, as evaluation streams
        m.update(torch.tensor(logits[start:start + 128]), torch.tensor(labels[start:start + 128]))
    r = m.compute()
    probs = torch.softmax(torch.tensor(logits), 1).numpy()
    pred = probs.argmax(1)
    assert r["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert r["f1_macro"] == pytest.approx(f1_score(labels, pred, average="macro"))
    assert r["precision_macro"] == pytest.approx(precision_score(labels, pred, average="macro"))
    assert r["log_loss"] == pytest.approx(log_loss(labels, probs), rel=1e-5)
    assert r["roc_auc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]), abs=1e-3)
    assert r["confusion_matrix"][1][1] == int(((pred == 1) & (labels == 1)).sum())


def test_multiclass_auc_is_macro_one_vs_rest():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 2000)
    logits = rng.normal(size=(2000, 3)) + np.eye(3)[labels] * 2
    m = StreamingMetrics(["a", "b", "c"])
    m.update(torch.tensor(logits), torch.tensor(labels))
    probs = torch.softmax(torch.tensor(logits), 1).numpy()
    assert m.compute()["roc_auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"), abs=1e-3)


def _reference_calibration(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> tuple[float, float]:
    """ECE (equal-width bins on the top-label confidence) and multi-class Brier, computed from all rows at once."""
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    confidence, predicted = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.mean() * abs((predicted[inside] == labels[inside]).mean() - confidence[inside].mean())
    brier = float(((probs - np.eye(logits.shape[1])[labels]) ** 2).sum(1).mean())
    return ece, brier


@pytest.mark.parametrize("k", [2, 4])
def test_streamed_ece_and_brier_equal_the_whole_data_definitions(k):
    rng = np.random.default_rng(k)
    labels = rng.integers(0, k, 2000)
    logits = rng.normal(size=(2000, k)) * 2 + np.eye(k)[labels] * 1.5  # confident, and often wrong
    m = StreamingMetrics([f"c{i}" for i in range(k)])
    for start in range(0, 2000, 96):
        m.update(torch.tensor(logits[start:start + 96]), torch.tensor(labels[start:start + 96]))
    ece, brier = _reference_calibration(logits, labels)
    r = m.compute()
    assert r["ece"] == pytest.approx(ece, abs=1e-6) and r["brier"] == pytest.approx(brier, rel=1e-6)
    if k == 2:
        from sklearn.metrics import brier_score_loss
        probs = torch.softmax(torch.tensor(logits), 1).numpy()
        assert r["brier"] == pytest.approx(2 * brier_score_loss(labels, probs[:, 1]), rel=1e-6)


def test_a_perfectly_calibrated_model_has_ece_near_0_and_an_overconfident_one_does_not():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.5, 1.0, 20000)
    labels = (rng.uniform(size=20000) > p).astype(int)  # class 0 is right with probability p
    logits = np.stack([np.log(p), np.log(1 - p)], 1)
    m = StreamingMetrics(["a", "b"])
    m.update(torch.tensor(logits), torch.tensor(labels))
    assert m.compute()["ece"] < 0.02
    hot = StreamingMetrics(["a", "b"])
    hot.update(torch.tensor(logits * 5), torch.tensor(labels))  # the same ranking, far too sure
    assert hot.compute()["ece"] > 0.1


def test_extremely_confident_logits_are_scored_not_an_index_error():
    """A well-trained model can put its classes 30+ logits apart; the AUC histogram's top bin takes them."""
    m = StreamingMetrics(["a", "b"])
    m.update(torch.tensor([[40.0, -40.0], [-35.0, 35.0], [0.0, 1.0]]), torch.tensor([0, 1, 1]))
    r = m.compute()
    assert r["accuracy"] == 1.0 and r["roc_auc"] == 1.0


def test_ece_of_a_hand_computed_example():
    """Four texts, top-label confidences 0.9 and 0.9 (bin 13 of 15: (0.867, 0.933]), 0.58 and 0.55 (bin 8:
    (0.533, 0.6]): bin 13 has accuracy 1/2 against confidence 0.9, bin 8 accuracy 1/2 against 0.565.
    ECE = 2/4 * |0.5 - 0.9| + 2/4 * |0.5 - 0.565| = 0.2 + 0.0325 = 0.2325."""
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.58, 0.42], [0.45, 0.55]])
    labels = np.array([0, 0, 0, 0])  # right, wrong, right, wrong
    m = StreamingMetrics(["a", "b"])
    m.update(torch.tensor(np.log(probs)), torch.tensor(labels))
    r = m.compute()
    assert r["ece"] == pytest.approx(0.2325, abs=1e-6)
    rel = r["reliability"]
    assert rel["count"][13] == 2 and rel["count"][8] == 2 and sum(rel["count"]) == 4
    assert rel["accuracy"][13] == pytest.approx(0.5) and rel["confidence"][8] == pytest.approx(0.565)


def test_confidence_histogram_and_accuracy_by_length():
    m = StreamingMetrics(["a", "b"])
    logits = torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 0.2], [0.0, 3.0]])
    m.update(logits, torch.tensor([0, 1, 1, 0]), lengths=np.array([10, 100, 700, 5000]))
    r = m.compute()
    hist = r["confidence_histogram"]
    assert sum(hist["correct"]) == 2 and sum(hist["wrong"]) == 2
    # confidences 0.9526 (right), 0.9526 (wrong), 0.5498 (right), 0.9526 (wrong): bins 19, 19, 10, 19
    assert hist["wrong"][19] == 2 and hist["correct"][19] == 1 and hist["correct"][10] == 1
    assert [(b["from"], b["to"], b["n"], b["accuracy"]) for b in r["by_length"]] == [
        (0, 64, 1, 1.0), (64, 128, 1, 0.0), (512, 1024, 1, 1.0), (1024, None, 1, 0.0)]


def test_the_most_confident_mistakes_are_kept_across_batches_most_confident_first():
    from finetune_bert.evaluation.metrics import ConfidentMistakes

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 3)) * 3
    labels = rng.integers(0, 3, 500)
    tracker = ConfidentMistakes(7, ["a", "b", "c"])
    for start in range(0, 500, 64):
        tracker.update(torch.tensor(logits[start:start + 64]), torch.tensor(labels[start:start + 64]),
                       lambda j, s=start: {"row": s + j})
    probs = torch.softmax(torch.tensor(logits), -1).numpy()
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    expected = wrong[np.argsort(-probs[wrong].max(1), kind="stable")][:7]
    rows = tracker.rows()
    assert [r["row"] for r in rows] == expected.tolist()
    assert all(r["true_label"] != r["predicted"] for r in rows)
    assert rows[0]["confidence"] == pytest.approx(probs[expected[0]].max())


def test_a_snippet_keeps_the_start_and_the_end():
    from finetune_bert.evaluation.metrics import snippet

    assert snippet("short") == "short"
    text = "start " + "x" * 1000 + " end"
    cut = snippet(text, 100)
    assert len(cut) <= 101 and cut.startswith("start") and cut.endswith("end") and "\u2026" in cut
