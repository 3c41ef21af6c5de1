"""Crash safety: exact resume after SIGKILL, atomic checkpoints, Ctrl-C, OOM backoff, NaN guard, safe loading."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import same_update_tolerance
from finetune_bert import faults
from finetune_bert.errors import TrainingInterrupted, UserError


@pytest.fixture(scope="module")
def dropout_model(tmp_path_factory):
    """Like tiny_model but with dropout on, so an exact resume must restore the RNG too."""
    from conftest import make_tiny_bert
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-dropout"), dropout=0.1)


@pytest.fixture(autouse=True)
def no_faults_left():
    yield
    faults.configure("")


def _args(model, data, out):
    # 72 train rows in steps of 8: 9 steps per epoch, 18 in all; evaluations at 4, 8, 9, 12, 16, 18.
    return ["train", "--data", str(data), "--model", str(model), "--output", str(out), "--epochs", "2",
            "--batch-size", "8", "--lr", "5e-3", "--max-length", "32", "--save-every", "3", "--eval-every", "4",
            "--seed", "7", "--num-threads", "1"]


def _cli(args, fault=""):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FINETUNE_BERT_FAULTS": fault}
    return subprocess.run([sys.executable, "-m", "finetune_bert.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.fixture(scope="module")
def crash_data(tmp_path_factory):
    from conftest import toy_rows, write_csv
    return write_csv(tmp_path_factory.mktemp("crash") / "train.csv", toy_rows(80, seed=3))


@pytest.fixture(scope="module")
def reference(dropout_model, crash_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    result = _cli(_args(dropout_model, crash_data, out))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.mark.parametrize("fault, resumed_at", [
    ("kill@step:5", 3),         # between checkpoints: the step-5 work is lost, redone from step 3
    ("kill@checkpoint:6", 3),   # mid-write of the step-6 checkpoint: the partial one is never used
    ("kill@eval:8", 6),         # during an evaluation
])
def test_sigkill_then_resume_gives_identical_model(dropout_model, crash_data, reference, tmp_path, fault, resumed_at):
    out = tmp_path / "run"
    killed = _cli(_args(dropout_model, crash_data, out), fault)
    assert killed.returncode == -9, killed.stderr[-2000:]
    if fault.startswith("kill@checkpoint"):
        assert (out / "checkpoints" / ".tmp-step-0000006").is_dir()
        assert not (out / "checkpoints" / ".tmp-step-0000006" / "COMPLETE").exists()
    resumed = _cli(_args(dropout_model, crash_data, out) + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at step {resumed_at} " in resumed.stdout
    # the data was tokenized once, into the token cache (data/store.py): a resume reads it
    assert "token cache: tokenizing" not in resumed.stdout and "token cache: token ids of 80 rows read" in resumed.stdout
    assert _max_diff(out, reference) == 0.0
    assert json.loads((out / "metrics.json").read_text())["validation"] == \
        json.loads((reference / "metrics.json").read_text())["validation"]


def test_keeps_only_the_newest_checkpoints(reference):
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["step-0000015", "step-0000018"]
    assert {"model.safetensors", "optimizer.pt", "rng.pt", "state.json", "COMPLETE"} == \
        {p.name for p in (reference / "checkpoints" / "step-0000018").iterdir()}
    state = json.loads((reference / "checkpoints" / "step-0000018" / "state.json").read_text())
    assert state["step"] == 18 and state["epoch"] == 1 and state["batch_in_epoch"] == 9
    assert state["fingerprint"]["data_sha256"]


def _train(model, data, out, **kw):
    from finetune_bert import train
    base = dict(data=str(data), model=str(model), output=str(out), epochs=2, batch_size=8, lr=5e-3,
                max_length=32, seed=7, eval_every=4, save_every=3, export=False)  # what is tested is training
    return train(**{**base, **kw})


def test_resume_without_checkpoint_starts_fresh_and_says_so(dropout_model, crash_data, tmp_path, capsys):
    _train(dropout_model, crash_data, tmp_path / "o", epochs=0.2, resume=True)
    assert "--resume: no complete checkpoint" in capsys.readouterr().out


def test_resume_with_other_arguments_is_refused_listing_differences(dropout_model, crash_data, tmp_path):
    _train(dropout_model, crash_data, tmp_path / "o", epochs=0.5)
    with pytest.raises(UserError, match=r"--resume: .* differences: lr: checkpoint has 0.005, now 0.001; "
                                        r"max_length: checkpoint has 32, now 24"):
        _train(dropout_model, crash_data, tmp_path / "o", epochs=0.5, lr=1e-3, max_length=24, resume=True)


def test_sigterm_saves_checkpoint_and_resume_finishes_identically(dropout_model, crash_data, reference, tmp_path):
    threads = torch.get_num_threads()
    faults.configure("term@step:5")
    try:  # one thread, as the reference: float sums are only bitwise equal for the same thread count
        with pytest.raises(TrainingInterrupted, match=r"stopped at step 5; .*--resume"):
            _train(dropout_model, crash_data, tmp_path / "o", num_threads=1)
        assert (tmp_path / "o" / "checkpoints" / "step-0000005" / "COMPLETE").is_file()
        _train(dropout_model, crash_data, tmp_path / "o", resume=True, num_threads=1)
    finally:
        torch.set_num_threads(threads)
    assert _max_diff(tmp_path / "o", reference) == 0.0


def test_ctrl_c_exits_130_with_resume_hint(tiny_model, crash_data, tmp_path, capsys):
    from finetune_bert.cli.main import main
    faults.configure("int@step:2")
    code = main(_args(tiny_model, crash_data, tmp_path / "o"))
    assert code == 130 and "Resume with the same command and --resume" in capsys.readouterr().err


def test_out_of_memory_in_training_halves_micro_batch_same_update(tiny_model, crash_data, tmp_path, capsys):
    _train(tiny_model, crash_data, tmp_path / "plain", eval_every=0, save_every=0)  # the reference model
    faults.configure("oom@forward:2")
    backed = _train(tiny_model, crash_data, tmp_path / "oom", eval_every=0, save_every=0)
    assert "out of memory at step 2: micro-batch now 4 with 2 accumulation steps" in capsys.readouterr().err
    assert backed.metrics["train"]["micro_splits"] == 2
    assert _max_diff(tmp_path / "plain", tmp_path / "oom") < same_update_tolerance(5e-3)  # _train's lr


def test_out_of_memory_at_micro_batch_one_gives_up_clearly(tiny_model, crash_data, tmp_path):
    faults.configure("oom!@forward:1")
    with pytest.raises(UserError, match="out of memory at step 1 even with micro-batch 1; lower --max-length"):
        _train(tiny_model, crash_data, tmp_path / "o")


def test_out_of_memory_in_evaluation_halves_eval_batch(tiny_model, crash_data, tmp_path, capsys):
    faults.configure("oom@eval:4")
    result = _train(tiny_model, crash_data, tmp_path / "o", eval_batch_size=4)
    assert "out of memory in evaluation: evaluation batch now 2" in capsys.readouterr().err
    assert result.metrics["validation"]["n"] == 8


def test_nan_loss_skips_the_step_and_counts_it(tiny_model, crash_data, tmp_path, capsys):
    faults.configure("nan@loss:3")
    result = _train(tiny_model, crash_data, tmp_path / "o")
    assert "step 3 skipped: its loss (nan)" in capsys.readouterr().err
    assert result.metrics["train"]["skipped_steps"] == 1
    weights = load_file(str(tmp_path / "o" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_consecutive_nans_stop_the_run_keeping_last_checkpoint(tiny_model, crash_data, tmp_path):
    faults.configure("nan@loss:4,nan@loss:5,nan@loss:6")
    with pytest.raises(UserError, match="3 steps in a row had a NaN or inf loss or gradient"):
        _train(tiny_model, crash_data, tmp_path / "o", max_bad_steps=3)
    assert (tmp_path / "o" / "checkpoints" / "step-0000003" / "COMPLETE").is_file()


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_in_checkpoint_is_refused_and_never_runs(tiny_model, crash_data, tmp_path):
    import pickle
    _train(tiny_model, crash_data, tmp_path / "o", epochs=0.5)
    ckpt = sorted((tmp_path / "o" / "checkpoints").iterdir())[-1]
    pwned = tmp_path / "pwned"
    (ckpt / "optimizer.pt").write_bytes(pickle.dumps({"state": _Payload(pwned)}))
    with pytest.raises(UserError, match=r"cannot be loaded safely \(UnpicklingError"):
        _train(tiny_model, crash_data, tmp_path / "o", epochs=0.5, resume=True)
    assert not pwned.exists()


def test_model_without_safetensors_is_refused(tiny_model, tmp_path):
    import shutil
    from finetune_bert.engine.model_folder import load_classifier
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model, folder)
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(UserError, match="has no model.safetensors; finetune-bert loads weights only from safetensors"):
        load_classifier(str(folder), ["a", "b"])


def test_checkpoint_from_before_lane_dropout_resumes_with_no_lane_dropout():
    from finetune_bert.training import checkpoint
    from finetune_bert.training.config import TrainConfig
    old = checkpoint.fingerprint(TrainConfig(lane_dropout=False), ["a"], [0], [])
    del old["lane_dropout"]  # written before the option existed, with PyTorch's dropout
    assert checkpoint.differences(old, checkpoint.fingerprint(TrainConfig(lane_dropout=False), ["a"], [0], [])) == []
    assert checkpoint.differences(old, checkpoint.fingerprint(TrainConfig(), ["a"], [0], [])) == \
        ["lane_dropout: checkpoint has False, now True"]


def test_checkpoint_from_before_cpu_micro_batches_resumes_only_with_whole_batches():
    # Micro-batches draw their dropout masks in other shapes: the resumed run would differ.
    from finetune_bert.training import checkpoint
    from finetune_bert.training.config import TrainConfig
    old = checkpoint.fingerprint(TrainConfig(cpu_micro_batches=False), ["a"], [0], [])
    del old["cpu_micro_batches"]
    assert checkpoint.differences(old, checkpoint.fingerprint(TrainConfig(cpu_micro_batches=False), ["a"], [0], [])) == []
    assert checkpoint.differences(old, checkpoint.fingerprint(TrainConfig(), ["a"], [0], [])) == \
        ["cpu_micro_batches: checkpoint has False, now True"]


def test_checkpoint_from_before_dynamic_padding_flag_resumes_with_dynamic_padding():
    from finetune_bert.training import checkpoint
    from finetune_bert.training.config import TrainConfig
    old = checkpoint.fingerprint(TrainConfig(), ["a"], [0], [])
    del old["dynamic_padding"]  # written before the flag: batches were always padded to their longest text
    assert checkpoint.differences(old, checkpoint.fingerprint(TrainConfig(), ["a"], [0], [])) == []
    assert checkpoint.differences(old, checkpoint.fingerprint(TrainConfig(dynamic_padding=False), ["a"], [0], [])) == \
        ["dynamic_padding: checkpoint has True, now False"]


def test_resume_refuses_a_flipped_unpadded_flag():
    # On a GPU the packed path draws its dropout inside FlashAttention: the run would continue differently.
    from finetune_bert.training import checkpoint
    from finetune_bert.training.config import TrainConfig
    saved = checkpoint.fingerprint(TrainConfig(), ["a"], [0], [])
    assert checkpoint.differences(saved, checkpoint.fingerprint(TrainConfig(unpadded=False), ["a"], [0], [])) == \
        ["unpadded: checkpoint has True, now False"]
    del saved["unpadded"]  # written before the flag was recorded: either value is accepted
    assert checkpoint.differences(saved, checkpoint.fingerprint(TrainConfig(unpadded=False), ["a"], [0], [])) == []
