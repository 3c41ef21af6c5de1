"""One optimizer step and one evaluation, each surviving out-of-memory errors and NaNs.

Out of memory: the step's batch is split into twice as many micro-batches (the effective batch, and so the
update, stays the same because losses are summed and divided by the step's example count) and the step is
redone from scratch; evaluation halves its batch. Past micro-batch 1 there is nothing left to halve.
NaN/inf: a step whose loss or gradient is not finite is skipped (no update), counted, and after
`max_bad_steps` in a row the run stops. With a fused optimizer (GPU) the skip happens on the device and the
host learns of it at the next `settle` (each log record, evaluation and checkpoint), so a step never waits
for the GPU to finish the one before it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from finetune_bert import faults
from finetune_bert.engine.batches import micro_batches, real_tokens, to_device
from finetune_bert.training.checkpoint import TrainState
from finetune_bert.engine.distributed import World, step_share, vote
from finetune_bert.errors import UserError, is_oom
from finetune_bert.evaluation.scoring import score_engine
from finetune_bert.tasks import CLASSIFICATION, Scoring
from finetune_bert.training.kinds import Distillation, distill_loss_sum, loss_sum
from finetune_bert.data.tokens import Encoded
from finetune_bert.console import console


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def _forward_backward(engine, enc: Encoded, share: Share, splits: int, options: StepOptions,
                      step: int) -> _Pass:
    """Forward and backward over this rank's micro-batches of a step, through `engine` as a module (under
    DDP, the wrapper's forward). Under DDP the last micro-batch's backward is left to the caller
    (`_Pass.last`): it is the one that exchanges the gradients, which must wait until every rank is known to
    have got this far. An out-of-memory error is kept in `_Pass.oom`, not raised. `options`: the loss's kind
    and weights."""
    core = getattr(engine, "module", engine)  # the Engine itself, wrapped (DDP) or not
    defer_last = hasattr(engine, "no_sync")
    device, layout = core.device, core.layout
    out = _Pass(torch.zeros((), device=device))
    lengths = enc.lengths_at(share.index)
    micros = micro_batches(share.index, lengths, splits, layout.capped_fit)
    try:
        faults.at_step(step)
        for i, micro in enumerate(micros):
            host = layout.batch(enc, micro)
            out.tokens += real_tokens(host) if share.weight else 0  # on the host: no device sync per micro-batch
            batch = to_device(host, device)
            last = i == len(micros) - 1
            with engine.no_sync() if hasattr(engine, "no_sync") and not last else contextlib.nullcontext():
                logits = engine(batch)
                loss = batch_loss(options, logits, batch) * share.weight
                if faults.hit("loss", step):
                    loss = loss * float("nan")
                out.loss += loss.detach() / share.scale
                if last and defer_last:
                    out.last = loss
                else:
                    loss.backward()
    except Exception as exc:
        if not is_oom(exc):
            raise
        out.oom, out.last = exc, None
    return out


@dataclass
class _Pass:
    loss: torch.Tensor                   # the step's loss from this rank's texts (summed / global count)
    tokens: int = 0
    last: torch.Tensor | None = None     # the last micro-batch's loss, its backward still to run
    oom: BaseException | None = None


@dataclass(frozen=True)
class Share:
    """This rank's texts of a step (all of them, alone) and the factor on each one's summed loss: 1 / the
    step's count, times the number of ranks under DDP (which averages the ranks' gradients)."""

    index: np.ndarray
    weight: float
    scale: float = 1.0  # the number of ranks: divided back out of the loss that is reported

    @staticmethod
    def of(batch_index: np.ndarray, world: World) -> Share:
        mine, weight = step_share(batch_index, world)
        return Share(mine, weight, float(world.size))


def defers_checks(optimizer) -> bool:
    """A fused AdamW can skip a non-finite step on the device itself (`found_inf`, as GradScaler uses it),
    so the step needs no host sync: the CPU queues the next step while the GPU runs this one."""
    return bool(optimizer.defaults.get("fused"))


@dataclass(frozen=True)
class StepOptions:
    """What a training step needs besides the model and the data: class weights, gradient clipping, the loss."""

    weights: torch.Tensor | None = None  # class weights, or multi-label pos_weights, of the loss (--class-weights auto)
    max_grad_norm: float = 1.0           # 0: no clipping
    task: str = CLASSIFICATION           # which loss (training.kinds.loss_sum)
    distillation: Distillation = Distillation()  # the mix of losses where a batch carries a teacher's outputs

    @classmethod
    def of(cls, cfg, weights: torch.Tensor | None, task: str) -> StepOptions:
        """A run's step options from its config: a TrainConfig, or one that distils (kd_temperature, kd_alpha)."""
        return cls(weights, cfg.max_grad_norm, task, Distillation.of(cfg))


def batch_loss(options: StepOptions, logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """The batch's loss summed over its texts: its kind's, or, where the batch carries a teacher's outputs
    (distill), the mix of the true labels' and the teacher's (training.kinds.distill_loss_sum)."""
    teacher = batch.get("teacher_logits")
    if teacher is None:
        return loss_sum(options.task, logits, batch["labels"], options.weights)
    return distill_loss_sum(options.task, logits, batch["labels"], teacher, options.weights, options.distillation)


def train_step(engine, optimizer, enc: Encoded, batch_index: np.ndarray, state: TrainState,
               options: StepOptions = StepOptions()) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward and update for one step's batch. Returns (loss, finite) as 0-d tensors, still on
    the device: `settle` reads them later. A step whose loss or gradient norm is not finite is not applied.
    `engine`: an torch_engine.Engine, or one wrapped in DistributedDataParallel (its `world` says which)."""
    core = getattr(engine, "module", engine)
    step, world = state.step + 1, core.world
    share = Share.of(batch_index, world)
    while True:
        done = _forward_backward(engine, enc, share, state.micro_splits, options, step)
        # every rank's loss and out-of-memory flag, before the gradients are exchanged: all retry or none
        loss, oom, tokens = vote(done.loss, done.oom is not None, done.tokens, world)
        if not oom:
            break
        if world.several:
            _abandon(engine, enc, share, done)
        done = None  # the graphs of a step to redo: freed before the retry, not during it
        core.model.zero_grad(set_to_none=True)
        _free(core.device)
        _back_off(state, step, -(-len(batch_index) // world.size), world.several)
    if done.last is not None:
        _last_backward(done, step, world)
    state.tokens_seen += tokens
    core.gradients_to_masters()
    limit = options.max_grad_norm if options.max_grad_norm > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(core.trainable(), limit)  # of the exchanged gradients: equal on all ranks
    finite = torch.isfinite(loss) & torch.isfinite(norm)
    if defers_checks(optimizer):
        optimizer.found_inf = (~finite).float()
        optimizer.step()
    elif bool(finite):
        optimizer.step()
    core.masters_to_weights()
    return loss, finite


def _abandon(engine, enc: Encoded, share: Share, done: _Pass) -> None:
    """Before a step is redone under DDP: a rank whose synced forward ran expects its backward (DDP's
    reducer would otherwise exchange gradients in the next micro-batch's backward, alone), so every rank
    runs one exchanging backward, of nothing: a rank that ran out of memory before its synced forward first
    makes one of a single text. The gradients are thrown away."""
    last = done.last
    if last is None:
        core = engine.module
        faults.at_step(0)  # no injected fault in this pass
        last = engine(to_device(core.layout.batch(enc, share.index[:1]), core.device)).sum()
    (last * 0).backward()


def _last_backward(done: _Pass, step: int, world: World) -> None:
    """The last micro-batch's backward: under DDP, the gradient exchange. Out of memory here cannot be
    retried with several processes (the others are already exchanging); alone it is backed off as usual."""
    try:
        done.last.backward()
    except Exception as exc:
        if not is_oom(exc) or not world.several:
            raise
        raise UserError(f"out of memory at step {step} in the backward pass that exchanges gradients between "
                        "processes, which cannot be redone; rerun with --resume and twice the --grad-accum "
                        "(the same update, in smaller micro-batches)") from None


def _back_off(state: TrainState, step: int, texts: int, several: bool) -> None:
    """After an out-of-memory error: twice as many micro-batches for the same step, or a clear stop. `texts`:
    the most texts of the step one process has (the whole batch, alone), the same number on every rank, so
    that every rank takes the same decision."""
    if state.micro_splits >= texts:
        raise UserError(f"out of memory at step {step} even with micro-batch 1; lower --max-length "
                        "or use a smaller model") from None
    state.micro_splits = min(state.micro_splits * 2, texts)
    micro = math.ceil(texts / state.micro_splits)
    console.warn(f"out of memory at step {step}: micro-batch now {micro}{' in each process' if several else ''} "
        f"with {state.micro_splits} accumulation steps (effective batch unchanged); retrying the step")


def settle(pending: list[tuple[int, torch.Tensor, torch.Tensor]], state: TrainState, max_bad_steps: int) -> list[float]:
    """Read the queued steps' losses and finiteness (one device sync); warn about skipped steps and stop after
    `max_bad_steps` in a row. Returns the losses of the applied steps; empties `pending`."""
    if not pending:
        return []
    read = torch.stack([torch.stack([loss, ok.to(loss.dtype)]) for _, loss, ok in pending]).tolist()  # one sync
    losses, finite = [r[0] for r in read], [bool(r[1]) for r in read]
    steps = [step for step, _, _ in pending]
    pending.clear()
    applied = []
    for step, loss, ok in zip(steps, losses, finite):
        if ok:
            state.bad_steps = 0
            applied.append(loss)
            continue
        state.bad_steps += 1
        state.skipped_steps += 1
        console.warn(f"step {step} skipped: its loss ({loss}) or gradient norm is not finite "
            f"({state.bad_steps} in a row)")
        if state.bad_steps >= max_bad_steps:
            raise UserError(f"{state.bad_steps} steps in a row had a NaN or inf loss or gradient (last at step {step}); "
                            "stopping. The last good checkpoint is kept in OUTPUT/checkpoints; try a lower --lr")
    return applied


def evaluate_step(engine, enc: Encoded, label_names: list[str], state: TrainState,
                  scoring: Scoring = Scoring()) -> dict[str, Any]:
    """Validation metrics of `engine` (an torch_engine.Engine), scored as its kind is (a multi-label model's
    thresholds tuned on validation, as the finished model's will be); on out-of-memory the evaluation batch is
    halved and the evaluation redone."""
    step = state.step

    def on_batch(i: int) -> None:
        if i == 1:
            faults.hit("eval", step)  # tests kill or OOM here: mid-evaluation

    while True:
        try:
            return score_engine(engine, enc, label_names, state.eval_batch_size, scoring, on_batch=on_batch, tune=True)
        except Exception as exc:
            if not is_oom(exc):
                raise
            _free(engine.device)
            if state.eval_batch_size == 1:
                raise UserError("out of memory in evaluation even with batch 1; lower --max-length") from None
            state.eval_batch_size //= 2
            console.warn(f"out of memory in evaluation: evaluation batch now {state.eval_batch_size}")


def stop_on_signal() -> tuple[dict[str, int], Callable[[], None]]:
    """SIGINT/SIGTERM set a flag the loop checks between steps; returns (flag, restore)."""
    import signal
    import threading

    flag = {"signal": 0}
    if threading.current_thread() is not threading.main_thread():
        return flag, lambda: None
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if flag["signal"]:
            # a second Ctrl-C: stop now; a second SIGTERM (torchrun sends its workers more than one) waits
            # for the checkpoint, and a scheduler that cannot wait has SIGKILL
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        flag["signal"] = signum
        console.say("\nstopping: saving a checkpoint after this step (Ctrl-C again to stop at once)")

    for s in previous:
        signal.signal(s, handler)
    return flag, lambda: [signal.signal(s, h) for s, h in previous.items()]
