"""`finetune-bert prune`: a fine-tuned model's first layers as a new ordinary folder that predicts, with the input
folder left byte for byte as it was; refusals in one line; a brief fine-tune with --data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pruned(trained, tmp_path_factory):
    from finetune_bert import prune
    from finetune_bert.console import console

    before = _digests(Path(trained.output))
    out = tmp_path_factory.mktemp("pruned") / "model"
    with console.quiet():
        result = prune(model=trained.output, keep_layers=1, output=str(out))
    assert _digests(Path(trained.output)) == before  # the input, byte for byte
    return out, result


def test_the_pruned_model_has_the_first_layers_and_predicts(pruned, trained, toy_data):
    from transformers import pipeline

    from finetune_bert import load

    out, result = pruned
    assert result.kept == [0] and result.layers == 2
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    source, ours = load_file(str(Path(trained.output) / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert not any(".layer.1." in k for k in ours) and set(ours) == {k for k in source if ".layer.1." not in k}
    assert all(torch.equal(ours[k], source[k]) for k in ours)  # layer 0, embeddings and head as they were
    assert (out / "finetune_bert.json").read_text() == (Path(trained.output) / "finetune_bert.json").read_text()
    assert json.loads((out / "prune.json").read_text())["kept"] == [1]
    assert (out / "seen_texts.txt").is_file() and not (out / "metrics.json").exists()
    clf = load(out, device="cpu", backend="torch-fp32")
    texts = ["a wonderful film", "the plot was dull"]
    assert [p.label in ("negative", "positive") for p in clf.predict(texts)] == [True, True]
    answer = pipeline("text-classification", model=str(out), device="cpu")(texts)
    assert {a["label"] for a in answer} <= {"negative", "positive"}


@pytest.mark.parametrize("argv, problem", [
    (["--keep-layers", "2"], "--keep-layers 2: {model} has 2 encoder layers; keep fewer (1 to 1)"),
    (["--keep-layers", "0"], "--keep-layers must be at least 1, got 0"),
    (["--keep-layers", "1", "--lr", "1e-3"], "--lr: training options, and nothing is trained without --data"),
])
def test_refusals_are_one_line(trained, tmp_path, capsys, argv, problem):
    from finetune_bert.cli.main import main

    code = main(["prune", "--model", trained.output, "--output", str(tmp_path / "p"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and problem.format(model=trained.output) in err, err
    assert not (tmp_path / "p").exists()


def test_an_output_that_is_the_input_is_refused(trained, capsys):
    from finetune_bert.cli.main import main

    before = _digests(Path(trained.output))
    assert main(["prune", "--model", trained.output, "--output", trained.output, "--keep-layers", "1"]) == 2
    assert "is or lies inside the --model folder" in capsys.readouterr().err
    assert _digests(Path(trained.output)) == before


def test_with_data_the_pruned_model_is_fine_tuned_as_train_does(trained, toy_data, tmp_path):
    from finetune_bert import prune
    from finetune_bert.console import console

    with console.quiet():
        result = prune(model=trained.output, keep_layers=1, output=str(tmp_path / "p"), data=str(toy_data["train"]),
                       test_data=str(toy_data["test"]), lr=3e-3, max_length=32, seed=0, report=False, bf16=False)
    assert result.trained is not None and result.trained.metrics["test"]["accuracy"] >= 0.8
    assert json.loads((tmp_path / "p" / "config.json").read_text())["num_hidden_layers"] == 1
    assert json.loads((tmp_path / "p" / "prune.json").read_text())["fine_tuned_on"] == str(toy_data["train"])
