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
from finetune_bert.batches import micro_batches, real_tokens, to_device
from finetune_bert.checkpoint import TrainState
from finetune_bert.errors import UserError
from finetune_bert.metrics import score
from finetune_bert.tokens import Encoded
from finetune_bert.output import say


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def _forward_backward(engine, enc: Encoded, batch_index: np.ndarray, splits: int, weights: torch.Tensor | None,
                      step: int) -> tuple[torch.Tensor, int]:
    """Forward and backward over the step's micro-batches, through `engine` as a module (under DDP, the
    wrapper's forward). `weights`: class weights of the loss."""
    core = getattr(engine, "module", engine)  # the Engine itself, wrapped (DDP) or not
    device, layout = core.device, core.layout
    loss_sum, tokens = torch.zeros((), device=device), 0
    lengths = np.fromiter((len(enc.ids[i]) for i in batch_index), dtype=np.int64, count=len(batch_index))
    micros = micro_batches(batch_index, lengths, splits, layout.capped_fit)
    for i, micro in enumerate(micros):
        faults.hit("forward", step)
        host = layout.batch(enc, micro)
        tokens += real_tokens(host)  # counted on the host: no device sync per micro-batch
        batch = to_device(host, device)
        # under DDP, gradients are all-reduced once per step, with the last micro-batch's backward
        with engine.no_sync() if hasattr(engine, "no_sync") and i < len(micros) - 1 else contextlib.nullcontext():
            logits = engine(batch)
            loss = F.cross_entropy(logits, batch["labels"], weight=weights, reduction="sum") / len(batch_index)
            if faults.hit("loss", step):
                loss = loss * float("nan")
            loss.backward()
        loss_sum += loss.detach()
    return loss_sum, tokens


def defers_checks(optimizer) -> bool:
    """A fused AdamW can skip a non-finite step on the device itself (`found_inf`, as GradScaler uses it),
    so the step needs no host sync: the CPU queues the next step while the GPU runs this one."""
    return bool(optimizer.defaults.get("fused"))


@dataclass(frozen=True)
class StepOptions:
    """What a training step needs besides the model and the data: class weights and gradient clipping."""

    weights: torch.Tensor | None = None  # class weights of the loss (--class-weights auto)
    max_grad_norm: float = 1.0           # 0: no clipping


def train_step(engine, optimizer, enc: Encoded, batch_index: np.ndarray, state: TrainState,
               options: StepOptions = StepOptions()) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward and update for one step's batch. Returns (loss, finite) as 0-d tensors, still on
    the device: `settle` reads them later. A step whose loss or gradient norm is not finite is not applied.
    `engine`: an engine.Engine, or one wrapped in DistributedDataParallel."""
    core = getattr(engine, "module", engine)
    step = state.step + 1
    while True:
        try:
            loss, tokens = _forward_backward(engine, enc, batch_index, state.micro_splits, options.weights, step)
            break
        except Exception as exc:
            if not is_oom(exc):
                raise
            core.model.zero_grad(set_to_none=True)
            _free(core.device)
            _back_off(state, len(batch_index), step)
    state.tokens_seen += tokens
    core.gradients_to_masters()
    limit = options.max_grad_norm if options.max_grad_norm > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(core.trainable(), limit)
    finite = torch.isfinite(loss) & torch.isfinite(norm)
    if defers_checks(optimizer):
        optimizer.found_inf = (~finite).float()
        optimizer.step()
    elif bool(finite):
        optimizer.step()
    core.masters_to_weights()
    return loss, finite


def _back_off(state: TrainState, batch: int, step: int) -> None:
    """After an out-of-memory error: twice as many micro-batches for the same step, or a clear stop."""
    if state.micro_splits >= batch:
        raise UserError(f"out of memory at step {step} even with micro-batch 1; lower --max-length "
                        "or use a smaller model") from None
    state.micro_splits = min(state.micro_splits * 2, batch)
    micro = math.ceil(batch / state.micro_splits)
    say(f"warning: out of memory at step {step}: micro-batch now {micro} with {state.micro_splits} "
        "accumulation steps (effective batch unchanged); retrying the step")


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
        say(f"warning: step {step} skipped: its loss ({loss}) or gradient norm is not finite "
            f"({state.bad_steps} in a row)")
        if state.bad_steps >= max_bad_steps:
            raise UserError(f"{state.bad_steps} steps in a row had a NaN or inf loss or gradient (last at step {step}); "
                            "stopping. The last good checkpoint is kept in OUTPUT/checkpoints; try a lower --lr")
    return applied


def evaluate_step(engine, enc: Encoded, label_names: list[str], state: TrainState) -> dict[str, Any]:
    """Validation metrics of `engine` (an engine.Engine); on out-of-memory the evaluation batch is halved and
    the evaluation redone."""
    step = state.step

    def on_batch(i: int) -> None:
        if i == 1:
            faults.hit("eval", step)  # tests kill or OOM here: mid-evaluation

    while True:
        try:
            return score(engine, enc, label_names, state.eval_batch_size, on_batch)
        except Exception as exc:
            if not is_oom(exc):
                raise
            _free(engine.device)
            if state.eval_batch_size == 1:
                raise UserError("out of memory in evaluation even with batch 1; lower --max-length") from None
            state.eval_batch_size //= 2
            say(f"warning: out of memory in evaluation: evaluation batch now {state.eval_batch_size}")


def stop_on_signal() -> tuple[dict[str, int], Callable[[], None]]:
    """SIGINT/SIGTERM set a flag the loop checks between steps; returns (flag, restore)."""
    import signal
    import threading

    flag = {"signal": 0}
    if threading.current_thread() is not threading.main_thread():
        return flag, lambda: None
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if flag["signal"]:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        flag["signal"] = signum
        say("\nstopping: saving a checkpoint after this step (Ctrl-C again to stop at once)")

    for s in previous:
        signal.signal(s, handler)
    return flag, lambda: [signal.signal(s, h) for s, h in previous.items()]
