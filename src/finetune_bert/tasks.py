"""The kinds of task a model is trained for, and what each one means at the model's output.

The kind is one field of the saved run (`RunInfo.task`) and, for every other tool, the Hugging Face
`problem_type` in config.json: `transformers.pipeline` then applies the same function to the logits as we
do (softmax, one sigmoid per label, or none), so a folder means the same thing to both. Every stage that
differs by kind branches once, on this field."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSIFICATION = "classification"
MULTI_LABEL = "multi-label"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, MULTI_LABEL, REGRESSION)

PROBLEM_TYPES = {CLASSIFICATION: "single_label_classification", MULTI_LABEL: "multi_label_classification",
                 REGRESSION: "regression"}

# The metric that picks the best model, and that `tune` optimises, when --metric is not given.
DEFAULT_METRIC = {CLASSIFICATION: "accuracy", MULTI_LABEL: "f1_macro", REGRESSION: "rmse"}

# The metrics each kind's metrics dict holds that --metric may name; any scikit-learn metric is accepted by name
# besides these (evaluation/named.py).
METRICS = {
    CLASSIFICATION: ("accuracy", "f1_macro", "loss", "roc_auc", "log_loss", "precision_macro", "recall_macro"),
    MULTI_LABEL: ("f1_macro", "f1_micro", "f1_weighted", "subset_accuracy", "hamming_loss", "roc_auc", "map",
                  "loss", "log_loss", "precision_macro", "precision_micro", "recall_macro", "recall_micro"),
    REGRESSION: ("rmse", "mae", "r2", "pearson", "spearman", "loss"),
}
LOWER_IS_BETTER = frozenset({"loss", "log_loss", "rmse", "mae", "hamming_loss"})

DEFAULT_THRESHOLD = 0.5


def task_of_config(config) -> str:
    """The kind a model config says, as transformers reads it: its problem_type, or, with none, a single output
    for regression (what `pipeline` does) and otherwise one label per text."""
    problem = getattr(config, "problem_type", None)
    for task, name in PROBLEM_TYPES.items():
        if problem == name:
            return task
    return REGRESSION if getattr(config, "num_labels", 2) == 1 else CLASSIFICATION


def activate(logits: np.ndarray, task: str) -> np.ndarray:
    """What the model's outputs mean, in float32: class probabilities (softmax over a row), independent label
    probabilities (a sigmoid each), or the predicted values themselves."""
    logits = np.asarray(logits, dtype=np.float32)
    if task == MULTI_LABEL:
        return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)  # the sigmoid, without exp's overflow
    if task == REGRESSION:
        return logits
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Scoring:
    """How a model's outputs are scored: its kind and, for regression, the scale its outputs are in (the
    z-scores a model learns: train's (mean, std); (0, 1) once folded into the head) and whether targets are
    whole numbers; for multi-label, each label's decision threshold (None: 0.5, or tuned where asked);
    `metric`: a scikit-learn metric by name (--metric) scored beside the kind's own."""

    task: str = CLASSIFICATION
    scale: tuple[float, float] = (0.0, 1.0)
    integer_targets: bool = False
    thresholds: tuple[float, ...] | None = None
    metric: str | None = None

    @property
    def headline(self) -> tuple[str, ...]:
        """The numbers a progress line shows for this kind."""
        return HEADLINE[self.task]


HEADLINE = {CLASSIFICATION: ("accuracy", "f1_macro", "loss"), MULTI_LABEL: ("f1_macro", "f1_micro", "loss"),
            REGRESSION: ("rmse", "spearman", "loss")}
