"""`--backend auto`, the default of predict, evaluate, serve and load(): what it picks on each kind of machine
(the hardware probes faked by conftest's `machine`: a GPU, a CPU with or without AMX), with an export current,
stale, unfinished or absent, and without onnxruntime; explanations always through torch; the choice said and
recorded."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import numpy as np
import pytest

from conftest import predict_reporting_imports
from finetune_bert.inference import backends

TEXTS = ["a good and wonderful film", "awful dull plot", "superb music", "the movie was long " * 40]


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """A copy of the trained model (the shared one has no export) with train's own export: fp32 alone."""
    from finetune_bert.console import console
    from finetune_bert.export.onnx import export
    folder = tmp_path_factory.mktemp("auto") / "model"
    shutil.copytree(trained.output, folder)
    with console.quiet():
        export(str(folder))
    return folder


def _choice(folder, device=None, **kw):
    from finetune_bert.engine.model_folder import ModelFolder
    return backends.choose(ModelFolder.open(str(folder)), device, **kw)


def test_a_cpu_without_amx_runs_the_current_export_and_says_so_once(exported, machine, capsys, monkeypatch):
    from finetune_bert import load
    from finetune_bert.engine import onnx_engine
    machine()
    assert not backends.may_accelerate()  # torch need not even be imported to know
    hashed, sha256_of = [], onnx_engine.sha256_of
    monkeypatch.setattr(onnx_engine, "sha256_of", lambda path: hashed.append(path.name) or sha256_of(path))
    clf = load(str(exported))
    assert (clf.backend, clf.requested, clf.model) == ("onnx", "auto", None)
    assert hashed == ["model.onnx"]  # checked once for the choice, not again to load it
    err = capsys.readouterr().err
    assert err.count("backend onnx (auto: no GPU or AMX here") == 1, err
    torch_logits, _ = load(str(exported), backend="torch-fp32").scored(TEXTS)
    assert np.abs(clf.scored(TEXTS)[0] - torch_logits).max() <= 1e-4  # exact: the same answers as fp32 torch


def test_a_cpu_with_amx_runs_torch_in_bf16_unless_bf16_is_turned_off(exported, machine, monkeypatch):
    import torch

    from finetune_bert import load
    machine(amx=True)
    assert backends.may_accelerate(gpu=False)
    choice = _choice(exported, "cpu")
    assert choice.backend == "torch" and "AMX" in choice.why
    clf = load(str(exported), device="cpu")
    assert clf.backend == "torch" and clf.requested == "auto" and clf.engine.dtype == torch.bfloat16
    monkeypatch.setenv("FINETUNE_BERT_CPU_BF16", "0")  # torch would run fp32 there: the export is faster
    assert _choice(exported, "cpu").backend == "onnx"


def test_a_gpu_runs_torch(exported, machine):
    machine(gpu=True)
    assert _choice(exported).backend == "torch" and "a GPU (cuda:0)" in _choice(exported).why
    assert _choice(exported, "cuda:1").backend == "torch"  # a device named is taken at its word
    assert _choice(exported, "cpu").backend == "onnx"  # a GPU elsewhere does not run a model on the CPU


def test_a_stale_export_is_never_picked(exported, machine, tmp_path, capsys):
    """Weights rewritten after the export (a retrained folder): torch, and the reason with the command that
    renews the export; the same bytes copied (new times) are still the export's weights."""
    from finetune_bert import load
    machine()
    copied = tmp_path / "copied"
    shutil.copytree(exported, copied, copy_function=shutil.copy)
    assert _choice(copied).backend == "onnx"
    stale = tmp_path / "stale"
    shutil.copytree(exported, stale)
    weights = stale / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    choice = _choice(stale)
    assert choice.backend == "torch" and "made from other weights" in choice.why
    capsys.readouterr()
    assert load(str(stale)).backend == "torch"
    err = capsys.readouterr().err
    assert err.count("note: backend torch (auto: its ONNX export is not used") == 1
    assert f"finetune-bert export --model {stale} --format onnx" in err


def test_an_unfinished_or_absent_export_or_no_onnxruntime_means_torch(exported, trained, machine, tmp_path,
                                                                    monkeypatch):
    machine()
    assert "no ONNX export in" in _choice(trained.output).why and _choice(trained.output).backend == "torch"
    cut = tmp_path / "cut"
    shutil.copytree(exported, cut)
    (cut / "onnx" / "export.json").write_text(json.dumps({"tool": "finetune-bert", "complete": False,
                                                          "owned": ["model.onnx", "export.json"]}))
    assert _choice(cut).backend == "torch" and "did not finish" in _choice(cut).why
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    choice = _choice(exported)
    assert choice.backend == "torch" and "onnxruntime is not installed" in choice.why


def test_explanations_resolve_to_torch(exported, machine, toy_data, tmp_path, capsys):
    from finetune_bert import load
    from finetune_bert.cli.main import main
    machine()
    assert _choice(exported, gradients=True).backend == "torch"
    assert load(str(exported), explaining=True).backend == "torch"
    clf = load(str(exported))  # auto chose ONNX: an explanation still comes, through torch loaded for it
    assert clf.backend == "onnx" and clf.explain("a good film").words
    assert main(["predict", "--model", str(exported), "--explain", "--explain-steps", "4", "a good film"]) == 0
    assert "backend torch (auto: explanations need" in capsys.readouterr().err
    out = tmp_path / "m.json"
    assert main(["evaluate", "--model", str(exported), "--data", str(toy_data["test"]), "--output", str(out),
                 "--errors", "2"]) == 0  # --errors explains the mistakes it lists
    assert json.loads(out.read_text())["backend"] == "torch"


def test_the_choice_is_recorded_in_evaluate_and_the_server(exported, machine, toy_data, tmp_path):
    from fastapi.testclient import TestClient

    from finetune_bert import evaluate
    from finetune_bert.serving.app import create_app
    machine()
    metrics = evaluate(model=str(exported), data=str(toy_data["test"]), output=str(tmp_path / "m.json"), quiet=True)
    assert (metrics["backend"], metrics["backend_requested"]) == ("onnx", "auto")
    named = evaluate(model=str(exported), data=str(toy_data["test"]), output=str(tmp_path / "n.json"), quiet=True,
                     backend="torch-fp32")
    assert (named["backend"], named["backend_requested"]) == ("torch-fp32", "torch-fp32")
    assert named["accuracy"] == metrics["accuracy"]
    with TestClient(create_app(str(exported))) as client:  # answers through onnx; explains through torch
        info = client.get("/info").json()
        assert (info["backend"], info["backend_requested"], info["explain"]["available"]) == ("onnx", "auto", True)


def test_predict_by_default_on_a_plain_cpu_imports_neither_torch_nor_transformers(exported, toy_data, tmp_path):
    """The probe that spares torch's import (over a second of a prediction's start) where nothing could
    accelerate it; on a machine with a GPU or AMX, torch is the right backend and the test says so."""
    if backends.may_accelerate():
        pytest.skip("this machine may have a GPU or AMX tiles: auto asks torch, rightly")
    out = tmp_path / "auto.csv"
    done = predict_reporting_imports("--model", str(exported), "--input", str(toy_data["test"]), "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout and "note: backend onnx (auto:" in done.stderr
    assert len(list(csv.DictReader(out.open()))) == 40
