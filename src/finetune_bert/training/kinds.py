"""What training does differently per task kind: the loss, the weights of the loss, and a regression
head's target scaling, folded into the saved weights as a temperature is.

A regression model learns z-scores of its targets (train's mean and deviation): the loss and the learning rate
then mean the same whatever the targets' units. Every model saved (each best one, and the final) has the
scaling folded into its last layer, so the folder predicts in the user's units for every tool; checkpoints
keep the weights as trained."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from finetune_bert.evaluation.calibration import head_layer
from finetune_bert.tasks import CLASSIFICATION, MULTI_LABEL, REGRESSION


def loss_sum(task: str, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The batch's loss summed over its texts (the step divides by its text count): cross-entropy; for label
    sets the binary cross-entropy averaged over labels (`weights`: each label's pos_weight); for regression
    the squared error of the z-scores."""
    if task == MULTI_LABEL:
        per_cell = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=weights, reduction="sum")
        return per_cell / logits.shape[1]
    if task == REGRESSION:
        return F.mse_loss(logits.squeeze(-1), labels, reduction="sum")
    return F.cross_entropy(logits, labels, weight=weights, reduction="sum")


def loss_weights(task: str, labels: np.ndarray, k: int, device: torch.device) -> torch.Tensor | None:
    """--class-weights auto: inverse class frequency (classification), or each label's negatives over its
    positives as BCE's pos_weight (multi-label), so that a rare label's few positives count as much as its
    many negatives."""
    if task == MULTI_LABEL:
        positives = labels.sum(axis=0).astype(np.float64)
        weights = (len(labels) - positives) / np.maximum(positives, 1)
    elif task == CLASSIFICATION:
        counts = np.bincount(labels, minlength=k).astype(np.float64)
        weights = counts.sum() / (k * np.maximum(counts, 1))
    else:
        return None
    return torch.tensor(weights, dtype=torch.float32, device=device)


def fold_scale(weights: dict[str, torch.Tensor], model, scale: tuple[float, float],
               undo: bool = False) -> dict[str, torch.Tensor]:
    """The state dict whose head outputs z * std + mean instead of z (or, `undo`, back): W * std, b * std +
    mean. The identity when there is no scaling (every kind but regression)."""
    mean, std = scale
    if (mean, std) == (0.0, 1.0):
        return weights
    layer = head_layer(model)
    out = dict(weights)
    w, b = f"{layer}.weight", f"{layer}.bias"
    if undo:
        out[w], out[b] = out[w] / std, (out[b] - mean) / std
    else:
        out[w], out[b] = out[w] * std, out[b] * std + mean
    return out


def shift_bias(weights: dict[str, torch.Tensor], model, shift: torch.Tensor) -> dict[str, torch.Tensor]:
    """The state dict with `shift` (one value per output) added to the head's bias: each logit moved by it."""
    out = dict(weights)
    name = f"{head_layer(model)}.bias"
    out[name] = out[name] + shift.to(out[name].dtype).to(out[name].device)
    return out


def prior_correction(pos_weight: torch.Tensor | None) -> torch.Tensor | None:
    """What undoes BCE's pos_weight in the logits: a label whose positives weigh w is learned with its logit
    raised by log w (the weighted optimum is sigmoid(z) = w p / (w p + 1 - p)), so its probabilities would
    overstate the label; subtracting log w gives back the label's own odds. Decisions are tuned after it."""
    return None if pos_weight is None else -torch.log(pos_weight.float().cpu())
