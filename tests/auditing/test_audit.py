"""`finetune-bert audit`: folds, out-of-fold outputs that survive kill -9, flipped labels found by cleanlab, the
overlap refusal, and a clean copy that never touches the input. Tiny random BERTs on a toy task they learn."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

from conftest import kind_cli, toy_rows, write_csv

# What a 2-layer, 32-wide BERT learns the toy rule with on 150 rows a fold (9 of the 10 flips in the top 10)
FOLD_OPTIONS = ["--folds", "4", "--epochs", "15", "--lr", "3e-3", "--batch-size", "8", "--warmup-ratio", "0.05",
                "--max-length", "32", "--seed", "0", "--num-threads", "1", "--save-every", "10", "--top", "3",
                "--explain-steps", "8"]


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """200 toy reviews with 10 labels flipped (seeded), and the rows (CSV line numbers) flipped."""
    folder = tmp_path_factory.mktemp("audit-data")
    rows = toy_rows(200, seed=1)
    flipped = sorted(random.Random(5).sample(range(len(rows)), 10))
    for i in flipped:
        rows[i]["label"] = "negative" if rows[i]["label"] == "positive" else "positive"
    return write_csv(folder / "train.csv", rows), {f"line {i + 2}" for i in flipped}


@pytest.fixture(scope="module")
def audited(tiny_model, noisy, tmp_path_factory):
    data, _ = noisy
    out = tmp_path_factory.mktemp("audit") / "out"
    done = kind_cli("audit", "--data", str(data), "--model", str(tiny_model), "--output", str(out), *FOLD_OPTIONS,
                    "--write-clean", str(out.parent / "clean.csv"), "--keep-fold-models")
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _read(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_folds_are_stratified_disjoint_and_cover_every_row_once(audited, noisy):
    rows = _read(audited / "oof_probabilities.csv")
    assert [r["row"] for r in rows] == [f"line {i + 2}" for i in range(200)]  # every row once, in the data's order
    by_fold: dict[str, list[str]] = {}
    for r in rows:
        by_fold.setdefault(r["fold"], []).append(r["given_label"])
    assert sorted(by_fold) == ["1", "2", "3", "4"] and all(len(v) == 50 for v in by_fold.values())
    for labels in by_fold.values():  # stratified: each fold holds the classes as the data does (100/100)
        assert abs(labels.count("positive") - 25) <= 1
    probs = np.array([[float(r["p_negative"]), float(r["p_positive"])] for r in rows])
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert sorted(p.name for p in (audited / "folds").glob("fold-*") if p.is_dir()) == [f"fold-{k}" for k in range(4)]
    assert not list((audited / "folds").glob("fold-*/onnx"))  # a fold's model is never exported


def test_flipped_labels_are_found(audited, noisy):
    _, flipped = noisy
    issues = _read(audited / "label_issues.csv")
    top = [r["row"] for r in issues[:len(flipped)]]
    assert len(set(top) & flipped) >= 7, (top, flipped)  # precision at k = the number flipped
    first = issues[0]
    assert first["suggested_label"] != first["given_label"] and first["file"].endswith("train.csv")
    qualities = [float(r["label_quality"]) for r in issues]
    assert qualities == sorted(qualities)  # worst first
    summary = json.loads((audited / "summary.json").read_text())
    assert summary["flagged"] == len(issues) and set(summary["noise_rate"]) == {"negative", "positive"}


def test_the_report_colours_the_words_of_the_top_issues(audited):
    page = (audited / "report.html").read_text()
    assert page.count('class="issue"') == 3 and "rgba(" in page and "Given against suggested" in page


def test_write_clean_leaves_the_flagged_rows_out_and_never_touches_the_input(audited, noisy, tiny_model):
    data, _ = noisy
    before = data.read_bytes()
    clean = _read(audited.parent / "clean.csv")
    flagged = {r["row"] for r in _read(audited / "label_issues.csv")}
    assert len(clean) == 200 - len(flagged) and data.read_bytes() == before
    refused = kind_cli("audit", "--data", str(data), "--model", str(tiny_model), "--output", str(audited),
                       *FOLD_OPTIONS, "--write-clean", str(data))
    assert refused.returncode == 2 and "overwrite the input" in refused.stderr and "Traceback" not in refused.stderr
    assert data.read_bytes() == before


def test_relabel_keeps_every_row_with_the_suggested_label(audited, noisy, tiny_model, tmp_path):
    data, _ = noisy
    done = kind_cli("audit", "--data", str(data), "--model", str(tiny_model), "--output", str(audited),
                    *FOLD_OPTIONS, "--write-clean", str(tmp_path / "relabelled.jsonl"), "--relabel")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "done earlier" in done.stderr + done.stdout  # the same command continues: nothing retrained
    rows = [json.loads(line) for line in (tmp_path / "relabelled.jsonl").read_text().splitlines()]
    issues = {r["row"]: r["suggested_label"] for r in _read(audited / "label_issues.csv")}
    original = _read(data)
    assert len(rows) == 200
    changed = [i for i, (a, b) in enumerate(zip(original, rows)) if a["label"] != b["label"]]
    assert {f"line {i + 2}" for i in changed} == set(issues)
    assert all(rows[i]["label"] == issues[f"line {i + 2}"] for i in changed)


def test_an_audit_killed_mid_fold_continues_that_fold_and_gives_the_same_outputs(audited, noisy, tiny_model, tmp_path):
    data, _ = noisy
    out = tmp_path / "out"
    args = ["audit", "--data", str(data), "--model", str(tiny_model), "--output", str(out), *FOLD_OPTIONS,
            "--keep-fold-models"]
    assert kind_cli(*args, fault="kill@step:30").returncode == -9  # inside fold 1, after its checkpoint at step 30
    assert not (out / "folds" / "fold-0.npz").exists() and (out / "folds" / "fold-0" / "checkpoints").is_dir()
    done = kind_cli(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fold 1/4: training on" in done.stderr + done.stdout and "resumed from its checkpoint" in done.stderr + done.stdout
    assert _read(out / "oof_probabilities.csv") == _read(audited / "oof_probabilities.csv")
    other = kind_cli(*[a if a != "15" else "14" for a in args])  # other arguments: refused, not mixed in
    assert other.returncode == 2 and "other arguments" in other.stderr


def test_a_fine_tuned_model_refuses_the_data_it_trained_on(trained, toy_data, tmp_path):
    done = kind_cli("audit", "--data", str(toy_data["train"]), "--model", trained.output, "--output",
                    str(tmp_path / "a"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "train.csv" in line and "line " in line and "column 'text'" in line and "trained on this text" in line
    folds = kind_cli("audit", "--data", str(toy_data["test"]), "--model", trained.output, "--output",
                     str(tmp_path / "b"), "--folds", "3")
    assert folds.returncode == 2 and "--folds" in folds.stderr


def test_a_fine_tuned_model_audits_new_data_through_the_api(trained, toy_data, tmp_path):
    from finetune_bert import audit

    result = audit(data=str(toy_data["test"]), model=trained.output, output=str(tmp_path / "a"), explain_steps=8)
    assert result.summary["rows"] == 40 and result.summary["flagged"] == len(result.findings.flagged)
    rows = _read(tmp_path / "a" / "oof_probabilities.csv")
    assert len(rows) == 40 and "fold" not in rows[0]
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["mode"] == "fine-tuned model"


@pytest.mark.parametrize("kind", ["multi-label", "regression"])
def test_other_kinds_are_audited(kind, trained_kinds, kind_data, tmp_path):
    from finetune_bert import audit

    audit(data=str(kind_data[kind]["test"]), model=str(trained_kinds[kind]), output=str(tmp_path / "a"),
          explain_steps=8)
    rows = _read(tmp_path / "a" / "oof_probabilities.csv")
    assert len(rows) == 60
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["task"] == kind and summary["flagged"] == len(_read(tmp_path / "a" / "label_issues.csv"))
    if kind == "multi-label":
        assert {"p_pos", "p_neg", "p_tech"} <= set(rows[0])
    else:
        assert "value" in rows[0]
