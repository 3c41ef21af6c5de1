"""`finetune-bert distill`: a student trained on a teacher's outputs through train's own loop. The teacher's outputs
are computed once and read back by a resume after kill -9, which ends with the very weights of an uninterrupted
run; the student is an ordinary folder; a teacher for other labels is one line. Tiny random BERTs, the toy task."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

from conftest import make_tiny_bert, toy_rows, write_csv

# 144 train rows (16 held out for validation) and 60 unlabelled texts in steps of 16: 13 steps; checkpoints every 3
OPTIONS = ["--epochs", "1", "--batch-size", "16", "--lr", "3e-3", "--warmup-ratio", "0.05", "--max-length", "32",
           "--seed", "0", "--save-every", "3", "--no-report", "--student-layers", "1", "--layer-pick", "spread"]


def _cli(args: list[str], fault: str = "") -> subprocess.CompletedProcess:
    """The command in a process of its own, on one thread (a kill is a real SIGKILL)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FINETUNE_BERT_FAULTS": fault, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "finetune_bert.cli", *args, "--num-threads", "1"], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def setup(trained, toy_data, tmp_path_factory):
    """The teacher (the suite's trained toy model), a student base with dropout (an exact resume must restore
    the generators too), and unlabelled texts."""
    folder = tmp_path_factory.mktemp("distill")
    student = make_tiny_bert(folder / "student-base", dropout=0.1)
    unlabeled = write_csv(folder / "unlabeled.csv", [{"text": r["text"]} for r in toy_rows(60, seed=9)])
    return {"teacher": trained.output, "student": student, "unlabeled": unlabeled, "data": toy_data, "root": folder}


def _args(setup, out) -> list[str]:
    return ["distill", "--teacher", str(setup["teacher"]), "--student", str(setup["student"]), "--data",
            str(setup["data"]["train"]), "--test-data", str(setup["data"]["test"]), "--unlabeled",
            str(setup["unlabeled"]), "--output", str(out), *OPTIONS]


@pytest.fixture(scope="module")
def reference(setup):
    out = setup["root"] / "reference"
    done = _cli(_args(setup, out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "unlabeled: 60 texts" in done.stdout and "student: layers 2 of the model's 2" in done.stdout
    return out


def test_sigkill_then_resume_reads_the_teacher_outputs_back_and_gives_identical_weights(setup, reference, tmp_path):
    out = tmp_path / "run"
    killed = _cli(_args(setup, out), fault="kill@step:5")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert "teacher outputs: 204 texts scored by" in killed.stdout  # 144 labelled + 60 unlabelled
    cache = out / "teacher_logits.npy"
    written = cache.stat().st_mtime_ns
    resumed = _cli(_args(setup, out) + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "teacher outputs: read from" in resumed.stdout and "scored by" not in resumed.stdout
    assert cache.stat().st_mtime_ns == written
    assert "resumed from" in resumed.stdout and "at step 3 " in resumed.stdout
    a, b = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    key = json.loads((out / "teacher_logits.json").read_text())
    assert key["rows"] == 204 and key["max_length"] == 32 and len(key["teacher_sha256"]) == 64
    assert np.load(cache).shape == (204, 2)


def test_a_resume_with_other_settings_names_them(setup, reference, capsys):
    from finetune_bert.cli.main import main

    code = main(_args(setup, reference) + ["--resume", "--kd-alpha", "0.3"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "kd_alpha: checkpoint has 0.5, now 0.3" in err, err


def test_the_student_is_an_ordinary_folder_that_pipeline_and_load_open(reference):
    from transformers import AutoConfig, pipeline

    from finetune_bert import load

    assert AutoConfig.from_pretrained(reference).num_hidden_layers == 1
    config = json.loads((reference / "run_config.json").read_text())
    assert config["kd_alpha"] == 0.5 and config["student_layers"] == 1 and config["teacher"]
    texts = ["a wonderful film", "the plot was dull"]
    ours = load(reference, device="cpu", backend="torch-fp32")
    pipe = pipeline("text-classification", model=str(reference), top_k=None, device="cpu")
    for row, answer in zip(ours.predict_proba(texts), pipe(texts)):
        theirs = {a["label"]: a["score"] for a in answer}
        assert set(theirs) == {"negative", "positive"}
        assert np.allclose([theirs[n] for n in ours.label_names], row, atol=1e-5)
    metrics = json.loads((reference / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] is not None and "calibration" in json.dumps(metrics)


def test_a_teacher_for_other_labels_is_one_line(setup, tmp_path, capsys):
    from finetune_bert.cli.main import main

    rows = [{"text": r["text"], "label": "good" if r["label"] == "positive" else "bad"} for r in toy_rows(40)]
    data = write_csv(tmp_path / "other.csv", rows)
    code = main(["distill", "--teacher", str(setup["teacher"]), "--student", str(setup["student"]), "--data",
                 str(data), "--output", str(tmp_path / "o"), "--max-length", "32"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "predicts the labels negative, positive, and the data's are bad, good" in err
    assert not (tmp_path / "o").exists()


def test_unlabelled_rows_join_the_training_split_without_labels_and_batches_carry_the_teacher():
    import torch

    from finetune_bert.compression.distill import with_teacher
    from finetune_bert.data.dataset import Dataset
    from finetune_bert.data.prepared import Prepared
    from finetune_bert.data.splits import Split
    from finetune_bert.data.tokens import Encoded, TokenizedSplits
    from finetune_bert.engine.batches import collate
    from finetune_bert.training.kinds import Distillation, distill_loss_sum
    from finetune_bert.training.steps import StepOptions, batch_loss

    rows = Split("train", "t.csv", ["good", "plot"], [("pos",), ()], ["line 2", "line 3"])
    ds = Dataset(rows, rows, None, ["pos", "neg"], ["pos", "neg"], task="multi-label")
    train = Encoded([np.array([2, 14, 3], dtype=np.int32), np.array([2, 3], dtype=np.int32)], np.array([3, 2]),
                    np.array([[1, 0], [0, 0]], dtype=np.float32))
    prepared = Prepared(ds, None, TokenizedSplits({"train": train}, 32), {})
    unlabeled = Encoded([np.array([2, 7, 7, 3], dtype=np.int32)], np.array([4]), None)
    teacher = np.array([[2.0, -1.0], [-2.0, -2.0], [0.5, 3.0]], dtype=np.float32)
    joined = with_teacher(prepared, unlabeled, teacher).tokens.splits["train"]
    assert len(joined) == 3 and joined.labels.shape == (3, 2) and np.isnan(joined.labels[2]).all()
    assert prepared.tokens.splits["train"] is train and train.teacher is None  # the input is left as it was
    batch = collate(joined, np.array([0, 2]), pad_id=0)
    assert torch.equal(batch["teacher_logits"], torch.from_numpy(teacher[[0, 2]]))
    logits, kd = torch.tensor([[0.3, -0.2], [1.0, 0.1]]), Distillation(2.0, 0.5)
    expected = distill_loss_sum("multi-label", logits, batch["labels"], batch["teacher_logits"], None, kd)
    assert torch.isfinite(expected) and torch.equal(batch_loss(StepOptions(task="multi-label", distillation=kd), logits,
                                                                 batch), expected)


def test_a_value_teacher_is_distilled_in_the_students_target_scale(trained_kinds, kind_data, tiny_model, tmp_path):
    """Regression: the teacher predicts in the targets' units, the student learns z-scores of them."""
    from finetune_bert import distill
    from finetune_bert.console import console

    data = kind_data["regression"]
    unlabeled = write_csv(tmp_path / "u.csv", [{"text": r["text"]} for r in toy_rows(40, seed=4)])
    with console.quiet():
        result = distill(teacher=str(trained_kinds["regression"]), model=str(tiny_model), data=str(data["train"]),
                         test_data=str(data["test"]), unlabeled=str(unlabeled), output=str(tmp_path / "s"), epochs=4,
                         batch_size=16, lr=3e-3, warmup_ratio=0.05, max_length=32, seed=0, report=False, bf16=False)
    teacher = json.loads((trained_kinds["regression"] / "metrics.json").read_text())["test"]["rmse"]
    assert json.loads((tmp_path / "s" / "finetune_bert.json").read_text())["task"] == "regression"  # the teacher's
    assert result.metrics["test"]["rmse"] < 1.3 * teacher, (teacher, result.metrics["test"]["rmse"])
