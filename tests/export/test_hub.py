"""`push` and `train --push-to-hub`: what goes up, and every refusal before the network (the upload itself needs
the hub, which no test here reaches: its failure is met through a port that refuses connections)."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_bert.errors import UserError
from finetune_bert.export.hub import folder_plan, push, staged, upload_plan

MODEL = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "README.md",
         "finetune_bert.json", "metrics.json", "report.html", "data_report.json", "data_report.txt"]


def test_the_plan_takes_the_model_and_leaves_checkpoints_logs_and_our_own_files():
    names = [*MODEL, "model-00001-of-00002.safetensors", "checkpoints/step-0000009/model.safetensors",
             "tensorboard/events.out.tfevents.1", "mlruns/0/meta.yaml", ".finetune-bert", ".finetune-bert.lock",
             ".saving/model.safetensors", ".metrics.json.123.tmp", "run_config.json", "train_log.jsonl",
             "seen_texts.txt", "skipped_rows.csv", "onnx/model.onnx", "onnx/export.json", "notes/todo.txt"]
    plan = upload_plan(names, export=(), export_note="its ONNX export is older than the weights")
    assert set(plan.files) == {*MODEL, "model-00001-of-00002.safetensors"}
    left = dict(plan.left_out)
    assert set(left) == {"checkpoints/", "tensorboard/", "mlruns/", ".finetune-bert", ".finetune-bert.lock", ".saving/",
                         ".metrics.json.123.tmp", "run_config.json", "train_log.jsonl", "seen_texts.txt",
                         "skipped_rows.csv", "onnx/", "notes/"}
    assert left["onnx/"] == "its ONNX export is older than the weights" and "local paths" in left["run_config.json"]
    current = upload_plan(names, export={"model.onnx", "export.json"})
    assert {"onnx/model.onnx", "onnx/export.json"} <= set(current.files) and "onnx/" not in dict(current.left_out)


def test_an_onnx_export_goes_up_only_while_it_is_the_weights_own(trained, tmp_path):
    from finetune_bert.console import console
    from finetune_bert.training.exported import write_export

    folder = tmp_path / "model"
    shutil.copytree(trained.output, folder)
    with console.quiet():
        assert write_export(folder)["written"]
    plan = folder_plan(folder)
    assert {"onnx/model.onnx", "onnx/export.json", "model.safetensors", "README.md"} <= set(plan.files)
    weights = bytearray((folder / "model.safetensors").read_bytes())
    weights[-1] ^= 1  # retrained since the export
    (folder / "model.safetensors").write_bytes(bytes(weights))
    plan = folder_plan(folder)
    assert not [f for f in plan.files if f.startswith("onnx/")] and "model.safetensors" in plan.files
    assert "older than the weights" in dict(plan.left_out)["onnx/"]


def test_what_goes_up_names_the_runs_files_without_their_local_paths(trained, toy_data, tiny_model, tmp_path):
    """The reports name the data by the path it was given; on the hub that would tell where it lay here."""
    import json

    folder = tmp_path / "model"
    shutil.copytree(trained.output, folder)
    plan = folder_plan(folder)
    local = [str(toy_data["train"].parent), str(tiny_model), str(Path(trained.output).parent)]
    named = [n for n in plan.files if any(p in (folder / n).read_text(errors="replace") for p in local)]
    assert {"data_report.json", "data_report.txt"} <= set(named)  # else this test would test nothing
    with staged(folder, plan) as stage:
        assert sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file()) == sorted(plan.files)
        for name in plan.files:
            text = (stage / name).read_bytes().decode("utf-8", "replace")
            assert not [p for p in local if p in text], name
        report = json.loads((stage / "data_report.json").read_text())
        assert "train.csv" in json.dumps(report) and "test.csv" in json.dumps(report)
        assert (stage / "model.safetensors").stat().st_ino == (folder / "model.safetensors").stat().st_ino
    assert not stage.exists() and folder_plan(folder) == plan  # gone, and the folder as it was
    assert str(toy_data["train"]) in (folder / "data_report.txt").read_text()


def test_push_refuses_a_folder_that_is_not_a_finished_run(trained, tmp_path):
    with pytest.raises(UserError, match="not a model folder"):
        push(str(tmp_path), "me/x")
    (tmp_path / "theirs").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(trained.output) / name, tmp_path / "theirs")
    with pytest.raises(UserError, match="no finetune_bert.json.*hf upload"):
        push(str(tmp_path / "theirs"), "me/x")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(trained.output, unfinished)
    (unfinished / "metrics.json").unlink()
    with pytest.raises(UserError, match="has not finished"):
        push(str(unfinished), "me/x")


def _closed_port() -> tuple[socket.socket, str]:
    """A local address that refuses connections at once: bound, never listening."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    return held, f"http://127.0.0.1:{held.getsockname()[1]}"


def _push(folder: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HOME", "HF_HUB_OFFLINE")}
    return subprocess.run([sys.executable, "-m", "finetune_bert.cli", "push", folder, "me/x"], capture_output=True,
                          text=True, env={**base, **env}, timeout=120)


def test_push_without_a_token_or_offline_or_unreachable_is_one_line_and_exit_2(trained, tmp_path):
    home = tmp_path / "hf-home"
    home.mkdir()
    done = _push(trained.output, HF_HOME=str(home), HF_HUB_OFFLINE="0")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "no Hugging Face token; set HF_TOKEN, or log in once with `hf auth login`" in done.stderr
    done = _push(trained.output, HF_HOME=str(home), HF_HUB_OFFLINE="1", HF_TOKEN="hf_test")
    assert done.returncode == 2 and "offline here (HF_HUB_OFFLINE is set)" in done.stderr
    (home / "token").write_text("hf_test")  # where `hf auth login` keeps it: huggingface_hub finds it there
    held, address = _closed_port()
    with held:
        done = _push(trained.output, HF_HOME=str(home), HF_HUB_OFFLINE="0", HF_ENDPOINT=address)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert f"{trained.output} was not pushed to me/x: ConnectError" in done.stderr
    assert "uploading" in done.stdout and "checkpoints/" not in done.stdout.split("left out")[0]


def test_train_push_to_hub_is_checked_first_and_a_failed_push_keeps_the_model(tiny_model, toy_data, tmp_path,
                                                                              monkeypatch):
    from huggingface_hub import constants

    from finetune_bert import TuneConfig, train

    options = dict(data=str(toy_data["train"]), test_data=str(toy_data["test"]), model=str(tiny_model), epochs=1,
                   batch_size=16, max_length=32, export=False, report=False, push_to_hub="me/reviews")
    with pytest.raises(UserError, match="offline here"):  # before any training: nothing written
        train(output=str(tmp_path / "first"), **options)
    assert not (tmp_path / "first").exists()
    assert any("--push-to-hub is train's" in p for p in TuneConfig(output=str(tmp_path / "t"), **options).problems())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    held, address = _closed_port()
    monkeypatch.setattr(constants, "ENDPOINT", address)
    out = tmp_path / "model"
    with held, pytest.raises(UserError) as failed:
        train(output=str(out), **options)
    assert str(failed.value).startswith(f"the model is saved in {out}, but pushing it to me/reviews failed")
    assert str(failed.value).endswith(f"Push it later with: finetune-bert push {out} me/reviews")
    assert (out / "metrics.json").is_file() and 'model="me/reviews"' in (out / "README.md").read_text()
