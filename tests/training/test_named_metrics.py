"""--metric by any scikit-learn name (the model picked by it, its value scikit-learn's, tune's direction from it)
and --class-weights by label name (the loss weighted as cross-entropy's weight= and BCE's pos_weight are)."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import toy_rows, write_csv
from finetune_bert.errors import UserError


@pytest.fixture(scope="module")
def split_data(tmp_path_factory):
    """Toy data whose validation has 4 of its 40 labels flipped: no model scores it perfectly."""
    folder = tmp_path_factory.mktemp("named")
    val = toy_rows(40, seed=12)
    for row in val[::10]:
        row["label"] = "negative" if row["label"] == "positive" else "positive"
    return {"train": write_csv(folder / "train.csv", toy_rows(96, seed=11)), "val": write_csv(folder / "val.csv", val)}


def _train(tiny_model, data, out, **kw):
    from finetune_bert import train
    # seed 2: this tiny model learns the toy task within these 24 steps (fp32, one thread; other seeds later)
    options = dict(data=str(data["train"]), val_data=str(data["val"]), model=str(tiny_model), output=str(out),
                   epochs=4, batch_size=16, lr=1e-2, warmup_ratio=0.05, max_length=32, seed=2, eval_every=3,
                   bf16=False, report=False, export=False, num_threads=1)
    return train(**{**options, **kw})


def _best_of(history, metric, lower):
    values = [(r["step"], r[metric]) for r in history if r.get(metric) is not None]
    assert len({v for _, v in values}) >= 3, history  # several different evaluations to choose from
    return min(values, key=lambda v: (v[1] if lower else -v[1], v[0]))[0]  # ties: the earlier step


def test_a_scikit_learn_metric_picks_the_model_its_value_is_sklearns_and_resume_keeps_it(tiny_model, split_data,
                                                                                          tmp_path):
    from sklearn.metrics import matthews_corrcoef
    from finetune_bert import load

    result = _train(tiny_model, split_data, tmp_path / "run", metric="matthews_corrcoef")
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    from huggingface_hub import ModelCard
    card = ModelCard.load(tmp_path / "run" / "README.md").data.eval_results
    assert {r.metric_type for r in card if r.dataset_split == "validation"} >= {"accuracy", "matthews_corrcoef"}
    assert m["best_step"] == _best_of(m["history"], "matthews_corrcoef", lower=False) == result.best_step
    rows = list(csv.DictReader(split_data["val"].open()))
    predicted = [p.label for p in load(result.output, device="cpu", backend="torch-fp32").predict(
        [r["text"] for r in rows])]
    assert m["validation"]["matthews_corrcoef"] == pytest.approx(
        matthews_corrcoef([r["label"] for r in rows], predicted), abs=1e-12)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").open()]
    assert all("matthews_corrcoef" in r for r in log if r["event"] == "eval")  # the report's curve reads these
    # the same run resumes (the metric is part of its fingerprint) under another name for the same metric
    again = _train(tiny_model, split_data, tmp_path / "run", metric="matthews_corrcoef_score", resume=True)
    assert again.best_step == result.best_step
    with pytest.raises(UserError, match="differences: metric"):
        _train(tiny_model, split_data, tmp_path / "run", metric="balanced_accuracy_score", resume=True)


def test_a_lower_is_better_metric_picks_the_lowest_and_tune_minimises_it(tiny_model, split_data, tmp_path):
    from finetune_bert.tuning.search import tune
    import optuna

    space = tmp_path / "space.json"
    space.write_text(json.dumps({"lr": {"choices": [0.01, 0.003]}}))
    tune(data=str(split_data["train"]), val_data=str(split_data["val"]), model=str(tiny_model),
         output=str(tmp_path / "study"), space=str(space), trials=2, epochs=2, batch_size=16, max_length=32,
         seed=0, eval_every=2, num_threads=1, confirm_seeds=0, export=False, report=False, metric="neg_brier_score")
    study = optuna.load_study(study_name="finetune-bert", storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}")
    assert study.direction.name == "MINIMIZE"
    best = json.loads((tmp_path / "study" / "best" / "metrics.json").read_text())
    assert json.loads((tmp_path / "study" / "best" / "run_config.json").read_text())["metric"] == "brier_score_loss"
    assert best["validation"]["brier_score_loss"] == pytest.approx(study.best_value)
    assert best["best_step"] == _best_of(best["history"], "brier_score_loss", lower=True)
    assert study.best_value == min(t.value for t in study.trials)


def test_unknown_or_unfitting_metrics_are_one_line_before_any_data_is_read(tmp_path, capsys):
    from finetune_bert.cli.main import main

    missing = str(tmp_path / "missing.csv")  # never read: the option is refused first
    assert main(["train", "--data", missing, "--output", str(tmp_path / "o"), "--metric", "matthew_corrcoef"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.csv" not in err
    assert "--metric matthew_corrcoef is not a classification metric; closest: matthews_corrcoef; valid: " in err
    assert "balanced_accuracy" in err and "cohen_kappa" in err
    assert main(["train", "--data", missing, "--output", str(tmp_path / "o"), "--metric", "r2_score"]) == 2
    assert "--metric r2_score scores regression, not classification" in capsys.readouterr().err
    assert main(["train", "--data", missing, "--output", str(tmp_path / "o"), "--task", "multi-label", "--metric",
                 "top_k_accuracy"]) == 2
    assert "--metric top_k_accuracy does not score multi-label" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_multi_label_and_regression_metrics_by_name_are_sklearns_on_their_outputs():
    from sklearn.metrics import f1_score, median_absolute_error, roc_auc_score
    from finetune_bert.evaluation.metrics import metrics_for
    from finetune_bert.evaluation.thresholds import decide

    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(40, 3)), rng.integers(0, 2, (40, 3))
    thresholds = np.array([0.3, 0.5, 0.7])
    probs = 1 / (1 + np.exp(-logits))
    for name, expected in (("f1", f1_score(labels, decide(probs, thresholds), average="macro")),
                           ("roc_auc_ovr", roc_auc_score(labels, probs))):
        m = metrics_for("multi-label", ["a", "b", "c"], thresholds=thresholds, metric=name)
        m.update(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels, dtype=torch.float32))
        assert m.compute()[name] == pytest.approx(expected, abs=1e-6)
    predicted, true = rng.normal(size=30), rng.normal(size=30)
    m = metrics_for("regression", ["y"], scale=(5.0, 2.0), metric="median_absolute_error")
    m.update(torch.tensor(predicted), torch.tensor(true))
    assert m.compute()["median_absolute_error"] == pytest.approx(median_absolute_error(true * 2 + 5, predicted * 2 + 5))


def _dataset(task, labels, names):
    from finetune_bert.data.dataset import Dataset
    from finetune_bert.data.splits import Split

    split = Split("train", "t.csv", [f"text {i}" for i in range(len(labels))], labels,
                  [f"line {i}" for i in range(len(labels))])
    return Dataset(split, split, None, names, names, task=task)


def test_class_weights_by_name_weigh_the_loss_as_explicit_weight_tensors_do():
    from finetune_bert.training.kinds import class_weights, loss_sum

    torch.manual_seed(0)
    logits, labels = torch.randn(8, 3), torch.tensor([0, 1, 2, 2, 1, 0, 2, 1])
    ds = _dataset("classification", ["a", "b", "c"], ["neutral", "negative", "positive"])
    weights = class_weights("positive=3, negative=0.5", ds, labels.numpy(), torch.device("cpu"))
    assert weights.tolist() == [1.0, 0.5, 3.0]  # id order; neutral not named: 1
    expected = F.cross_entropy(logits, labels, weight=torch.tensor([1.0, 0.5, 3.0]), reduction="sum")
    each = [1.0, 0.5, 3.0]
    by_hand = sum(each[y] * -torch.log_softmax(logits, 1)[i, y] for i, y in enumerate(labels.tolist()))
    assert torch.allclose(loss_sum("classification", logits, labels, weights), expected)
    assert torch.allclose(expected, by_hand)
    multi = _dataset("multi-label", [("x",), ("y",)], ["x", "y"])
    pos_weight = class_weights("y=4", multi, np.zeros((2, 2)), torch.device("cpu"))
    cells = torch.randn(5, 2), torch.randint(0, 2, (5, 2)).float()
    assert torch.allclose(loss_sum("multi-label", *cells, pos_weight), F.binary_cross_entropy_with_logits(
        *cells, pos_weight=torch.tensor([1.0, 4.0]), reduction="sum") / 2)


def test_what_only_the_labels_tell_is_refused_once_the_data_is_read_before_the_model(split_data, tmp_path):
    from finetune_bert import train

    no_model = str(tmp_path / "no-such-model")  # never opened: the labels' refusal comes first
    with pytest.raises(UserError, match=r"--class-weights neutral=2,positive=3: neutral is no label of the data; "
                                        r"its labels: negative, positive"):
        train(data=str(split_data["train"]), model=no_model, output=str(tmp_path / "o"),
              class_weights="neutral=2,positive=3")
    three = write_csv(tmp_path / "three.csv", [{"text": f"text {i}", "label": "abc"[i % 3]} for i in range(30)])
    with pytest.raises(UserError, match="--metric positive_likelihood_ratio does not score 3-class classification: "
                                        "class_likelihood_ratios only supports binary"):
        train(data=str(three), model=no_model, output=str(tmp_path / "o"), metric="positive_likelihood_ratio")
    with pytest.raises(UserError, match="--class-weights positive=0: the weight of positive must be a positive"):
        train(data=str(tmp_path / "never-read.csv"), output=str(tmp_path / "o"), class_weights="positive=0")
