"""Calibrated confidence: one temperature T fitted on validation, folded into the classifier's last layer.

Temperature scaling (Guo et al. 2017) divides the logits by a scalar T fitted to minimise the validation
negative log-likelihood; the argmax, hence accuracy, cannot change. The reference code fits T with L-BFGS,
which its users report diverging (T of 1e6-1e7, gpleiss/temperature_scaling#20, #23) or not converging. The
NLL of logits/T is convex in 1/T, so a bounded 1-D search cannot go wrong: a grid over log T in
[0.05, 20] finds the bracket of the minimum, and a golden-section search inside it refines T to ~1e-6.

T is kept only if it lowers the validation NLL, only with enough validation rows of every class to fit one
number honestly (MIN_ROWS, MIN_PER_CLASS), and never when the fit runs to the sharp end of the search range (a
validation set the model gets all right drives T to 0.05: every answer would then say 0.99). Kept, it is folded into the saved model: the weights and bias of the layer that
produces the logits are divided by T, so `predict`, the Python API, a server and plain
`transformers.pipeline` all give the calibrated probabilities with no code of ours. T is recorded in
finetune_bert.json ("temperature"), so the uncalibrated logits stay recoverable (logits * T).

A multi-label model has one sigmoid per label, each its own binary model: each label gets its own T, fitted
on that label's binary NLL with the same search and the same keep rules (positives and negatives as the two
classes), and folded into its own row of the head (`fold_rows`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch

from finetune_bert.evaluation.metrics import ECE_BINS, scores_of
from finetune_bert.data.tokens import Encoded


MIN_ROWS = 50
MIN_PER_CLASS = 10  # rows of each class in validation, so that no class's few rows decide T
T_RANGE = (0.05, 20.0)
GRID = 161           # points on log T: neighbours ~4% apart
GOLDEN_STEPS = 40    # shrinks the bracket by 0.618^40 ~ 4e-9
MEASURES = ("log_loss", "ece", "brier")


@dataclass(frozen=True)
class Temperature:
    """The outcome of a fit: `value` is what the model uses (1.0 unless kept)."""

    value: float
    fitted: float | None       # the minimiser found, kept or not (None: not fitted)
    nll_before: float | None
    nll_after: float | None
    rows: int
    note: str

    @property
    def kept(self) -> bool:
        return self.value != 1.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "kept": self.kept}


def nll(logits: torch.Tensor, labels: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of logits / t; `t` may be a vector of temperatures (one NLL each)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    scaled = logits.double()[None] / t.reshape(-1, 1, 1)
    logp = torch.log_softmax(scaled, dim=-1)
    picked = logp.gather(2, labels.reshape(1, -1, 1).expand(len(scaled), -1, 1))
    out = -picked.mean(dim=(1, 2))
    return out if t.ndim else out[0]


def binary_nll(logits: torch.Tensor, labels: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of sigmoid(logits / t) for one label's logits (n,) and 0/1 labels (n,);
    `t` may be a vector of temperatures (one NLL each). softplus(z) - y z: no log(0) at any z."""
    t = torch.as_tensor(t, dtype=torch.float64)
    scaled = logits.double()[None] / t.reshape(-1, 1)
    out = (torch.nn.functional.softplus(scaled) - labels.double()[None] * scaled).mean(dim=1)
    return out if t.ndim else out[0]


def _search(logits: torch.Tensor, labels: torch.Tensor, loss: Callable = nll) -> float:
    """The T in T_RANGE minimising `loss(logits, labels, t)` (nll, or binary_nll for one sigmoid): grid on
    log T, then golden section in the best point's bracket."""
    grid = torch.linspace(math.log(T_RANGE[0]), math.log(T_RANGE[1]), GRID, dtype=torch.float64)
    # a few thousand rows at a time, so the (grid, rows, classes) tensor stays small
    values = torch.zeros(GRID, dtype=torch.float64)
    for start in range(0, len(labels), 4096):
        part = slice(start, start + 4096)
        values += loss(logits[part], labels[part], grid.exp()) * len(labels[part])
    best = int(values.argmin())
    lo, hi = float(grid[max(best - 1, 0)]), float(grid[min(best + 1, GRID - 1)])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = float(loss(logits, labels, math.exp(a))), float(loss(logits, labels, math.exp(b)))
    for _ in range(GOLDEN_STEPS):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = float(loss(logits, labels, math.exp(a)))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = float(loss(logits, labels, math.exp(b)))
    return math.exp((lo + hi) / 2)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> Temperature:
    """Fit T on validation logits (n, k) and class ids (n,); keep it only if the NLL improves."""
    n = len(labels)
    if n < MIN_ROWS:
        return Temperature(1.0, None, None, None, n, f"not calibrated: {n} validation rows, fewer than the "
                                                     f"{MIN_ROWS} needed to fit a temperature")
    if (few := _too_few_per_class(labels, logits.shape[1])) is not None:
        return Temperature(1.0, None, None, None, n, f"not calibrated: {few}; one temperature fitted on such a "
                                                     "validation set would fit that, not the model")
    return _fit(logits.double().cpu(), labels.cpu(), nll)


def _fit(logits: torch.Tensor, labels: torch.Tensor, loss: Callable) -> Temperature:
    """The search and the keep rules, the same for softmax and for one sigmoid (`loss`: nll or binary_nll)."""
    n = len(labels)
    t = _search(logits, labels, loss)
    before, after = float(loss(logits, labels, 1.0)), float(loss(logits, labels, t))
    if not after < before - 1e-9:
        return Temperature(1.0, t, before, before, n, f"not calibrated: the fitted temperature {t:.3f} did not "
                                                      f"lower the validation NLL ({before:.4f}); kept T = 1")
    if abs(math.log(t / T_RANGE[0])) < 0.05:
        # the NLL still falls at the sharp end: no minimum inside the range, so some quirk of validation (one
        # class, or a few rows all right) would make every answer near-certain
        return Temperature(1.0, t, before, before, n, f"not calibrated: the fit ran to the sharp end of its range "
                                                      f"({t:.3f}, range {T_RANGE[0]}-{T_RANGE[1]}); kept T = 1")
    # at the flat end the model's confidence says nothing on validation: flattening it is the honest answer
    edge = " (the flat end of its range: on validation the model's confidence carries no information)" \
        if abs(math.log(t / T_RANGE[1])) < 0.05 else ""
    return Temperature(t, t, before, after, n, f"temperature {t:.3f}{edge} fitted on {n} validation rows "
                                               f"(NLL {before:.4f} -> {after:.4f})")


def _too_few_per_class(labels: torch.Tensor, classes: int) -> str | None:
    """Why validation cannot calibrate `classes` classes (only one class in it, or a class with fewer than
    MIN_PER_CLASS rows), or None."""
    counts = torch.bincount(labels.long().cpu(), minlength=classes)
    if int((counts > 0).sum()) < 2:
        return f"validation holds one class only ({int(counts.argmax())})"
    if int(counts.min()) < MIN_PER_CLASS:
        rare = int(counts.argmin())
        return f"class {rare} has {int(counts[rare])} validation rows, fewer than the {MIN_PER_CLASS} needed"
    return None


def head_layer(model: torch.nn.Module) -> str | None:
    """The name of the linear layer that produces the logits: the last nn.Linear with num_labels outputs
    (BERT's `classifier`, RoBERTa's `classifier.out_proj`, DistilBERT's `classifier`)."""
    k = model.config.num_labels
    found = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.out_features == k]
    return found[-1] if found else None


def fold(weights: dict[str, torch.Tensor], layer: str, t: float) -> dict[str, torch.Tensor]:
    """The state dict with the logits layer divided by t: logits(x) / t = (W / t) x + b / t."""
    out = dict(weights)
    for suffix in ("weight", "bias"):
        name = f"{layer}.{suffix}"
        if name in out:
            out[name] = out[name] / t
    return out


def fold_rows(weights: dict[str, torch.Tensor], layer: str, temps) -> dict[str, torch.Tensor]:
    """The state dict with row k of the logits layer divided by temps[k]: one temperature per output (per
    label), logit_k(x) / t_k = (W_k / t_k) x + b_k / t_k."""
    out = dict(weights)
    for suffix in ("weight", "bias"):
        name = f"{layer}.{suffix}"
        if name in out:
            t = torch.as_tensor(list(temps), dtype=out[name].dtype, device=out[name].device)
            out[name] = out[name] / t.reshape(-1, *([1] * (out[name].ndim - 1)))
    return out


def before_after(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The calibration measures (and the reliability bins) of two metrics dicts, side by side."""
    keys = (*MEASURES, "reliability")
    return {"before": {k: before[k] for k in keys}, "after": {k: after[k] for k in keys}}


def summary_line(t: Temperature, splits: dict[str, dict[str, Any]]) -> str:
    """One line for a person: what T is, and what it did to ECE, NLL and Brier on each split."""
    parts = [t.note]
    for split, pair in splits.items():
        b, a = pair["before"], pair["after"]
        parts.append(f"{split} ECE {100 * b['ece']:.2f}% -> {100 * a['ece']:.2f}%, NLL {b['log_loss']:.4f} -> "
                     f"{a['log_loss']:.4f}, Brier {b['brier']:.4f} -> {a['brier']:.4f}")
    return "calibration: " + "; ".join(parts)


def calibrate(engine, val: Encoded, label_names: list[str], batch_size: int,
              enabled: bool = True) -> tuple[Temperature, dict[str, Any], torch.Tensor]:
    """Fit T on the engine's (torch_engine.Engine) validation logits and, if kept, fold it into the engine's
    weights. Returns the outcome, the validation measures before and after, and the calibrated logits."""
    logits = engine.logits(val, batch_size)
    if not enabled:
        t = Temperature(1.0, None, None, None, len(val), "not calibrated: --no-calibrate")
    else:
        t = fit_temperature(logits, torch.from_numpy(val.labels))
    layer = head_layer(engine.model)
    if t.kept and layer is None:
        t = replace(t, value=1.0, note="not calibrated: no linear layer with one output per class to fold a "
                                       "temperature into")
    if t.kept:
        engine.load_weights(fold(engine.weights(), layer, t.value))
    after = logits / t.value
    return t, before_after(scores_of(logits, val, label_names), scores_of(after, val, label_names)), after


def score_calibrated(engine, encoded: Encoded, label_names: list[str], batch_size: int,
                     t: Temperature, metric: str | None = None
                     ) -> tuple[dict[str, Any], dict[str, Any], torch.Tensor]:
    """The (calibrated) engine's metrics on labelled data (with `metric`, a scikit-learn metric by name), the
    measures before and after calibration (the same logits times T), and the logits."""
    logits = engine.logits(encoded, batch_size)
    metrics = scores_of(logits, encoded, label_names, metric=metric)
    return metrics, before_after(scores_of(logits * t.value, encoded, label_names), metrics), logits


def fit_label_temperature(logits: torch.Tensor, labels: torch.Tensor) -> Temperature:
    """Fit one label's T on its validation logits (n,) and 0/1 labels (n,), on the binary NLL; the rules of
    fit_temperature, with positives and negatives as the two classes."""
    n = len(labels)
    if n < MIN_ROWS:
        return Temperature(1.0, None, None, None, n, f"not calibrated: {n} validation rows, fewer than the "
                                                     f"{MIN_ROWS} needed to fit a temperature")
    positives = int((labels > 0.5).sum())
    if min(positives, n - positives) < MIN_PER_CLASS:
        return Temperature(1.0, None, None, None, n, f"not calibrated: {positives} positive and {n - positives} "
                                                     f"negative validation rows, fewer than the {MIN_PER_CLASS} of "
                                                     "each needed")
    return _fit(logits.double().cpu(), (labels.cpu() > 0.5).double(), binary_nll)


def fit_label_temperatures(logits: torch.Tensor, labels: torch.Tensor) -> list[Temperature]:
    """One temperature per label (multi-label: each sigmoid is its own binary model), logits and multi-hot
    labels (n, K)."""
    return [fit_label_temperature(logits[:, k], labels[:, k]) for k in range(logits.shape[1])]


def binary_measures(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """NLL, ECE and Brier of one label's probability sigmoid(logits) against its 0/1 labels (n,). ECE bins the
    label's own probability (ECE_BINS equal-width bins, (lo, hi]), not a top-label confidence: a multi-label
    output says "this label applies with probability p", and that is the claim to check."""
    y = (labels.double().cpu() > 0.5).double()
    p = torch.sigmoid(logits.double().cpu())
    bins = (torch.ceil(p * ECE_BINS).long() - 1).clamp(0, ECE_BINS - 1)
    count = torch.bincount(bins, minlength=ECE_BINS).double()
    gap = torch.bincount(bins, weights=y - p, minlength=ECE_BINS).abs()
    return {"log_loss": float(binary_nll(logits, y, 1.0)), "ece": float(gap.sum() / max(float(count.sum()), 1.0)),
            "brier": float(((p - y) ** 2).mean())}


def label_measures(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor,
                   label_names: list[str]) -> dict[str, Any]:
    """NLL, ECE and Brier before and after calibration, averaged over labels, and each label's."""
    per_label = {name: {"before": binary_measures(before[:, k], labels[:, k]),
                        "after": binary_measures(after[:, k], labels[:, k])} for k, name in enumerate(label_names)}
    mean = {when: {m: float(sum(d[when][m] for d in per_label.values()) / max(len(per_label), 1)) for m in MEASURES}
            for when in ("before", "after")}
    return {**mean, "per_label": per_label}


def calibrate_labels(engine, val: Encoded, label_names: list[str], batch_size: int,
                     enabled: bool = True) -> tuple[list[Temperature], dict[str, Any], torch.Tensor]:
    """calibrate() for a multi-label model: a temperature per label fitted on the engine's validation logits,
    the kept ones folded into their rows of the head. Returns the outcomes, the measures before and after,
    and the calibrated logits."""
    logits = engine.logits(val, batch_size)
    labels = torch.from_numpy(val.labels)
    if not enabled:
        temps = [Temperature(1.0, None, None, None, len(val), "not calibrated: --no-calibrate")] * len(label_names)
    else:
        temps = fit_label_temperatures(logits, labels)
    layer = head_layer(engine.model)
    if any(t.kept for t in temps) and layer is None:
        temps = [replace(t, value=1.0, note="not calibrated: no linear layer with one output per label to fold a "
                                            "temperature into") for t in temps]
    values = [t.value for t in temps]
    if any(t.kept for t in temps):
        engine.load_weights(fold_rows(engine.weights(), layer, values))
    after = logits / torch.tensor(values, dtype=logits.dtype, device=logits.device)
    return temps, label_measures(logits, after, labels, label_names), after
