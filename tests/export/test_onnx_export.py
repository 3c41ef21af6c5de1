"""`finetune-bert export`: ONNX fp32 and int8, checked against torch; the backend switch on every command."""

import csv
import json
import os
import shutil

import numpy as np
import pytest

from finetune_bert.errors import UserError

TEXTS = ["a good and wonderful film", "awful dull plot", "superb music", "the movie was long " * 40, "hated it"]


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """A copy of the trained model (the shared one must stay torch-only), exported with int8."""
    from finetune_bert.export.onnx import export
    folder = tmp_path_factory.mktemp("exported") / "model"
    shutil.copytree(trained.output, folder)
    manifest = export(str(folder), quantize="int8")
    return folder, manifest


def test_export_writes_graphs_and_a_manifest_beside_the_model(exported):
    folder, manifest = exported
    assert (folder / "onnx" / "model.onnx").is_file() and (folder / "onnx" / "model.int8.onnx").is_file()
    on_disk = json.loads((folder / "onnx" / "export.json").read_text())
    assert on_disk == manifest and manifest["files"] == ["model.onnx", "model.int8.onnx"]
    assert manifest["onnx"]["max_abs_logit_diff"] <= 1e-4
    assert len(manifest["weights"]["sha256"]) == 64
    # the run's marker owns the export, so a later run in this folder replaces it with the rest
    assert "onnx" in json.loads((folder / ".finetune-bert").read_text())["files"]


def test_onnx_logits_equal_torch_within_1e_4(exported):
    from finetune_bert import load
    folder, _ = exported
    for reading in ({}, {"reading": __import__("finetune_bert").Reading(long_texts="truncate")}):
        torch_logits, _ = load(str(folder), backend="torch-fp32", **reading).scored(TEXTS)
        onnx_clf = load(str(folder), backend="onnx", **reading)
        assert onnx_clf.backend == "onnx" and onnx_clf.model is None
        onnx_logits, _ = onnx_clf.scored(TEXTS)
        assert np.abs(onnx_logits - torch_logits).max() <= 1e-4


def test_int8_agreement_is_measured_not_assumed(exported, toy_data):
    from finetune_bert import load
    folder, manifest = exported
    assert 0 <= manifest["onnx-int8"]["label_agreement"] <= 1 and manifest["onnx-int8"]["max_abs_prob_diff"] >= 0
    texts = [r["text"] for r in csv.DictReader(open(toy_data["test"]))]
    fp32 = load(str(folder), backend="torch-fp32").predict_proba(texts)
    int8 = load(str(folder), backend="onnx-int8").predict_proba(texts)
    assert int8.shape == fp32.shape and np.allclose(int8.sum(1), 1, atol=1e-5)
    assert not np.array_equal(int8, fp32)  # a real int8 graph, not the fp32 one under another name
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.9


def test_export_checks_on_data_when_given(trained, toy_data, tmp_path):
    from finetune_bert.export.onnx import describe, export
    folder = tmp_path / "model"
    shutil.copytree(trained.output, folder)
    manifest = export(str(folder), data=str(toy_data["test"]), rows=20)
    seen = manifest["on_data"]
    assert seen["rows"] == 20 and seen["backends"]["onnx"]["label_agreement"] == 1.0
    assert seen["backends"]["onnx"]["accuracy"] == seen["torch_accuracy"]
    assert "agrees with torch on 100.00%" in describe(manifest, str(folder))


def test_the_default_backend_is_torch_even_beside_an_export(exported):
    from finetune_bert import load
    folder, _ = exported
    assert load(str(folder), device="cpu").backend == "torch"
    assert load(str(folder), device="cpu", backend="torch-fp32").backend == "torch-fp32"


def test_a_copied_folder_keeps_its_export(exported, tmp_path):
    from finetune_bert import load
    folder, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, copy_function=shutil.copy)  # new mtimes, same bytes: the hash decides
    assert load(str(copy), backend="onnx").backend == "onnx"


def test_an_export_older_than_the_weights_is_refused(exported, tmp_path):
    from finetune_bert import load
    folder, _ = exported
    stale = tmp_path / "stale"
    shutil.copytree(folder, stale)
    weights = stale / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # retrained: other weights of the same size
    weights.write_bytes(bytes(data))
    for backend in ("onnx", "onnx-int8"):
        with pytest.raises(UserError, match="made from other weights.*finetune-bert export --model"):
            load(str(stale), device="cpu", backend=backend)


def test_backend_onnx_without_an_export_names_the_export_command(trained, capsys):
    from finetune_bert.cli.main import main
    assert main(["predict", "--model", trained.output, "--backend", "onnx", "good"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"finetune-bert export --model {trained.output} --format onnx" in err
    assert main(["predict", "--model", trained.output, "--backend", "onnx-int8", "good"]) == 2
    assert "--quantize int8" in capsys.readouterr().err


def test_backend_switch_on_predict_and_evaluate(exported, toy_data, tmp_path, capsys):
    from finetune_bert.cli.main import main
    folder, _ = exported
    results = {}
    for backend in ("torch-fp32", "onnx", "onnx-int8"):
        out = tmp_path / f"{backend}.csv"
        assert main(["predict", "--model", str(folder), "--input", str(toy_data["test"]), "--output", str(out),
                     "--backend", backend]) == 0
        results[backend] = [float(r["prob_positive"]) for r in csv.DictReader(out.open())]
        metrics = tmp_path / f"{backend}.json"
        assert main(["evaluate", "--model", str(folder), "--data", str(toy_data["test"]), "--output", str(metrics),
                     "--backend", backend]) == 0
        assert json.loads(metrics.read_text())["backend"] == backend
    capsys.readouterr()
    assert np.abs(np.array(results["onnx"]) - np.array(results["torch-fp32"])).max() <= 1e-5  # 6 decimals written
    assert json.loads((tmp_path / "onnx.json").read_text())["accuracy"] == \
        json.loads((tmp_path / "torch-fp32.json").read_text())["accuracy"]


def test_backend_switch_on_the_server(exported):
    from fastapi.testclient import TestClient

    from finetune_bert.serving.app import create_app
    folder, _ = exported
    with TestClient(create_app(str(folder), backend="onnx")) as client:
        assert client.get("/info").json()["backend"] == "onnx"
        answer = client.post("/predict", json={"inputs": "a good and wonderful film"})
        assert answer.status_code == 200 and answer.json()[0]["label"] in ("positive", "negative")


def test_export_of_a_folder_that_is_not_a_model(tmp_path, capsys):
    from finetune_bert.cli.main import main
    (tmp_path / "notes.txt").write_text("not a model")
    for model in (str(tmp_path), str(tmp_path / "missing"), "some-org/some-model"):
        assert main(["export", "--model", model]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err and "--model" in err
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]  # nothing written


def test_export_bad_options_are_reported_together(trained, capsys):
    from finetune_bert.cli.main import main
    assert main(["export", "--model", trained.output, "--format", "tflite", "--data", "x.csv", "--rows", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--format must be one of onnx" in err and "--rows" in err


def test_a_damaged_export_is_one_line(exported, tmp_path, capsys):
    from finetune_bert.cli.main import main
    folder, _ = exported
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "onnx" / "model.onnx").write_bytes(b"\x00not onnx")
    assert main(["predict", "--model", str(broken), "--backend", "onnx", "good"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be loaded by onnxruntime" in err and "run the export again" in err


def test_predict_through_onnx_imports_neither_torch_nor_transformers(exported, toy_data, tmp_path):
    """The ONNX path's start-up: the export holds the config and a checked tokenizer (issue 20)."""
    import subprocess
    import sys
    folder, manifest = exported
    assert manifest["tokenizer"]["file"] == "tokenizer.json" and manifest["config"]["num_labels"] == 2
    out = tmp_path / "lean.csv"
    probe = ("import sys\nfrom finetune_bert.cli.main import main\n"
             f"code = main(['predict', '--model', {str(folder)!r}, '--input', {str(toy_data['test'])!r}, "
             f"'--output', {str(out)!r}, '--backend', 'onnx'])\n"
             "print('LOADED', sorted(m for m in ('torch', 'transformers') if m in sys.modules))\nsys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
    from finetune_bert import load
    reference = load(str(folder), backend="torch-fp32")
    rows = list(csv.DictReader(out.open()))
    expected = reference.predict_proba([r["text"] for r in rows])
    got = np.array([[float(r[f"prob_{n}"]) for n in reference.label_names] for r in rows])
    assert np.abs(got - expected).max() <= 1e-4


def test_a_config_changed_since_the_export_is_read_again(exported, tmp_path):
    """Label names edited in config.json after the export: the export's copy of the config is stale, so
    the folder's config is read through transformers, never the old names."""
    from finetune_bert import load
    from finetune_bert.engine.onnx_engine import standalone
    folder = tmp_path / "model"
    shutil.copytree(exported[0], folder)
    assert standalone(folder) is not None
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "bad", "1": "good"}
    config["label2id"] = {"bad": 0, "good": 1}
    (folder / "config.json").write_text(json.dumps(config))
    assert standalone(folder) is None
    assert load(str(folder), backend="onnx").label_names == ["bad", "good"]


def test_an_export_without_the_standalone_parts_still_loads(exported, tmp_path):
    """An export made before the manifest held the config and tokenizer: read through transformers."""
    from finetune_bert import load
    folder = tmp_path / "model"
    shutil.copytree(exported[0], folder)
    manifest = json.loads((folder / "onnx" / "export.json").read_text())
    for key in ("tokenizer", "config", "sources"):
        manifest.pop(key)
    (folder / "onnx" / "export.json").write_text(json.dumps(manifest))
    (folder / "onnx" / "tokenizer.json").unlink()
    old = load(str(folder), backend="onnx")
    assert type(old.tokenizer).__name__ != "TokenizerFile"
    new = load(str(exported[0]), backend="onnx")
    assert type(new.tokenizer).__name__ == "TokenizerFile"
    assert np.abs(old.predict_proba(TEXTS) - new.predict_proba(TEXTS)).max() <= 1e-6


def test_the_graph_masks_attention_by_addition(exported):
    """Traced through SDPA, the mask became Where/IsNaN over every (batch, head, query, key) score in every
    layer (MiniLM: 15 Where, 6 IsNaN), 37% of int8 inference time on IMDB. The export traces eager attention
    (an added mask) through the fast path: the mask is built once, with two Where, and added in each layer."""
    import collections

    import onnx
    ops = collections.Counter(node.op_type for node in onnx.load(str(exported[0] / "onnx" / "model.onnx")).graph.node)
    assert ops["IsNaN"] == 0 and ops["Where"] <= 2, ops


@pytest.mark.parametrize("damage", ["truncated tokenizer", "edited tokenizer", "manifest without a key"])
def test_a_damaged_standalone_part_falls_back_to_the_folders_own_files(exported, tmp_path, damage):
    from finetune_bert import load
    from finetune_bert.engine.onnx_engine import standalone
    folder = tmp_path / "model"
    shutil.copytree(exported[0], folder)
    saved = folder / "onnx" / "tokenizer.json"
    if damage == "truncated tokenizer":
        saved.write_bytes(saved.read_bytes()[:100])
    elif damage == "edited tokenizer":  # valid JSON, another vocabulary: only its hash tells
        saved.write_text(saved.read_text().replace('"[UNK]"', '"[UNKNOWN]"', 1))
    else:
        manifest = json.loads((folder / "onnx" / "export.json").read_text())
        del manifest["tokenizer"]["pad_token_id"]
        (folder / "onnx" / "export.json").write_text(json.dumps(manifest))
    assert standalone(folder) is None
    clf = load(str(folder), backend="onnx")
    assert type(clf.tokenizer).__name__ != "TokenizerFile"
    reference = load(str(exported[0]), backend="onnx")
    assert np.abs(clf.predict_proba(TEXTS) - reference.predict_proba(TEXTS)).max() <= 1e-6


def test_export_resolves_the_model_once_even_checking_on_data(trained, toy_data, tmp_path, monkeypatch):
    """export loads the model three times over (torch for the graph, then each backend on --data), from the
    one ModelFolder opened where the argument entered."""
    from finetune_bert.engine import model_folder
    from finetune_bert.export.config import ExportConfig
    from finetune_bert.export.onnx import export

    folder = tmp_path / "model"
    shutil.copytree(trained.output, folder)
    calls, resolve = [], model_folder.resolve
    monkeypatch.setattr(model_folder, "resolve", lambda name: calls.append(name) or resolve(name))
    export(ExportConfig(model=str(folder), data=str(toy_data["test"]), rows=10))
    assert calls == [str(folder)]
