"""`finetune-bert train --nproc-per-node N`: every problem found before a process starts, signals passed on,
and the end said in one line with one exit code."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch

from finetune_bert.training import launch
from finetune_bert.errors import Reported, UserError
from conftest import PYTHON, _args, _env


def test_bad_input_is_one_line_and_exit_2_before_any_process_starts(tiny_model, toy_data, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\ngood film,positive\n,negative\n")
    args = _args(tiny_model, {"train": bad, "test": toy_data["test"]}, tmp_path / "o")
    done = subprocess.run([PYTHON, "-m", "finetune_bert", *args, "--nproc-per-node", "2"], text=True,
                          capture_output=True, env=_env(), timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad.csv" in lines[0] and "row" in lines[0]
    assert "training " not in done.stdout and not (tmp_path / "o").exists()


def test_bad_options_are_refused_all_at_once(tiny_model, toy_data, tmp_path):
    args = _args(tiny_model, toy_data, tmp_path / "o", lr="-1")
    done = subprocess.run([PYTHON, "-m", "finetune_bert", *args, "--nproc-per-node", "0"], text=True,
                          capture_output=True, env=_env(), timeout=120)
    assert done.returncode == 2 and "--nproc-per-node" in done.stderr and "--lr" in done.stderr


def test_sigterm_to_the_launcher_stops_every_rank_at_the_same_step_after_its_checkpoint(tiny_model, toy_data,
                                                                                       tmp_path):
    out = tmp_path / "o"
    # each step from 5 on sleeps a second on both ranks: time to send the signal mid-run
    slow = ",".join(f"slow@step:{s}" for s in range(5, 30))
    env = _env(FINETUNE_BERT_FAULTS=slow)
    job = subprocess.Popen([PYTHON, "-m", "finetune_bert", *_args(tiny_model, toy_data, out), "--nproc-per-node", "2"],
                           text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step-0000004").is_dir() and time.time() < deadline:
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM)
    stdout, stderr = job.communicate(timeout=120)
    assert job.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "stopped by SIGTERM" in stderr and "--resume" in stderr
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved[-1] != "step-0000004" and len(saved) == 2  # one more, at the step where every rank stopped
    rng = torch.load(out / "checkpoints" / saved[-1] / "rng.pt", weights_only=True)
    assert len(rng["ranks"]) == 2
    step = int(saved[-1].split("-")[1])
    assert f"stopped at step {step}" in stderr


def test_tune_refuses_several_processes(tiny_model, toy_data, tmp_path):
    from finetune_bert import tune
    with pytest.raises(UserError, match="--nproc-per-node is for train"):
        tune(data=str(toy_data["train"]), model=str(tiny_model), output=str(tmp_path / "t"), nproc_per_node=2)


@pytest.mark.parametrize("codes, expected", [
    ({0: 130, 1: 130}, Reported(130)),
    ({0: -signal.SIGTERM, 1: 130}, Reported(130)),  # torchrun stopped rank 0 as it was leaving after the save
    ({0: 2, 1: 1}, Reported(2)),
    ({0: -signal.SIGTERM, 1: -signal.SIGKILL}, "training stopped: rank 1 was killed by SIGKILL;"),
    ({0: 1, 1: 1}, "training stopped: rank 0, 1 failed (see above);"),
    ({0: 0, 1: 3}, "training: rank 1 exited with code 3 after rank 0 had finished; the model, its metrics"),
    ({0: 0, 1: -signal.SIGABRT}, "training: rank 1 was killed by SIGABRT after rank 0 had finished;"),
])
def test_the_training_processes_end_becomes_one_exit_code(codes, expected):
    """Rank 0 ends well only after the job's results are written: a later failure says they are whole, not
    that the run should be resumed."""
    failure = launch._failure(codes)
    if isinstance(expected, Reported):
        assert isinstance(failure, Reported) and failure.exit_code == expected.exit_code
    else:
        assert isinstance(failure, launch.TrainingFailed) and failure.exit_code == 1
        assert str(failure).startswith(expected)
        assert ("--resume" in str(failure)) == (codes[0] != 0)


def test_python_train_with_several_processes_goes_through_the_launcher(monkeypatch, tiny_model, toy_data, tmp_path):
    seen = {}
    monkeypatch.setattr(launch, "launch", lambda cfg: seen.setdefault("cfg", cfg))
    from finetune_bert import train
    train(data=str(toy_data["train"]), model=str(tiny_model), output=str(tmp_path / "o"), nproc_per_node=2)
    assert seen["cfg"].nproc_per_node == 2



def test_more_processes_than_gpus_is_refused_before_anything_starts(monkeypatch, tiny_model, toy_data, tmp_path):
    from finetune_bert.training.config import TrainConfig
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = TrainConfig(data=str(toy_data["train"]), model=str(tiny_model), output=str(tmp_path / "o"), nproc_per_node=2)
    with pytest.raises(UserError, match="2 processes on this machine, but it has 1 GPU"):
        launch.launch(cfg)
    assert not (tmp_path / "o").exists()


def test_more_processes_than_cpu_cores_without_a_gpu_is_refused_unless_forced(tiny_model, toy_data, tmp_path,
                                                                               monkeypatch):
    import os

    from finetune_bert.engine import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cores = os.cpu_count() or 1
    with pytest.raises(UserError, match=f"--nproc-per-node {cores + 1}: more processes than this machine's {cores} "
                                        "CPU cores.*--force"):
        distributed.check_gpus(cores + 1)
    distributed.check_gpus(cores + 1, force=True)
    distributed.check_gpus(cores)
    done = subprocess.run([PYTHON, "-m", "finetune_bert", *_args(tiny_model, toy_data, tmp_path / "o"),
                           "--nproc-per-node", str(cores * 32)], capture_output=True, text=True, env=_env())
    assert done.returncode == 2 and "more processes than this machine's" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "o").exists()
