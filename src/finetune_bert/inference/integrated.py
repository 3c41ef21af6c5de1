"""Integrated Gradients through Captum on a Classifier's torch model, for attributions.py (which says what is
attributed and why): the rows of several texts moved from their baselines together, f computed per text from
its rows' aggregated logits at every point of the path. torch and Captum are imported here only, when an
explanation is asked for."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from finetune_bert.data.tokens import pad_id
from finetune_bert.tasks import MULTI_LABEL, REGRESSION


@dataclass
class Found:
    """One text's attributions: each row's weight per position (its row's length), f at the input and at the
    baseline, and the index of what was explained."""

    rows: list[np.ndarray]
    value: float
    baseline: float
    target: int


@dataclass
class _Plan:
    """What turns a pass's rows into each text's f: the rows per point, each row's text, the texts' row counts,
    their targets, and how the model is run (its kind, the windows' aggregate, the dtype it computes in)."""

    model: Any
    rows: int
    owner: torch.Tensor
    counts: torch.Tensor
    targets: torch.Tensor | None
    task: str
    how: str
    dtype: torch.dtype
    autocast: torch.dtype | None
    types: bool  # the model's forward takes token type ids


def integrate(clf: Any, reads: list[Any], targets: list[int | None], steps: int, batch_size: int) -> list[Found]:
    """Each read's attributions (attributions._Read), in their order: texts of similar widths grouped so that a
    pass holds about `batch_size` rows."""
    out: list[Found | None] = [None] * len(reads)
    order = sorted(range(len(reads)), key=lambda i: reads[i].width)
    with torch.inference_mode(False):  # under a caller's inference mode, no tensor could take a gradient
        for group in _groups(order, reads, batch_size):
            for i, found in zip(group, _group(clf, [reads[i] for i in group], [targets[i] for i in group], steps,
                                              batch_size)):
                out[i] = found
    return out  # type: ignore[return-value]


def _groups(order: list[int], reads: list[Any], batch_size: int) -> Iterator[list[int]]:
    group, rows = [], 0
    for i in order:
        if group and rows + len(reads[i].rows) > batch_size:
            yield group
            group, rows = [], 0
        group.append(i)
        rows += len(reads[i].rows)
    if group:
        yield group


def _group(clf: Any, reads: list[Any], targets: list[int | None], steps: int, batch_size: int) -> list[Found]:
    """One group's texts: f at both ends (which also decides each target left open), then the integral."""
    from captum.attr import IntegratedGradients

    model = clf.model
    if model.training:
        raise RuntimeError("explain needs the model in eval mode: dropout would make the gradients random")
    ids, base, mask, types = _tensors(reads, pad_id(clf.tokenizer), clf.device)
    plan = _plan(clf, [len(r.rows) for r in reads], types is not None)
    with torch.no_grad():
        embed = model.get_input_embeddings()
        x, b = embed(ids).float(), embed(base).float()
        ends = _activate(_aggregated(model, torch.cat([x, b]), torch.cat([mask, mask]),
                                     None if types is None else torch.cat([types, types]), plan), clf.task)
    chosen = [t if t is not None else _default(ends[0, j], clf.task) for j, t in enumerate(targets)]
    plan.targets = torch.tensor(chosen, device=clf.device)
    values = ends[:, torch.arange(len(reads)), plan.targets].double().cpu().numpy()
    with torch.enable_grad():
        attr = IntegratedGradients(_row_outputs).attribute(
            x, baselines=b, additional_forward_args=(mask, types, plan), n_steps=steps, method="gausslegendre",
            internal_batch_size=max(batch_size, len(ids)))
    weights = attr.double().sum(-1).cpu().numpy()
    out, at = [], 0
    for j, read in enumerate(reads):
        rows = [weights[at + k, :len(row)] for k, row in enumerate(read.rows)]
        at += len(read.rows)
        out.append(Found(rows, float(values[0, j]), float(values[1, j]), chosen[j]))
    return out


def _plan(clf: Any, counts: list[int], paired: bool) -> _Plan:
    model, engine, device = clf.model, clf.engine, clf.device
    owner = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(device)
    return _Plan(model, sum(counts), owner, torch.tensor(counts, dtype=torch.float32, device=device), None, clf.task,
                 clf.reading.how, model.get_input_embeddings().weight.dtype,
                 engine.dtype if engine.dtype is not None and not engine.bf16_weights else None,
                 paired and "token_type_ids" in inspect.signature(model.forward).parameters)


def _tensors(reads: list[Any], pad: int, device) -> tuple[torch.Tensor, ...]:
    """The rows padded to one width: ids, the baseline ids (the text's tokens as [PAD], special tokens kept),
    the attention mask (the input's, for both) and the token type ids (None for single texts)."""
    rows = [(read, k) for read in reads for k in range(len(read.rows))]
    width = max(len(read.rows[k]) for read, k in rows)
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    paired = reads[0].types is not None
    types = np.zeros((len(rows), width), dtype=np.int64) if paired else None
    base = ids.copy()
    for i, (read, k) in enumerate(rows):
        row = np.asarray(read.rows[k])
        ids[i, :len(row)] = base[i, :len(row)] = row
        mask[i, :len(row)] = 1
        base[i, read.places[k][0]] = pad
        if types is not None:
            types[i, :len(row)] = read.types[k]
    out = [torch.from_numpy(a).to(device) for a in (ids, base, mask)]
    return (*out, None if types is None else torch.from_numpy(types).to(device))


def _aggregated(model, embeds: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None,
                plan: _Plan) -> torch.Tensor:
    """Each text's logits (points, texts, k) at each point of a pass whose rows are `plan.rows` per point: its
    windows' logits aggregated as the Classifier aggregates them (classifier.aggregate), in fp32."""
    inputs = {"inputs_embeds": embeds.to(plan.dtype), "attention_mask": mask}
    if plan.types and types is not None:
        inputs["token_type_ids"] = types
    with torch.autocast(embeds.device.type, dtype=plan.autocast, enabled=plan.autocast is not None):
        logits = model(**inputs).logits.float()
    z = logits.view(-1, plan.rows, logits.shape[-1])
    points, texts = z.shape[0], len(plan.counts)
    if plan.how == "max":
        index = plan.owner.view(1, -1, 1).expand_as(z)
        return z.new_full((points, texts, z.shape[-1]), -torch.inf).scatter_reduce(1, index, z, "amax")
    return z.new_zeros((points, texts, z.shape[-1])).index_add(1, plan.owner, z) / plan.counts.view(1, -1, 1)


def _activate(logits: torch.Tensor, task: str) -> torch.Tensor:
    """tasks.activate in torch: what the outputs mean (class probabilities, label probabilities, values)."""
    if task == MULTI_LABEL:
        return torch.sigmoid(logits)
    if task == REGRESSION:
        return logits
    return torch.softmax(logits, dim=-1)


def _default(scores: torch.Tensor, task: str) -> int:
    """What is explained when no target is given: the predicted class, the most probable label, the value."""
    return 0 if task == REGRESSION else int(scores.argmax())


def _row_outputs(embeds: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None, plan: _Plan) -> torch.Tensor:
    """Captum's forward: one number per row whose sum over a text's rows is the text's f, so the gradient of the
    sum with respect to each row is that of the whole text's f (its windows read together)."""
    f = _activate(_aggregated(plan.model, embeds, mask, types, plan), plan.task)
    f = f.gather(2, plan.targets.view(1, -1, 1).expand(f.shape[0], -1, 1)).squeeze(2)
    return (f[:, plan.owner] / plan.counts[plan.owner]).reshape(-1)

