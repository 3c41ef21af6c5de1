"""Streaming metrics equal scikit-learn's on the same predictions, fed batch by batch."""

import numpy as np
import pytest
import torch

from finetune_bert.metrics import StreamingMetrics


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
