"""Fine-tuning: one `_setup_*` per stage, then the whole loop on one screen.

The engine is our own loop on plain PyTorch (see README, "Design"): batches are a pure function of
(seed, epoch), the learning rate a pure function of the step, and each optimizer step's batch is split
into micro-batches whose losses are summed and divided by the step's example count, so splitting it
finer (gradient accumulation, out-of-memory backoff) does not change the update.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune_bert import checkpoint, fastpath, faults
from finetune_bert.checkpoint import TrainState
from finetune_bert.config import TrainConfig, greater_is_better
from finetune_bert.data import Dataset, load_dataset
from finetune_bert.skipped import skipped_csv
from finetune_bert.encoding import Encoded, train_batches
from finetune_bert.errors import TrainingInterrupted, UserError
from finetune_bert.evaluate import format_metrics, run_eval
from finetune_bert.model import autocast_dtype, load_classifier, load_tokenizer, pick_device
from finetune_bert.output import RunFolder, model_card, say
from finetune_bert.report import format_report, prepare, report_files
from finetune_bert.steps import defers_checks, evaluate_step, settle, stop_on_signal, train_step


@dataclass
class TrainResult:
    output: str
    metrics: dict[str, Any]
    best_step: int


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up from 0 to `peak`, then linear decay to 0 at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def _setup_data(cfg: TrainConfig, ds: Dataset, tokenizer, model_config, run: RunFolder) -> tuple[dict[str, Encoded], dict]:
    encoded, report = prepare(cfg, ds, tokenizer, model_config)
    say(format_report(report))
    # Staged, not written: they appear with the first model saved, so that a run failing before it never
    # leaves a report of its own beside an earlier run's model.
    for name, text in report_files(report).items():
        run.stage(name, text)
    if ds.skipped:
        run.stage("skipped_rows.csv", skipped_csv(ds.skipped))
        say(f"warning: {len(ds.skipped)} bad rows skipped; each is listed with its reason in "
            f"{run.path / 'skipped_rows.csv'} (written with the model)")
    for i in range(min(2, len(ds.train))):
        ids = encoded["train"].ids[i]
        say(f"sample {i}: label {ds.label_names[encoded['train'].labels[i]]!r}, {len(ids)} tokens: "
            f"{tokenizer.decode(ids[:24])} ... {tokenizer.decode(ids[-8:])}")
    return encoded, report


def _setup_model(cfg: TrainConfig, label_names: list[str], device: torch.device):
    torch.manual_seed(cfg.seed)  # the classifier head's initialisation
    notes: list[str] = []
    model = load_classifier(cfg.model, label_names, cfg.trust_remote_code, notes=notes)
    for note in notes:
        say(note)
    return model.to(device).train()


def _setup_output(cfg: TrainConfig) -> None:
    """Refuse, before any data is read, an output folder this run must not write into."""
    RunFolder.check(cfg.output, cfg.overwrite, cfg.resume)
    if cfg.resume and not cfg.overwrite and (Path(cfg.output) / "model.safetensors").is_file() \
            and not checkpoint.complete_checkpoints(Path(cfg.output)):
        raise UserError(f"--resume: {cfg.output} holds a finished model and no checkpoint to continue from; "
                        "pass --overwrite to train it again from the start, or choose a new --output")


def _setup_optimizer(cfg: TrainConfig, model, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, with no weight decay on biases and LayerNorm weights (every 1-D parameter)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused, foreach=None if fused else True)


def _class_weights(cfg: TrainConfig, labels: np.ndarray, k: int, device: torch.device) -> torch.Tensor | None:
    if cfg.class_weights != "auto":
        return None
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return torch.tensor(counts.sum() / (k * np.maximum(counts, 1)), dtype=torch.float32, device=device)


def _is_better(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return value > best if greater_is_better(metric) else value < best


def _setup_resume(cfg: TrainConfig, run: RunFolder, model, optimizer, device, fresh: TrainState) -> TrainState:
    """The newest complete checkpoint's state, or `fresh`; a checkpoint from another run is refused."""
    found = checkpoint.complete_checkpoints(run.path) if cfg.resume else []
    if cfg.resume and not found:
        say(f"--resume: no complete checkpoint in {run.path / 'checkpoints'}; starting fresh")
    if not found:
        return fresh
    state = checkpoint.load(found[-1], model, optimizer, device)
    if diff := checkpoint.differences(state.fingerprint, fresh.fingerprint):
        raise UserError(f"--resume: {found[-1]} was made with other arguments or data; differences: "
                        + "; ".join(diff) + ". Use the original arguments, or a new --output")
    say(f"resumed from {found[-1]} at step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch})")
    run.log("resume", step=state.step, checkpoint=str(found[-1]))
    return state


def train(cfg: TrainConfig | None = None, **overrides: Any) -> TrainResult:
    """Fine-tune `cfg.model` on `cfg.data`; the best model by `cfg.metric` ends up in `cfg.output`."""
    cfg = dataclasses.replace(cfg or TrainConfig(), **overrides)
    if problems := cfg.problems():
        raise UserError("; ".join(problems))
    for warning in cfg.warnings():
        say(f"warning: {warning}")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    started = time.time()
    say("config: " + json.dumps({k: v for k, v in cfg.to_json().items() if v not in (None, False)}))
    # Cheap checks first, so a bad row, a missing model or an unusable output fails in seconds and leaves
    # nothing behind; the model is loaded before the folder is touched (a head that cannot be made stops here).
    _setup_output(cfg)
    ds = load_dataset(cfg)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    device = pick_device()
    model = _setup_model(cfg, ds.label_names, device)
    with RunFolder(cfg.output, cfg.overwrite, cfg.resume) as run:
        return _fit(cfg, run, ds, tokenizer, model, started)


def _fit(cfg: TrainConfig, run: RunFolder, ds: Dataset, tokenizer, model, started: float) -> TrainResult:
    """Tokenize, train, keep the best model, score it on test: everything that writes into `run`."""
    device = next(model.parameters()).device
    dtype = autocast_dtype(device, cfg.bf16)
    run.own("checkpoints")
    run.stage("run_config.json", json.dumps(cfg.to_json(), indent=2) + "\n")
    enc, report = _setup_data(cfg, ds, tokenizer, model.config, run)
    optimizer = _setup_optimizer(cfg, model, device)
    weights = _class_weights(cfg, enc["train"].labels, len(ds.label_names), device)
    run_info = {"max_length": report["max_length"], "truncation": cfg.truncation, "head_tokens": cfg.head_tokens,
                "clean": cfg.clean, "raw_labels": ds.raw_labels, "label_names": ds.label_names,
                "base_model": cfg.model}

    train_enc, lengths = enc["train"], enc["train"].lengths
    step_size = cfg.batch_size * cfg.grad_accum
    if len(train_enc) < step_size:
        say(f"note: {len(train_enc)} training rows are fewer than one batch of {step_size}: every step uses all of them")
    steps_per_epoch = math.ceil(len(train_enc) / step_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = math.ceil(cfg.warmup_ratio * total)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    layout = fastpath.layout(model, device, dtype, pad_id, cfg.cls_fast_path, cfg.unpadded, cfg.lane_dropout,
                             cfg.cpu_micro_batches, 0 if cfg.dynamic_padding else report["max_length"])
    fresh = TrainState(total_steps=total, micro_splits=cfg.grad_accum, eval_batch_size=cfg.eval_batch_size,
                       fingerprint=checkpoint.fingerprint(cfg, ds.train.texts, ds.train.labels, ds.val.texts))
    state = _setup_resume(cfg, run, model, optimizer, device, fresh)
    say(f"training {cfg.model} on {device.type}{' with bf16' if dtype else ', fp32'}"
        f"{', packed batches (no padding)' if layout.packed else ''}"
        f"{f', every batch padded to {layout.pad_to}' if layout.pad_to else ''}"
        f"{', lane dropout' if layout.lane_dropout else ''}: {len(train_enc)} texts, "
        f"{state.total_steps} steps of {step_size} ({steps_per_epoch} per epoch), warm-up {warmup}")
    run.log("start", device=device.type, steps=state.total_steps, examples=len(train_enc), labels=ds.label_names,
            packed=layout.packed, lane_dropout=layout.lane_dropout, bf16=dtype is not None)

    def save_checkpoint() -> None:
        nonlocal last_save
        losses.extend(settle(pending, state, cfg.max_bad_steps))  # the counters it saves must be current
        path = checkpoint.save(run.path, model, optimizer, state, max(1, cfg.keep_checkpoints))
        run.log("checkpoint", step=state.step, path=str(path))
        last_save = time.time()

    from tqdm.auto import tqdm
    # A live bar on a terminal; in a log file or CI, plain lines at each log record instead.
    bar = tqdm(total=state.total_steps, initial=state.step, desc="train", unit="step", mininterval=1.0,
               dynamic_ncols=True, disable=not sys.stderr.isatty())
    stop, restore_signals = stop_on_signal()
    losses, t_train, last_save, tokens_at_start = [], time.time(), time.time(), state.tokens_seen
    pending: list = []  # (step, loss, finite) still on the device; see steps.settle
    deferred = defers_checks(optimizer)
    try:
        while state.step < state.total_steps:
            batches = train_batches(lengths, step_size, cfg.seed, state.epoch, cfg.group_by_length)
            while state.batch_in_epoch < len(batches) and state.step < state.total_steps:
                lr = lr_at(state.step, total, warmup, cfg.lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss, finite = train_step(model, optimizer, train_enc, batches[state.batch_in_epoch], state, weights,
                                          device, dtype, layout, cfg.max_grad_norm)
                state.step += 1
                state.batch_in_epoch += 1
                pending.append((state.step, loss, finite))
                bar.update(1)
                log_now = state.step % cfg.log_every == 0 or state.step == state.total_steps
                if not deferred or log_now:
                    losses.extend(settle(pending, state, cfg.max_bad_steps))
                if log_now:
                    rate = (state.tokens_seen - tokens_at_start) / max(time.time() - t_train, 1e-9)
                    mean = float(np.mean(losses)) if losses else float("nan")
                    run.log("train", step=state.step, loss=mean, lr=lr, tokens_per_s=round(rate, 1),
                            skipped_steps=state.skipped_steps)
                    bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:.0f}")
                    if bar.disable:
                        say(f"step {state.step}/{state.total_steps}: loss {mean:.4f}, lr {lr:.2e}, {rate:.0f} tokens/s")
                    losses = []
                epoch_end = state.batch_in_epoch == len(batches) or state.step == state.total_steps
                if epoch_end or (cfg.eval_every and state.step % cfg.eval_every == 0):
                    losses.extend(settle(pending, state, cfg.max_bad_steps))
                    m = evaluate_step(model, enc["validation"], ds.label_names, state, device, dtype, layout)
                    _record_eval(cfg, state, m, run)
                    if state.best_step == state.step:
                        run.save_model(model, tokenizer, run_info)
                    if cfg.patience and state.stale_evals >= cfg.patience:
                        say(f"early stop: no {cfg.metric} improvement in {state.stale_evals} evaluations")
                        state.total_steps = state.step
                faults.hit("step", state.step)  # tests kill the process here: between checkpoints
                if epoch_end or (cfg.save_every and state.step % cfg.save_every == 0) or \
                        time.time() - last_save > cfg.save_minutes * 60 or stop["signal"]:
                    save_checkpoint()
                if stop["signal"]:
                    raise TrainingInterrupted(f"stopped at step {state.step}; checkpoint saved in {run.path / 'checkpoints'}. "
                                              "Resume with the same command and --resume")
            if state.batch_in_epoch >= len(batches):
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    finally:
        restore_signals()
        bar.close()
    return _finish(cfg, run, model, tokenizer, enc, ds.label_names, state, report, device, dtype, layout,
                   started, time.time() - t_train)


def _record_eval(cfg: TrainConfig, state: TrainState, m: dict[str, Any], run: RunFolder) -> None:
    epoch = state.epoch + (state.batch_in_epoch > 0)
    run.log("eval", step=state.step, **{k: m[k] for k in ("accuracy", "f1_macro", "loss")})
    say(f"step {state.step} (epoch {epoch}): validation accuracy {m['accuracy']:.4f}, "
        f"macro F1 {m['f1_macro']:.4f}, loss {m['loss']:.4f}")
    state.history.append({"step": state.step, **{k: m[k] for k in ("accuracy", "f1_macro", "loss", "roc_auc")}})
    value = m[cfg.metric]
    if value is not None and _is_better(value, state.best, cfg.metric):
        state.best, state.best_step, state.best_metrics, state.stale_evals = value, state.step, m, 0
    else:
        state.stale_evals += 1


def _finish(cfg, run, model, tokenizer, enc, label_names, state, report, device, dtype, layout, started,
            train_seconds) -> TrainResult:
    """Score the best model on test; write metrics and the model card."""
    if state.best_step != state.step:
        from safetensors.torch import load_file
        model.load_state_dict(load_file(str(run.path / "model.safetensors"), device=str(device)), strict=False)
    metrics: dict[str, Any] = {"validation": state.best_metrics, "best_step": state.best_step,
                               "history": state.history,
                               "train": {"steps": state.step, "seconds": round(train_seconds, 1),
                                         "skipped_steps": state.skipped_steps, "examples": len(enc["train"]),
                                         "micro_splits": state.micro_splits}}
    if "test" in enc:
        scoring = time.time()
        metrics["test"] = run_eval(model, enc["test"], label_names, state.eval_batch_size, device, dtype, layout)
        metrics["test"]["seconds"] = round(time.time() - scoring, 2)
        say(format_metrics(metrics["test"], f"test ({metrics['test']['n']} texts), best model from step {state.best_step}"))
    metrics["seconds_total"] = round(time.time() - started, 1)
    run.write_text("metrics.json", json.dumps(metrics, indent=2) + "\n")
    run.write_text("README.md", model_card(cfg, report, metrics))
    run.log("end", step=state.step, best_step=state.best_step, seconds=metrics["seconds_total"])
    if cfg.keep_checkpoints == 0:  # they were only kept for a crash; the run is done
        run.remove_checkpoints()
    say(f"model saved to {run.path} (best {cfg.metric} {state.best:.4f} at step {state.best_step}); "
        f"training took {train_seconds:.0f}s")
    return TrainResult(str(run.path), metrics, state.best_step)
