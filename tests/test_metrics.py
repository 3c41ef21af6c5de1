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
