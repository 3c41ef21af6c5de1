"""What training does differently per task kind: the loss, the weights of the loss (--class-weights), and a
regression head's target scaling, folded into the saved weights as a temperature is.

A regression model learns z-scores of its targets (train's mean and deviation): the loss and the learning rate
then mean the same whatever the targets' units. Every model saved (each best one, and the final) has the
scaling folded into its last layer, so the folder predicts in the user's units for every tool; checkpoints
keep the weights as trained."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from finetune_bert.evaluation.calibration import head_layer
from finetune_bert.tasks import CLASSIFICATION, MULTI_LABEL, REGRESSION
from finetune_bert.training.class_weights import by_name
from finetune_bert.training.config import KD_ALPHA, KD_TEMPERATURE


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
    many negatives. Rows without a label (distillation's unlabelled texts) are left out of the counts."""
    labels = labels[labelled(labels)]
    if task == MULTI_LABEL:
        positives = labels.sum(axis=0).astype(np.float64)
        weights = (len(labels) - positives) / np.maximum(positives, 1)
    elif task == CLASSIFICATION:
        counts = np.bincount(labels, minlength=k).astype(np.float64)
        weights = counts.sum() / (k * np.maximum(counts, 1))
    else:
        return None
    return torch.tensor(weights, dtype=torch.float32, device=device)


def class_weights(spec: str, ds, labels: np.ndarray, device: torch.device) -> torch.Tensor | None:
    """The loss's weights --class-weights asks for (None: none): `auto` from the training labels (`loss_weights`),
    or the weights given by label name (training.class_weights), cross-entropy's `weight` or BCE's `pos_weight`.
    `ds`: the data.dataset.Dataset whose labels are named."""
    if spec == "auto":
        return loss_weights(ds.task, labels, len(ds.label_names), device)
    given = by_name(spec, ds.label_names, ds.raw_labels) if ds.task != REGRESSION else None
    return None if given is None else torch.tensor(given, dtype=torch.float32, device=device)




@dataclass(frozen=True)
class Distillation:
    """How a distilled step mixes its two losses: `alpha` of the true labels', 1 - alpha of the teacher's at
    `temperature`."""

    temperature: float = KD_TEMPERATURE
    alpha: float = KD_ALPHA

    @classmethod
    def of(cls, cfg) -> Distillation:
        """The settings a run's config gives; a plain train config has none and gets the defaults (they apply
        only to batches that carry a teacher's outputs)."""
        return cls(float(getattr(cfg, "kd_temperature", KD_TEMPERATURE)), float(getattr(cfg, "kd_alpha", KD_ALPHA)))


def no_labels(task: str, n: int, k: int) -> np.ndarray:
    """The labels of `n` rows that have none (distillation's unlabelled texts), as `labelled` recognises them:
    class id -1, or NaN in float targets (multi-hot rows, standardised values)."""
    if task == MULTI_LABEL:
        return np.full((n, k), np.nan, dtype=np.float32)
    if task == REGRESSION:
        return np.full(n, np.nan, dtype=np.float32)
    return np.full(n, -1, dtype=np.int64)


def labelled(labels):
    """Which rows of `labels` (numpy or torch) have a label: see `no_labels`."""
    floating = labels.dtype.is_floating_point if isinstance(labels, torch.Tensor) else labels.dtype.kind == "f"
    if not floating:
        return labels >= 0
    known = labels == labels  # NaN is the one value not equal to itself
    return known.all(1) if labels.ndim == 2 else known


def distill_loss_sum(task: str, logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor,
                     weights: torch.Tensor | None, kd: Distillation) -> torch.Tensor:
    """The batch's distillation loss summed over its texts: alpha times the kind's own loss on the true labels
    (rows without one count with the teacher alone) plus 1 - alpha times the distance to the teacher: T^2 times
    the KL divergence of the softened distributions (Hinton et al.: T^2 keeps the gradients' size as T
    changes), per label for label sets (Bernoulli), or the squared distance to the teacher's value."""
    known = labelled(labels)
    return kd.alpha * _true_loss(task, logits, labels, weights, known) + (1 - kd.alpha) * \
        _teacher_loss(task, logits, teacher, kd.temperature)


def _true_loss(task: str, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None,
               known: torch.Tensor) -> torch.Tensor:
    """`loss_sum` over the rows that have a label, with no host sync (no boolean indexing): the others' label
    stands in as 0 and their loss is multiplied by 0."""
    mask = known.to(logits.dtype)
    if task == MULTI_LABEL:
        target = torch.nan_to_num(labels, nan=0.0)
        cells = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weights, reduction="none")
        return (cells.mean(dim=1) * mask).sum()
    if task == REGRESSION:
        return ((logits.squeeze(-1) - torch.nan_to_num(labels, nan=0.0)) ** 2 * mask).sum()
    rows = F.cross_entropy(logits, labels.clamp(min=0), weight=weights, reduction="none")
    return (rows * mask).sum()


def _teacher_loss(task: str, logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    if task == REGRESSION:
        return ((logits.squeeze(-1) - teacher.squeeze(-1)) ** 2).sum()
    student, soft = logits / temperature, teacher / temperature
    if task == MULTI_LABEL:
        p = torch.sigmoid(soft)
        # KL(p || q) per label = BCE(q; p) - H(p): the teacher's own entropy makes it 0 where they agree
        cells = F.binary_cross_entropy_with_logits(student, p, reduction="none") - \
            F.binary_cross_entropy_with_logits(soft, p, reduction="none")
        return temperature ** 2 * cells.mean(dim=1).sum()
    return temperature ** 2 * F.kl_div(F.log_softmax(student, dim=1), F.log_softmax(soft, dim=1), log_target=True,
                                       reduction="sum")


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
