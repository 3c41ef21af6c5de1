"""Multi-label and regression metrics: equal to scikit-learn / scipy on the same predictions, fed batch by batch,
and what metrics_for / score / scores_of give for each kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finetune_bert.evaluation.task_metrics import (MultiLabelMetrics, RegressionMetrics, format_any,
                                                   format_multilabel, format_regression)

NAMES = ["anger", "joy", "sadness", "surprise"]


def _multilabel(n: int = 1500, seed: int = 0):
    """Four labels of different frequency; logits that separate them imperfectly. The last label is rare."""
    rng = np.random.default_rng(seed)
    labels = (rng.uniform(size=(n, 4)) < np.array([0.3, 0.5, 0.1, 0.02])).astype(np.float32)
    logits = (rng.normal(size=(n, 4)) * 1.5 + (labels * 2 - 1) * 1.2 - 0.8).astype(np.float32)
    return logits, labels


def _fed(metrics, logits, labels, batch=128):
    for start in range(0, len(labels), batch):
        metrics.update(torch.tensor(logits[start:start + batch]), torch.tensor(labels[start:start + batch]))
    return metrics.compute()


def test_multilabel_metrics_equal_sklearn_at_given_thresholds_and_at_0_5():
    from sklearn.metrics import (accuracy_score, average_precision_score, f1_score, hamming_loss,
                                 precision_score, recall_score, roc_auc_score)

    logits, labels = _multilabel()
    thresholds = np.array([0.3, 0.5, 0.2, 0.6])
    r = _fed(MultiLabelMetrics(NAMES, thresholds), logits, labels)
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    y, pred, half = labels.astype(int), (probs >= thresholds).astype(int), (probs >= 0.5).astype(int)
    assert r["task"] == "multi-label" and r["n"] == 1500 and r["labels"] == NAMES and r["thresholds"] == [0.3, 0.5, 0.2, 0.6]
    for avg in ("micro", "macro", "weighted"):
        assert r[f"f1_{avg}"] == pytest.approx(f1_score(y, pred, average=avg, zero_division=0))
        assert r["at_0.5"][f"f1_{avg}"] == pytest.approx(f1_score(y, half, average=avg, zero_division=0))
    assert r["precision_micro"] == pytest.approx(precision_score(y, pred, average="micro"))
    assert r["recall_macro"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert r["subset_accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert r["hamming_loss"] == pytest.approx(hamming_loss(y, pred))
    assert r["at_0.5"]["hamming_loss"] == pytest.approx(hamming_loss(y, half))
    assert r["roc_auc"] == pytest.approx(np.mean([roc_auc_score(y[:, k], probs[:, k]) for k in range(4)]))
    assert r["map"] == pytest.approx(np.mean([average_precision_score(y[:, k], probs[:, k]) for k in range(4)]))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(labels))
    assert r["loss"] == r["log_loss"] == pytest.approx(float(loss), rel=1e-5)
    sad = r["per_class"]["sadness"]
    assert sad["threshold"] == 0.2 and sad["support"] == int(y[:, 2].sum())
    assert sad["f1"] == pytest.approx(f1_score(y[:, 2], pred[:, 2]))
    assert r["at_0.5"]["f1_per_label"]["sadness"] == pytest.approx(f1_score(y[:, 2], half[:, 2]))
    assert sad["f1"] != pytest.approx(r["at_0.5"]["f1_per_label"]["sadness"])  # the threshold mattered
    assert r["labels_per_text"]["true"] == pytest.approx(y.sum(1).mean())
    assert r["labels_per_text"]["predicted"] == pytest.approx(pred.sum(1).mean())
    assert r["at_0.5"]["labels_per_text"]["predicted"] == pytest.approx(half.sum(1).mean())


def test_macro_f1_counts_every_label_even_one_never_true_or_predicted():
    """GoEmotions papers average over all labels: a label absent from the data counts with F1 0."""
    logits = np.array([[3.0, -3.0], [3.0, -3.0], [-3.0, -3.0]], dtype=np.float32)
    labels = np.array([[1, 0], [1, 0], [0, 0]], dtype=np.float32)
    r = _fed(MultiLabelMetrics(["a", "b"]), logits, labels)
    assert r["per_class"]["a"]["f1"] == 1.0 and r["per_class"]["b"]["f1"] == 0.0
    assert r["f1_macro"] == pytest.approx(0.5) and r["f1_micro"] == pytest.approx(1.0)
    assert r["per_class"]["b"]["roc_auc"] is None and r["per_class"]["b"]["average_precision"] is None
    assert r["roc_auc"] == 1.0 and r["map"] == 1.0  # over the labels that have both classes / a positive


def test_saturated_logits_keep_their_ranking():
    """float32 sigmoids of 20 and 25 are both 1.0; ranking on the logits keeps the AUC exact."""
    logits = np.array([[25.0], [20.0], [18.0], [17.0]], dtype=np.float32)
    labels = np.array([[1], [0], [1], [0]], dtype=np.float32)
    assert _fed(MultiLabelMetrics(["x"]), logits, labels)["roc_auc"] == pytest.approx(0.75)


def test_wrong_number_of_thresholds_is_refused():
    with pytest.raises(ValueError, match="3 thresholds for 4 labels"):
        MultiLabelMetrics(NAMES, np.array([0.5, 0.5, 0.5]))


def _regression(n: int = 3000, seed: int = 0):
    rng = np.random.default_rng(seed)
    standard_true = rng.normal(size=n)
    standard_pred = standard_true * 0.8 + rng.normal(size=n) * 0.4
    return standard_pred.astype(np.float32), standard_true.astype(np.float32)


def test_regression_metrics_are_in_the_users_units_and_the_loss_in_standard_units():
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, r2_score

    pred, true = _regression()
    m = RegressionMetrics(["stars"], integer_targets=True, scale=(3.0, 1.2))
    r = _fed(m, pred[:, None], true)  # (n, 1), as the model gives
    user_pred, user_true = pred.astype(np.float64) * 1.2 + 3.0, true.astype(np.float64) * 1.2 + 3.0
    assert r["task"] == "regression" and r["n"] == 3000 and r["labels"] == ["stars"]
    assert r["rmse"] == pytest.approx(np.sqrt(np.mean((user_pred - user_true) ** 2)), rel=1e-6)
    assert r["mae"] == pytest.approx(mean_absolute_error(user_true, user_pred), rel=1e-6)
    assert r["r2"] == pytest.approx(r2_score(user_true, user_pred), rel=1e-6)
    assert r["pearson"] == pytest.approx(pearsonr(user_true, user_pred)[0], rel=1e-6)
    assert r["spearman"] == pytest.approx(spearmanr(user_true, user_pred)[0], rel=1e-6)
    assert r["within_1"] == pytest.approx(np.mean(np.abs(user_pred - user_true) <= 1))
    assert r["loss"] == pytest.approx(float(np.mean((pred.astype(np.float64) - true) ** 2)), rel=1e-6)
    assert r["rmse"] == pytest.approx(np.sqrt(r["loss"]) * 1.2, rel=1e-6)  # the scale shows, the shift does not
    assert r["target"]["mean"] == pytest.approx(user_true.mean()) and r["target"]["max"] == pytest.approx(user_true.max())
    assert sum(r["residuals"]["count"]) == 3000 and len(r["residuals"]["edges"]) == 31


def test_regression_scatter_is_at_most_2000_evenly_spaced_pairs_the_same_every_time():
    pred, true = _regression(n=5000)
    first = _fed(RegressionMetrics(["y"]), pred, true, batch=333)
    again = _fed(RegressionMetrics(["y"]), pred, true, batch=1000)
    assert first["scatter"] == again["scatter"] and len(first["scatter"]) == 2000
    assert first["scatter"][0] == [pytest.approx(float(true[0])), pytest.approx(float(pred[0]))]
    assert first["scatter"][-1][0] == pytest.approx(float(true[-1]))
    small = _fed(RegressionMetrics(["y"]), pred[:50], true[:50])
    assert len(small["scatter"]) == 50 and "within_1" not in small  # only with integer targets


def test_a_constant_prediction_has_no_correlation_rather_than_nan():
    r = _fed(RegressionMetrics(["y"]), np.zeros(20, np.float32), np.arange(20, dtype=np.float32))
    assert r["pearson"] is None and r["spearman"] is None and r["r2"] < 0


def test_the_tables_show_every_label_and_the_summaries():
    logits, labels = _multilabel()
    names = [f"label_{i}_with_a_rather_long_descriptive_name" for i in range(4)]
    m = _fed(MultiLabelMetrics(names, np.array([0.3, 0.5, 0.2, 0.6])), logits, labels)
    text = format_multilabel(m, "test")
    lines = text.splitlines()
    assert lines[0] == "test" and len(lines) == 1 + 1 + 4 + 3
    assert all(len(line) <= 80 for line in lines[1:6])  # the label rows stay short however long the names
    assert f"{m['f1_macro']:.4f}" in lines[6] and "hamming loss" in lines[6] and "mAP" in lines[6]
    assert lines[7].startswith("at threshold 0.5:") and f"{m['at_0.5']['f1_macro']:.4f}" in lines[7]
    assert format_any(m, "test") == text
    pred, true = _regression()
    r = _fed(RegressionMetrics(["y"], integer_targets=True), pred, true)
    assert format_any(r) == format_regression(r) and f"rmse {r['rmse']:.4f}" in format_regression(r)
    assert "within 1:" in format_regression(r)


def test_format_any_of_a_classification_dict_is_format_metrics():
    from finetune_bert.evaluation.metrics import StreamingMetrics, format_metrics

    m = StreamingMetrics(["a", "b"])
    m.update(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    r = m.compute()
    assert r["task"] == "classification" and format_any(r, "t") == format_metrics(r, "t")
    r.pop("task")  # metrics written before the task kinds
    assert format_any(r, "t") == format_metrics(r, "t")


def test_metrics_for_picks_the_class_of_each_kind_and_greater_is_better_follows_tasks():
    from finetune_bert.evaluation.metrics import StreamingMetrics, greater_is_better, metrics_for

    assert type(metrics_for("classification", ["a", "b"])) is StreamingMetrics
    picked = metrics_for("multi-label", NAMES, thresholds=np.full(4, 0.4))
    assert type(picked) is MultiLabelMetrics and picked.thresholds.tolist() == [0.4] * 4
    reg = metrics_for("regression", ["y"], scale=(1.0, 2.0), integer_targets=True)
    assert type(reg) is RegressionMetrics and reg.scale == (1.0, 2.0) and reg.integer_targets
    with pytest.raises(ValueError):
        metrics_for("ranking", ["a"])
    assert not greater_is_better("rmse") and not greater_is_better("hamming_loss") and not greater_is_better("mae")
    assert greater_is_better("f1_macro") and greater_is_better("r2") and not greater_is_better("loss")


@pytest.mark.parametrize("task", ["multi-label", "regression"])
def test_score_of_a_real_engine_equals_scores_of_its_logits(tiny_model, task):
    """score streams the engine's batches through metrics_for; scores_of takes the logits at once: the same."""
    from transformers import AutoModelForSequenceClassification

    from finetune_bert.data.tokens import Encoded
    from finetune_bert.engine.torch_engine import Engine
    from finetune_bert.evaluation.metrics import score, scores_of

    k = 3 if task == "multi-label" else 1
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=k).eval()
    rng = np.random.default_rng(0)
    ids = [np.concatenate([[2], rng.integers(5, 40, size=n), [3]]).astype(np.int32) for n in rng.integers(1, 30, 90)]
    labels = ((rng.uniform(size=(90, 3)) < 0.4).astype(np.float32) if task == "multi-label"
              else rng.normal(size=90).astype(np.float32))
    enc = Encoded(ids, np.array([len(x) for x in ids]), labels)
    engine = Engine(model, torch.device("cpu"), 0)
    names = ["a", "b", "c"] if task == "multi-label" else ["score"]
    options = dict(task=task, thresholds=np.array([0.4, 0.5, 0.6]) if k == 3 else None, scale=(2.0, 3.0))
    streamed = score(engine, enc, names, 16, **options)
    whole = scores_of(engine.logits(enc, 16), enc, names, **options)
    assert streamed["task"] == task and streamed["n"] == 90
    key = "f1_macro" if task == "multi-label" else "rmse"
    assert streamed[key] == pytest.approx(whole[key], rel=1e-5) and streamed["loss"] == pytest.approx(whole["loss"], rel=1e-5)
