"""report.html for multi-label and regression runs, from metrics.json files written here by the metric classes
(no training), and classification pages unchanged by the "task" field."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune_bert.evaluation.report_page import evaluation_report, rebuild, run_report
from finetune_bert.evaluation.task_metrics import MultiLabelMetrics, RegressionMetrics

LABELS = ["admiration", "anger", "joy", "neutral"]
THRESHOLDS = np.array([0.35, 0.2125, 0.5, 0.61])


def _multilabel(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    labels = (rng.uniform(size=(300, 4)) < np.array([0.2, 0.05, 0.3, 0.4])).astype(np.float32)
    m = MultiLabelMetrics(LABELS, THRESHOLDS)
    m.update(torch.tensor(rng.normal(size=(300, 4)) + labels * 2.5 - 1.2), torch.tensor(labels))
    return m.compute()


def _regression(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    true = rng.normal(size=400)
    m = RegressionMetrics(["stars"], integer_targets=True, scale=(3.0, 1.2))
    m.update(torch.tensor(true * 0.9 + rng.normal(size=400) * 0.3)[:, None], torch.tensor(true))
    return m.compute()


def _run_folder(folder: Path, validation: dict, test: dict, calibration: dict | None = None,
                metric: str = "f1_macro") -> Path:
    """The files report_page reads from a finished run: metrics.json, run_config.json, the log, the data report."""
    folder.mkdir(parents=True)
    metrics = {"validation": validation, "test": test, "best_step": 40, "train": {"seconds": 12.5, "steps": 60},
               **({"calibration": calibration} if calibration else {})}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "run_config.json").write_text(json.dumps({"model": "tiny-bert", "metric": metric}))
    log = [{"event": "train", "step": s, "loss": 1 / s, "lr": 1e-4} for s in range(10, 70, 10)]
    log += [{"event": "eval", "step": s, "loss": 0.5, metric: 0.4 + s / 1000} for s in (20, 40, 60)]
    (folder / "train_log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")
    (folder / "data_report.txt").write_text("300 rows\n")
    return folder


def _images(page: str) -> dict[str, bytes]:
    found = dict(re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page))
    return {alt: base64.b64decode(data) for alt, data in found.items()}


def _rows(page: str, first_cell: str) -> list[list[str]]:
    """The other cells of each table row that starts with `first_cell`, in page order."""
    rows = re.findall(rf'<tr><td class="">{re.escape(first_cell)}</td>(.*?)</tr>', page)
    assert rows, f"no row {first_cell}"
    return [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in rows]


def _row(page: str, first_cell: str) -> list[str]:
    return _rows(page, first_cell)[0]


def test_a_multilabel_runs_report_has_the_f1_bars_and_each_labels_threshold(tmp_path):
    test = _multilabel(1)
    calibration = {"note": "per-label temperatures", "temperatures": [0.8, 1.0, 1.3, 1.0],
                   "validation": {"before": {"log_loss": 0.4, "ece": 0.05, "brier": 0.12},
                                  "after": {"log_loss": 0.38, "ece": 0.02, "brier": 0.11}}}
    page = run_report(_run_folder(tmp_path / "run", _multilabel(0), test, calibration))
    images = _images(page)
    assert {"F1 per label, test", "training curves"} <= set(images)
    assert all(png.startswith(b"\x89PNG") for png in images.values())
    assert "<th>threshold</th>" in page and "<th>F1 at 0.5</th>" in page
    for name, t in zip(LABELS, THRESHOLDS):
        cells = _row(page, name)
        assert cells[0] == f"{t:.4f}"  # the threshold column
        assert cells[3] == f"{test['per_class'][name]['f1']:.4f}"
        assert cells[4] == f"{test['at_0.5']['f1_per_label'][name]:.4f}"
    summary = _row(page, "test")
    assert summary[0] == "300" and summary[2] == f"{test['f1_macro']:.4f}" and summary[3] == f"{test['at_0.5']['f1_macro']:.4f}"
    assert "Per label (test)" in page and "confusion" not in page.lower()
    assert _row(page, "validation")[:2] == ["before", "0.4000"]  # the calibration table
    assert _rows(page, "admiration")[1] == ["0.8000"] and _rows(page, "joy")[1] == ["1.3000"]  # temperatures
    assert "validation f1_macro" in page


def test_a_regression_runs_report_has_the_scatter_and_the_residuals(tmp_path):
    test = _regression(1)
    page = run_report(_run_folder(tmp_path / "run", _regression(0), test, metric="rmse"))
    images = _images(page)
    assert "predicted against true and errors, test" in images
    assert len(images["predicted against true and errors, test"]) > 10_000  # a drawing, not an empty frame
    assert "<th>RMSE</th>" in page and "<th>within 1</th>" in page
    cells = _row(page, "test")
    assert cells[:2] == ["400", f"{test['rmse']:.4f}"]
    assert _row(page, "true values")[0] == f"{test['target']['mean']:.4f}"
    assert "validation rmse" in page and "Per class" not in page


@pytest.mark.parametrize("kind", ["multi-label", "regression"])
def test_report_rebuilds_an_evaluations_page_of_each_kind(tmp_path, kind):
    m = _multilabel(2) if kind == "multi-label" else _regression(2)
    m.update(model="m", data="d.csv")
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps(m))
    page = rebuild(str(path)).read_text()
    assert page == evaluation_report(m, "evaluation.json")
    assert ("F1 per label, evaluation" if kind == "multi-label" else "predicted against true and errors, evaluation") \
        in _images(page)


def test_a_classification_page_is_the_same_with_or_without_the_task_field(tmp_path):
    """Older runs have no "task"; a classification run now has "task": "classification": the same page."""
    from finetune_bert.evaluation.metrics import StreamingMetrics

    rng = np.random.default_rng(0)
    m = StreamingMetrics(["negative", "positive"])
    m.update(torch.tensor(rng.normal(size=(200, 2)) * 2), torch.tensor(rng.integers(0, 2, 200)),
             rng.integers(10, 900, 200))
    tagged = m.compute()
    untagged = {k: v for k, v in tagged.items() if k != "task"}
    assert tagged["task"] == "classification"
    with_task = run_report(_run_folder(tmp_path / "a" / "run", tagged, tagged, metric="accuracy"))
    without = run_report(_run_folder(tmp_path / "b" / "run", untagged, untagged, metric="accuracy"))
    assert with_task.replace(str(tmp_path / "a"), "") == without.replace(str(tmp_path / "b"), "")
    assert "confusion matrix, test" in _images(with_task) and "Per class (test)" in with_task
    assert evaluation_report({**tagged, "model": "m", "data": "d"}, "e.json") == \
        evaluation_report({**untagged, "model": "m", "data": "d"}, "e.json")
