"""The report's figures: each draws, from the numbers metrics.json holds, a PNG that is not blank."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from finetune_bert.evaluation import figures
from finetune_bert.evaluation.metrics import StreamingMetrics


@pytest.fixture(scope="module")
def metrics():
    rng = np.random.default_rng(0)
    m = StreamingMetrics(["negative", "positive"])
    labels = rng.integers(0, 2, 300)
    m.update(torch.tensor(rng.normal(size=(300, 2)) * 2), torch.tensor(labels), rng.integers(10, 900, 300))
    return m.compute()


def _drawn(png: bytes) -> np.ndarray:
    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 10
    return image


def test_every_figure_draws(metrics):
    train = [{"step": s, "loss": 1 / s, "lr": 1e-4 * (1 - s / 100)} for s in range(10, 100, 10)]
    evals = [{"step": s, "loss": 0.5, "accuracy": 0.8} for s in (30, 60, 90)]
    _drawn(figures.curves(train, evals, "accuracy"))
    _drawn(figures.confusion(metrics["confusion_matrix"], metrics["labels"]))
    _drawn(figures.reliability([("before", metrics["reliability"], metrics["ece"]),
                                ("after", metrics["reliability"], metrics["ece"])]))
    _drawn(figures.confidence_histogram(metrics["confidence_histogram"]))
    _drawn(figures.by_length(metrics["by_length"]))


def test_curves_of_a_run_without_log_records_still_draw_the_axes():
    assert figures.curves([], [], "accuracy").startswith(b"\x89PNG")


def test_the_multilabel_and_regression_figures_draw():
    from finetune_bert.evaluation.task_metrics import MultiLabelMetrics, RegressionMetrics

    rng = np.random.default_rng(0)
    names = [f"emotion_{i}" for i in range(28)]  # GoEmotions' number of labels
    labels = (rng.uniform(size=(400, 28)) < 0.1).astype(np.float32)
    ml = MultiLabelMetrics(names, np.full(28, 0.3))
    ml.update(torch.tensor(rng.normal(size=(400, 28)) + labels * 2 - 1), torch.tensor(labels))
    m = ml.compute()
    tall = _drawn(figures.label_f1(names, [m["per_class"][n]["f1"] for n in names],
                                   [m["at_0.5"]["f1_per_label"][n] for n in names]))
    assert tall.shape[0] > tall.shape[1]  # 28 labels: taller than wide, every name on its own line
    reg = RegressionMetrics(["y"])
    true = rng.normal(size=500)
    reg.update(torch.tensor(true + rng.normal(size=500) * 0.3), torch.tensor(true))
    r = reg.compute()
    _drawn(figures.regression(r["scatter"], r["residuals"]))
