"""The training loop on one screen: batches a pure function of (seed, epoch), the learning rate one of the step."""

from __future__ import annotations

import time
from typing import Any
from finetune_bert.engine import distributed
from finetune_bert import faults
from finetune_bert.engine.batches import train_batches
from finetune_bert.training.checkpoint import TrainState
from finetune_bert.training.config import TrainConfig
from finetune_bert.evaluation.metrics import is_better
from finetune_bert.errors import TrainingInterrupted
from finetune_bert.training.run_folder import RunFolder
from finetune_bert.console import console
from finetune_bert.training.progress import Meter
from finetune_bert.training.steps import defers_checks, evaluate_step, stop_on_signal, train_step
from finetune_bert.training.job import Job
from finetune_bert.tasks import CLASSIFICATION, HEADLINE


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up from 0 to `peak`, then linear decay to 0 at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def _loop(job: Job) -> float:
    """The training loop: batches a pure function of (seed, epoch), the learning rate one of the step.
    Returns the seconds it trained."""
    cfg, state, optimizer = job.cfg, job.state, job.optimizer
    meter = Meter(job, deferred=defers_checks(optimizer))
    stop, restore_signals = stop_on_signal()
    try:
        while state.step < state.total_steps:
            batches = train_batches(job.enc["train"].lengths, job.step_size, cfg.seed, state.epoch, cfg.group_by_length)
            while state.batch_in_epoch < len(batches) and state.step < state.total_steps:
                lr = lr_at(state.step, job.total, job.warmup, cfg.lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss, finite = train_step(job.trainer, optimizer, job.enc["train"], batches[state.batch_in_epoch],
                                          state, job.step_options)
                state.step += 1
                state.batch_in_epoch += 1
                meter.record(loss, finite, lr)
                epoch_end = state.batch_in_epoch == len(batches) or state.step == state.total_steps
                if epoch_end or (cfg.eval_every and state.step % cfg.eval_every == 0):
                    meter.settle()
                    _validate(job)
                faults.hit("step", state.step)  # tests kill the process here: between checkpoints
                # a signal or the clock on any rank: all ranks save and stop at the same step
                stopping, due = distributed.agree(bool(stop["signal"]), time.time() - meter.last_save >
                                                  cfg.save_minutes * 60, world=job.world)
                if epoch_end or (cfg.save_every and state.step % cfg.save_every == 0) or due or stopping:
                    meter.save_checkpoint()
                if stopping:
                    raise TrainingInterrupted(f"stopped at step {state.step}; checkpoint saved in "
                                              f"{job.run.path / 'checkpoints'}. Resume with the same command and --resume")
            if state.batch_in_epoch >= len(batches):
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    finally:
        restore_signals()
        meter.close()
    return time.time() - meter.started


def _validate(job: Job) -> None:
    """Score validation, keep the model if it is the best so far, and decide on early stopping."""
    cfg, state = job.cfg, job.state
    m = evaluate_step(job.engine, job.enc["validation"], job.ds.label_names, state, job.scoring)
    _record_eval(cfg, state, m, job.run)
    if state.best_step == state.step:
        job.save_best()
    if cfg.patience and state.stale_evals >= cfg.patience:
        console.say(f"early stop: no {cfg.metric} improvement in {state.stale_evals} evaluations")
        state.total_steps = state.step
    if job.on_eval is not None:
        job.on_eval(state, m)


def _record_eval(cfg: TrainConfig, state: TrainState, m: dict[str, Any], run: RunFolder) -> None:
    epoch = state.epoch + (state.batch_in_epoch > 0)
    # the kind's headline numbers, and the one that picks the model where it is another (the report draws it)
    shown = tuple(dict.fromkeys((*HEADLINE[m.get("task", CLASSIFICATION)], cfg.metric)))
    run.log("eval", step=state.step, **{k: m[k] for k in shown})
    console.say(f"step {state.step} (epoch {epoch}): validation "
                + ", ".join(f"{NAMES.get(k, k)} {_number(m[k])}" for k in shown))
    state.history.append({"step": state.step, **{k: m[k] for k in (*shown, "roc_auc") if k in m}})
    value = m[cfg.metric]
    if value is not None and is_better(cfg.metric, value, state.best):
        state.best, state.best_step, state.best_metrics, state.stale_evals = value, state.step, m, 0
    else:
        state.stale_evals += 1


NAMES = {"f1_macro": "macro F1", "f1_micro": "micro F1", "rmse": "RMSE", "spearman": "Spearman"}


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
