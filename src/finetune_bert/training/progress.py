"""The training loop's bookkeeping: step losses still on the device (read at `settle`, see steps.settle),
the log records and the progress bar, and checkpoints (which need those counters settled first)."""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from finetune_bert.training import checkpoint
from finetune_bert.engine import distributed
from finetune_bert.console import console
from finetune_bert.training.job import Job
from finetune_bert.training.steps import settle


class Meter:
    """The loop's bookkeeping: losses still on the device (read at `settle`, see steps.settle), the log
    records and the progress bar, and checkpoints (which need the counters settled first)."""

    def __init__(self, job: Job, *, deferred: bool):
        from tqdm.auto import tqdm

        self.job, self.deferred = job, deferred
        state = job.state
        # A live bar on a terminal; in a log file or CI, plain lines at each log record instead.
        self.bar = tqdm(total=state.total_steps, initial=state.step, desc="train", unit="step", mininterval=1.0,
                        dynamic_ncols=True, disable=not sys.stderr.isatty() or console.is_quiet)
        self.pending: list = []  # (step, loss, finite) still on the device
        self.losses: list[float] = []
        self.started = self.last_save = time.time()
        self.tokens_at_start = state.tokens_seen

    def settle(self) -> None:
        self.losses.extend(settle(self.pending, self.job.state, self.job.cfg.max_bad_steps))

    def record(self, loss: torch.Tensor, finite: torch.Tensor, lr: float) -> None:
        state, cfg = self.job.state, self.job.cfg
        self.pending.append((state.step, loss, finite))
        self.bar.update(1)
        log_now = state.step % cfg.log_every == 0 or state.step == state.total_steps
        if not self.deferred or log_now:
            self.settle()
        if not log_now:
            return
        rate = (state.tokens_seen - self.tokens_at_start) / max(time.time() - self.started, 1e-9)
        mean = float(np.mean(self.losses)) if self.losses else float("nan")
        self.job.run.log("train", step=state.step, loss=mean, lr=lr, tokens_per_s=round(rate, 1),
                         skipped_steps=state.skipped_steps)
        self.bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:.0f}")
        if self.bar.disable:
            console.say(f"step {state.step}/{state.total_steps}: loss {mean:.4f}, lr {lr:.2e}, {rate:.0f} tokens/s")
        self.losses = []

    def save_checkpoint(self) -> None:
        """Rank 0 writes it, with every rank's generator states; the others wait until it is complete, so no
        process exits (a stop) before the checkpoint they share is on disk."""
        job, world = self.job, self.job.world
        self.settle()  # the counters it saves must be current
        rngs = distributed.gather_objects(checkpoint.rng_state(), world)
        if world.main:
            path = checkpoint.save(job.run.path, job.engine, job.optimizer, job.state,
                                   max(1, job.cfg.keep_checkpoints), rngs)
            job.run.log("checkpoint", step=job.state.step, path=str(path))
        distributed.barrier(world)
        self.last_save = time.time()

    def close(self) -> None:
        self.bar.close()
