"""--report-to: runs read back from real MLflow stores (a SQLite store in the output folder, a real `mlflow server`)
and from W&B's offline run file; a missing library refused before anything; a tracker that fails mid-run is one
warning and the run goes on; tune's trials nested under the study's run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import wandb_items, wandb_records
from serving.processes import free_port
from finetune_bert import faults
from finetune_bert.errors import TrainingInterrupted

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """The trackers' own environment variables of whoever runs the tests do not choose the tests' stores."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    yield
    faults.configure("")


def _train(tiny_model, toy_data, out, **kw):
    from finetune_bert import train
    # 144 training rows in steps of 16: 9 steps an epoch, 18 in all; a log record every 5 steps and at the end
    return train(**{**dict(data=str(toy_data["train"]), test_data=str(toy_data["test"]), model=str(tiny_model),
                           output=str(out), epochs=2, batch_size=16, lr=1e-2, max_length=32, seed=0, log_every=5,
                           report=False, export=False), **kw})


def _log(out: Path, event: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if r["event"] == event]


def _runs(uri: str):
    """Every run in the store, through mlflow.search_runs (a pandas frame: params.*, metrics.*, tags.*)."""
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(search_all_experiments=True)
    finally:
        mlflow.set_tracking_uri(None)


def _history(client, run_id: str, name: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)]


def test_mlflow_logs_a_run_to_a_store_in_the_output_folder_continued_by_resume(tiny_model, toy_data, tmp_path):
    from mlflow.tracking import MlflowClient
    out = tmp_path / "o"
    # 6 epochs: the model learns the task, so the report explains few mistakes (each is seconds of gradients)
    learns = dict(report_to="mlflow", report=True, epochs=6, warmup_ratio=0.05)
    faults.configure("int@step:5")  # Ctrl-C after step 5: the run is saved and stops
    with pytest.raises(TrainingInterrupted):
        _train(tiny_model, toy_data, out, **learns)
    uri = f"sqlite:///{out / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = json.loads((out / "tracking.json").read_text())["mlflow"]
    assert client.get_run(run_id).info.status == "KILLED"
    result = _train(tiny_model, toy_data, out, resume=True, **learns)

    runs = _runs(uri)
    assert list(runs["run_id"]) == [run_id] and runs["status"][0] == "FINISHED"  # the same run, continued
    config = {**json.loads((out / "run_config.json").read_text()), "resume": False}  # the options it started with
    assert {k: runs[f"params.{k}"][0] for k in config} == {k: str(v) for k, v in config.items()}
    trained = {r["step"]: r for r in _log(out, "train")}
    assert [s for s, _ in _history(client, run_id, "train/loss")] == sorted(trained)
    assert sorted(trained)[:2] == [5, 10] and sorted(trained)[-1] == 54
    for step, value in _history(client, run_id, "train/lr"):
        assert value == pytest.approx(trained[step]["lr"])
    assert [s for s, _ in _history(client, run_id, "train/tokens_per_s")] == sorted(trained)
    assert _history(client, run_id, "eval/accuracy") == [(r["step"], r["accuracy"]) for r in _log(out, "eval")]
    metrics = client.get_run(run_id).data.metrics
    assert metrics["test/accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])
    assert metrics["validation/f1_macro"] == pytest.approx(result.metrics["validation"]["f1_macro"])
    assert "calibration/test/after/ece" in metrics and "test/per_class/positive/f1" in metrics
    assert {a.path for a in client.list_artifacts(run_id)} == {"report.html", "README.md", "metrics.json"}
    copy = Path(client.download_artifacts(run_id, "report.html", str(tmp_path)))
    assert copy.read_bytes() == (out / "report.html").read_bytes()
    marker = json.loads((out / ".finetune-bert").read_text())["files"]
    assert "mlruns" in marker and "tracking.json" in marker

    # --overwrite: the folder's store is ours, so no refusal; the new run is a run of its own beside the old one
    _train(tiny_model, toy_data, out, report_to="mlflow", overwrite=True, lr=5e-3)
    runs = _runs(uri)
    assert len(runs) == 2 and set(runs["params.lr"]) == {"0.01", "0.005"}


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (a free port), its store a SQLite file of its own; `.stop()` stops it
    (whatever is left running is stopped after the test). Skipped, with the reason, if it cannot start.

    The store is made in memory-backed /dev/shm where there is one: creating MLflow's schema is some forty
    migrations, each a synced commit (6 s on this disk, 1 s there); its job runner (a pool of processes for
    MLflow's GenAI jobs) is off, as a tracking server needs none."""
    port = free_port()
    folder = Path(tempfile.mkdtemp(dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else tmp_path))
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                                "--artifacts-destination", str(folder / "artifacts")],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder,
                               env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})

    class Server:
        uri, store = f"http://127.0.0.1:{port}", f"sqlite:///{folder / 'mlflow.db'}"

        @staticmethod
        def stop() -> None:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()

    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{Server.uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.time() > deadline:
            Server.stop()
            shutil.rmtree(folder, ignore_errors=True)
            tail = (tmp_path / "server.log").read_text()[-500:]
            pytest.skip(f"mlflow server did not start on port {port}: {tail}")
        time.sleep(0.25)
    try:
        yield Server
    finally:
        Server.stop()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_real_mlflow_server_gets_the_run_and_a_server_gone_mid_run_is_one_warning(
        tiny_model, toy_data, tmp_path, mlflow_server, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient
    from finetune_bert.training import loop
    _train(tiny_model, toy_data, tmp_path / "a", report_to="mlflow", mlflow_uri=mlflow_server.uri)
    client = MlflowClient(mlflow_server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("finetune-bert").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "a" and run.data.params["lr"] == "0.01"
    assert [s for s, _ in _history(client, run.info.run_id, "train/loss")] == [5, 10, 15, 18]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"README.md", "metrics.json"}
    assert not (tmp_path / "a" / "mlruns").exists()
    capsys.readouterr()

    validate = loop._validate

    def then_stop_the_server(job):  # the first validation is logged, then the server is gone
        validate(job)
        mlflow_server.stop()
    monkeypatch.setattr(loop, "_validate", then_stop_the_server)
    result = _train(tiny_model, toy_data, tmp_path / "b", report_to="mlflow", mlflow_uri=mlflow_server.uri)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "MLflow failed" in line]
    assert len(warnings) == 1 and "at step 10" in warnings[0] and "the run goes on" in warnings[0], warnings
    assert result.metrics["test"]["n"] == 40 and (tmp_path / "b" / "metrics.json").is_file()
    stored = MlflowClient(mlflow_server.store)  # the server's own database, read with the server down
    (gone,) = [r for r in stored.search_runs([run.info.experiment_id]) if r.info.run_name == "b"]
    assert [s for s, _ in _history(stored, gone.info.run_id, "train/loss")] == [5]
    assert [s for s, _ in _history(stored, gone.info.run_id, "eval/accuracy")] == [9]


def test_tune_logs_each_trial_as_a_run_nested_in_the_studys(tiny_model, toy_data, tmp_path):
    from mlflow.tracking import MlflowClient
    from finetune_bert.tuning.search import tune
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"lr": {"choices": [0.01, 0.02]}}))
    out = tmp_path / "study"
    options = dict(data=str(toy_data["train"]), model=str(tiny_model), output=str(out), space=str(space), epochs=1,
                   batch_size=16, max_length=32, seed=0, confirm_seeds=0, export=False, report=False,
                   report_to="mlflow")
    tune(**options, trials=1)
    tune(**options, trials=2)  # the study continued: its run too, and the folder's store is no stranger to it
    runs = _runs(f"sqlite:///{out / 'mlruns' / 'mlflow.db'}")
    (study,) = runs[runs["tags.finetune_bert.role"] == "study"]["run_id"]
    trials = runs[runs["tags.finetune_bert.role"] == "trial"]
    assert len(runs) == 3 and set(trials["tags.mlflow.parentRunId"]) == {study}
    assert set(trials["tags.mlflow.runName"]) == {"trial-0000", "trial-0001"}
    assert trials["metrics.train/loss"].notna().all() and trials["metrics.eval/accuracy"].notna().all()
    client = MlflowClient(f"sqlite:///{out / 'mlruns' / 'mlflow.db'}")
    best = json.loads((out / "best.json").read_text())
    assert client.get_run(study).data.metrics["best/value"] == pytest.approx(best["value"])
    assert {"tune_report.md", "trials.csv", "best_config.json"} <= {a.path for a in client.list_artifacts(study)}
    assert client.get_run(study).data.params["trials"] == "1"  # the options it started with: MLflow keeps them


def test_wandb_offline_run_holds_the_config_each_step_the_final_metrics_and_the_files(tiny_model, toy_data,
                                                                                    tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "o"
    result = _train(tiny_model, toy_data, out, report_to="wandb")
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    records = list(wandb_records(next(run_dir.glob("run-*.wandb"))))
    (run,) = [r.run for r in records if r.HasField("run")]
    assert run.display_name == "o" and run.project == "finetune-bert"
    config = wandb_items(run.config.update)
    assert {k: v for k, v in config.items() if k != "_wandb"} == json.loads((out / "run_config.json").read_text())
    history = [wandb_items(r.history.item) for r in records if r.HasField("history")]
    losses = [(h["step"], h["train/loss"]) for h in history if "train/loss" in h]
    assert losses == [(r["step"], pytest.approx(r["loss"])) for r in _log(out, "train")]
    summary = {}
    for r in records:
        if r.HasField("summary"):
            summary.update(wandb_items(r.summary.update))
    assert summary["test/accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])
    saved = {f.path for r in records if r.HasField("files") for f in r.files.files}
    assert {"README.md", "metrics.json"} <= saved and (run_dir / "files" / "README.md").is_file()
    assert not (out / "tensorboard").exists()  # not asked for: --report-to names every tracker used
    assert json.loads((out / "tracking.json").read_text()) == {"wandb": run.run_id}


@pytest.mark.parametrize("tracker,extra", [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_missing_tracker_library_is_one_line_before_anything_is_read_or_written(tiny_model, tmp_path, monkeypatch,
                                                                                 capsys, tracker, extra):
    from finetune_bert.cli.main import main
    monkeypatch.setitem(sys.modules, tracker, None)  # what `import` does for a package that is not installed
    out = tmp_path / "o"
    code = main(["train", "--data", str(tmp_path / "never-read.csv"), "--model", str(tiny_model), "--output", str(out),
                 "--report-to", f"tensorboard,{tracker}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and not out.exists(), err
    assert f"--report-to {tracker} needs" in err[0] and f"pip install 'finetune-bert[{extra}]'" in err[0]


def test_report_to_mistakes_are_refused_all_at_once(tmp_path):
    from finetune_bert.training.config import TrainConfig
    base = dict(data="d.csv", output=str(tmp_path / "o"))
    said = "; ".join(TrainConfig(**base, report_to="mlflow,comet").problems())
    assert "--report-to: no tracker named comet; choose none, or some of tensorboard, mlflow, wandb" in said
    said = "; ".join(TrainConfig(**base, report_to="none,mlflow").problems())
    assert "--report-to none means no tracker" in said
    said = "; ".join(TrainConfig(**base, report_to="none", mlflow_uri="http://127.0.0.1:5000").problems())
    assert "--mlflow-uri says where MLflow logs: add mlflow to --report-to" in said


def test_online_wandb_without_an_api_key_is_refused_before_training(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from finetune_bert.training.config import TrainConfig
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    monkeypatch.setenv("WANDB_MODE", "online")
    said = TrainConfig(data="d.csv", output=str(tmp_path / "o"), report_to="wandb").problems()
    assert any("no W&B API key here; run `wandb login` or set WANDB_API_KEY, or log offline with WANDB_MODE=offline"
               in line for line in said), said
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert not TrainConfig(data="d.csv", output=str(tmp_path / "o"), report_to="wandb").problems()
