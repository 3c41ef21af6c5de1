"""Multi-label and regression end to end on tiny random BERTs: train, the folder as transformers reads it,
predict, evaluate, serve, and exact resume after SIGKILL for each kind."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

from conftest import TASK_KINDS, kind_cli, kind_train_args, make_tiny_bert


def test_the_folder_records_the_kind_for_transformers_and_for_us(trained_kinds):
    ml, reg = trained_kinds["multi-label"], trained_kinds["regression"]
    assert json.loads((ml / "config.json").read_text())["problem_type"] == "multi_label_classification"
    assert json.loads((reg / "config.json").read_text())["problem_type"] == "regression"
    info = json.loads((ml / "finetune_bert.json").read_text())
    assert info["task"] == "multi-label" and len(info["thresholds"]) == 3 and len(info["label_temperatures"]) == 3
    assert all(0.01 <= t <= 0.99 for t in info["thresholds"])
    info = json.loads((reg / "finetune_bert.json").read_text())
    assert info["task"] == "regression" and info["integer_targets"] and info["target_scale"][1] > 0
    metrics = json.loads((ml / "metrics.json").read_text())
    assert metrics["task"] == "multi-label" and metrics["test"]["f1_macro"] > 0.6
    assert set(metrics["test"]["at_0.5"]) >= {"f1_macro", "f1_micro"}
    metrics = json.loads((reg / "metrics.json").read_text())
    assert metrics["test"]["spearman"] > 0.8 and "within_1" in metrics["test"]


def test_pipeline_gives_the_multi_label_scores_of_load_and_they_do_not_sum_to_one(trained_kinds):
    from transformers import pipeline
    from finetune_bert import load

    texts = ["great camera story", "bad plot", "the very quite"]
    clf = load(trained_kinds["multi-label"], device="cpu", backend="torch-fp32")
    ours = clf.predict_proba(texts)
    pipe = pipeline("text-classification", model=str(trained_kinds["multi-label"]), top_k=None, device="cpu")
    for row, answer in zip(ours, pipe(texts)):
        theirs = {a["label"]: a["score"] for a in answer}
        assert np.allclose([theirs[n] for n in clf.label_names], row, atol=1e-5)
    assert not np.allclose(ours.sum(axis=1), 1.0, atol=1e-3)
    decided = clf.predict(texts[0])
    assert set(decided.labels) == {n for n, p, t in zip(clf.label_names, ours[0], clf.thresholds) if p >= t}


def test_pipeline_gives_the_regression_value_of_load_in_the_targets_units(trained_kinds, kind_data):
    from transformers import pipeline
    from finetune_bert import load

    rows = list(csv.DictReader(kind_data["regression"]["test"].open()))
    texts = [r["text"] for r in rows]
    clf = load(trained_kinds["regression"], device="cpu", backend="torch-fp32")
    values = np.array([v.value for v in clf.predict(texts)])
    pipe = pipeline("text-classification", model=str(trained_kinds["regression"]), top_k=None, device="cpu",
                    function_to_apply="none")
    theirs = np.array([a[0]["score"] for a in pipe(texts)])
    assert np.allclose(values, theirs, atol=1e-5)
    truth = np.array([float(r["rating"]) for r in rows])
    assert abs(values.mean() - truth.mean()) < 1.0 and np.sqrt(np.mean((values - truth) ** 2)) < 2.0
    with pytest.raises(Exception, match="predicts values, not probabilities"):
        clf.predict_proba(texts)


@pytest.mark.parametrize("kind", list(TASK_KINDS))
def test_evaluate_and_predict_read_the_kind_from_the_folder(trained_kinds, kind_data, kind, tmp_path):
    model, test = trained_kinds[kind], kind_data[kind]["test"]
    done = kind_cli("evaluate", "--model", str(model), "--data", str(test), "--output", str(tmp_path / "e.json"),
                *TASK_KINDS[kind][1])
    assert done.returncode == 0, done.stderr[-2000:]
    evaluated = json.loads((tmp_path / "e.json").read_text())
    trained = json.loads((model / "metrics.json").read_text())["test"]
    key = "f1_macro" if kind == "multi-label" else "rmse"
    assert evaluated["task"] == kind and evaluated[key] == pytest.approx(trained[key], abs=1e-4)
    done = kind_cli("predict", "--model", str(model), "--input", str(test), "--output", str(tmp_path / "p.csv"))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 60 and "true_label" in rows[0]
    if kind == "multi-label":
        assert {"prob_neg", "prob_pos", "prob_tech"} <= set(rows[0]) and "confidence" not in rows[0]
        assert all(set(filter(None, r["predicted"].split(";"))) <= {"neg", "pos", "tech"} for r in rows)
    else:
        assert all(0.0 < float(r["predicted"]) < 12.0 for r in rows)


def test_serve_answers_each_kind_as_the_pipeline_does(trained_kinds):
    from fastapi.testclient import TestClient
    from finetune_bert.serving.app import create_app

    with TestClient(create_app(str(trained_kinds["multi-label"]))) as client:
        answer = client.post("/predict", json={"inputs": "great camera"}).json()
        assert {a["label"] for a in answer} == {"neg", "pos", "tech"} and all("above_threshold" in a for a in answer)
        assert abs(sum(a["score"] for a in answer) - 1.0) > 1e-3
        refused = client.post("/predict", json={"inputs": "x", "parameters": {"function_to_apply": "softmax"}})
        assert refused.status_code == 422 and "sigmoid" in refused.json()["error"]
        assert client.get("/info").json()["task"] == "multi-label"
    with TestClient(create_app(str(trained_kinds["regression"]))) as client:
        answer = client.post("/predict", json={"inputs": ["good great", "bad awful"]}).json()
        assert [a[0]["label"] for a in answer] == ["rating", "rating"] and answer[0][0]["score"] > answer[1][0]["score"]


@pytest.mark.parametrize("kind", list(TASK_KINDS))
def test_sigkill_then_resume_gives_identical_weights_for_each_kind(kind_data, kind, tmp_path):
    model = make_tiny_bert(tmp_path / "bert", dropout=0.1)  # dropout on: the resume must restore the RNG too
    extra = ["--save-every", "3", "--eval-every", "4"]
    reference, out = tmp_path / "reference", tmp_path / "run"
    assert kind_cli(*kind_train_args(model, kind_data[kind], reference, kind, *extra, epochs="1")).returncode == 0
    killed = kind_cli(*kind_train_args(model, kind_data[kind], out, kind, *extra, epochs="1"), fault="kill@step:7")
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = kind_cli(*kind_train_args(model, kind_data[kind], out, kind, *extra, "--resume", epochs="1"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    a, b = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0


def test_a_pair_model_reads_both_texts_everywhere(pair_model, tmp_path):
    from transformers import pipeline
    from finetune_bert import load

    model, data = pair_model
    info = json.loads((model / "finetune_bert.json").read_text())
    assert info["pair_column"] == "sentence2" and info["text_column"] == "sentence1"
    assert json.loads((model / "metrics.json").read_text())["test"]["accuracy"] > 0.9  # the label is in the pair
    clf = load(model, device="cpu", backend="torch-fp32")
    pairs = [("the film", "loved it"), ("loved it", "the film hated")]
    ours = clf.predict_proba(pairs)
    pipe = pipeline("text-classification", model=str(model), top_k=None, device="cpu")
    for row, answer in zip(ours, pipe([{"text": a, "text_pair": b} for a, b in pairs])):
        theirs = {a["label"]: a["score"] for a in answer}
        assert np.allclose([theirs[n] for n in clf.label_names], row, atol=1e-5)
    assert clf.predict({"text": "the film", "text_pair": "loved it"}).label == "1"
    with pytest.raises(Exception, match="reads text pairs"):
        clf.predict("the film")
    done = kind_cli("predict", "--model", str(model), "--input", str(data["test"]), "--output", str(tmp_path / "p.csv"))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 60 and rows[0]["text_pair"] and sum(r["predicted"] == r["true_label"] for r in rows) > 50
    done = kind_cli("evaluate", "--model", str(model), "--data", str(data["test"]), "--output", str(tmp_path / "e.json"))
    assert done.returncode == 0, done.stderr[-2000:]
    trained = json.loads((model / "metrics.json").read_text())["test"]
    assert json.loads((tmp_path / "e.json").read_text())["accuracy"] == trained["accuracy"]
    done = kind_cli("predict", "--model", str(model), '{"text": "the film", "text_pair": "hated it"}')
    assert done.returncode == 0 and done.stdout.startswith("0\t"), done.stderr
    done = kind_cli("predict", "--model", str(model), "just one text")
    assert done.returncode == 2 and "reads text pairs; give each as JSON" in done.stderr


def test_serve_takes_pairs_in_the_hugging_face_form(pair_model):
    from fastapi.testclient import TestClient
    from finetune_bert.serving.app import create_app

    with TestClient(create_app(str(pair_model[0]))) as client:
        answer = client.post("/predict", json={"inputs": {"text": "the film", "text_pair": "loved it"}}).json()
        assert answer[0]["label"] == "1"
        refused = client.post("/predict", json={"inputs": "the film"})
        assert refused.status_code == 422 and "text_pair" in refused.json()["error"]
        refused = client.post("/predict", json={"inputs": [{"text": "a film", "text_pair": " "}]})
        assert refused.status_code == 422 and "inputs[0].text_pair" in refused.json()["error"]


@pytest.mark.parametrize("kind", ["multi-label", "regression", "pairs"])
def test_the_onnx_export_gives_each_kind_the_same_numbers(trained_kinds, pair_model, kind, tmp_path):
    import shutil
    from finetune_bert import load

    source = pair_model[0] if kind == "pairs" else trained_kinds[kind]
    model = shutil.copytree(source, tmp_path / "model")
    done = kind_cli("export", "--model", str(model))
    assert done.returncode == 0, done.stderr[-2000:]
    items = [("the film", "loved it"), ("a camera", "bad hated")] if kind == "pairs" else \
        ["great camera story", "bad plot awful", "the very quite"]
    torch_out = load(model, device="cpu", backend="torch-fp32").predict(items)
    onnx_out = load(model, backend="onnx").predict(items)
    for a, b in zip(torch_out, onnx_out):
        if kind == "regression":
            assert abs(a.value - b.value) < 1e-4
        elif kind == "multi-label":
            assert a.labels == b.labels and all(abs(a.scores[n] - b.scores[n]) < 1e-4 for n in a.scores)
        else:
            assert a.label == b.label and abs(a.confidence - b.confidence) < 1e-4


def test_export_checks_a_regression_model_on_data(trained_kinds, kind_data, tmp_path):
    import shutil

    model = shutil.copytree(trained_kinds["regression"], tmp_path / "model")
    done = kind_cli("export", "--model", str(model), "--data", str(kind_data["regression"]["test"]))
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads((model / "onnx" / "export.json").read_text())["on_data"]["backends"]
    assert seen["onnx"]["max_abs_prob_diff"] < 1e-3 and "label_agreement" not in seen["onnx"]
    assert "max |value - torch's|" in done.stdout


@pytest.mark.parametrize("kind, figure", [("multi-label", "F1"), ("regression", "predicted")])
def test_each_kinds_report_renders_in_headless_chromium(trained_kinds, kind, figure):
    """As a person sees it: no console error, every figure decoded, and the kind's own figure there."""
    from conftest import _browser

    driver, reason = _browser()
    if driver is None:
        pytest.skip(reason)
    try:
        driver.get(f"file://{trained_kinds[kind]}/report.html")
        assert [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])")
        assert images and all(done and w > 100 and h > 100 for done, w, h, _ in images), images
        assert any(figure in alt for *_, alt in images), images
        text = driver.find_element("tag name", "body").text
        assert ("threshold" in text) if kind == "multi-label" else ("RMSE" in text)
    finally:
        driver.quit()


@pytest.mark.parametrize("kind", list(TASK_KINDS))
def test_long_texts_are_read_whole_for_each_kind_as_the_mean_of_window_logits(trained_kinds, kind):
    import torch
    from finetune_bert import load
    from finetune_bert.inference.reading import Reading
    from finetune_bert.tasks import activate

    clf = load(trained_kinds[kind], device="cpu", backend="torch-fp32", reading=Reading(long_texts="chunks"))
    text = " ".join(["great camera but the plot was bad"] * 12)  # well over the model's 32 tokens
    windows, _ = clf.prepare([text])
    assert len(windows.encoded) > 2
    with torch.no_grad():
        mean = clf.engine.logits(windows.encoded, 8).numpy().mean(axis=0, keepdims=True)
    if kind == "regression":
        assert clf.predict(text).value == pytest.approx(float(mean[0, 0]), abs=1e-5)
    else:
        assert np.allclose(clf.predict_proba(text), activate(mean, kind)[0], atol=1e-5)


def test_a_regressions_largest_errors_are_in_its_report_and_in_evaluate_errors(trained_kinds, kind_data, tmp_path):
    model = trained_kinds["regression"]
    rows = json.loads((model / "metrics.json").read_text())["largest_errors"]
    assert len(rows) == 20 and [r["error"] for r in rows] == sorted((r["error"] for r in rows), reverse=True)
    assert all(r["error"] == pytest.approx(abs(r["predicted"] - r["true"]), abs=1e-3) for r in rows)
    assert "largest errors" in (model / "report.html").read_text()
    done = kind_cli("evaluate", "--model", str(model), "--data", str(kind_data["regression"]["test"]), "--output",
                    str(tmp_path / "e.json"), "--errors", "5")
    assert done.returncode == 0, done.stderr[-2000:]
    written = list(csv.DictReader((tmp_path / "e.errors.csv").open()))
    assert [r["row"] for r in written] == [r["row"] for r in rows[:5]]  # the same model, the same test rows
    assert set(written[0]) == {"row", "text", "true", "predicted", "error"}
    done = kind_cli("evaluate", "--model", str(trained_kinds["multi-label"]), "--data",
                    str(kind_data["multi-label"]["test"]), "--errors", "5", "--output", str(tmp_path / "m.json"))
    assert done.returncode == 2 and "is a multi-label model: drop --errors" in done.stderr
