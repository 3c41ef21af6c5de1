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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from finetune_bert import checkpoint, distributed, faults
from finetune_bert.batches import train_batches
from finetune_bert.checkpoint import TrainState
from finetune_bert.config import TrainConfig, greater_is_better
from finetune_bert.data import Dataset, load_dataset
from finetune_bert.distributed import ALONE, World
from finetune_bert.engine import Engine, EngineOptions
from finetune_bert.errors import Reported, TrainingInterrupted, UserError
from finetune_bert.finish import TrainResult, finish
from finetune_bert.model import load_classifier, load_tokenizer, pick_device
from finetune_bert.output import Follower, RunFolder, say, silence
from finetune_bert.progress import Meter
from finetune_bert.report import build_report, format_report, report_files
from finetune_bert.skipped import skipped_csv
from finetune_bert.steps import StepOptions, defers_checks, evaluate_step, stop_on_signal, train_step
from finetune_bert.tokens import Encoded, TokenizedSplits, encode_splits


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up from 0 to `peak`, then linear decay to 0 at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def _setup_data(cfg: TrainConfig, prepared: Prepared, model_config, run: RunFolder) -> tuple[dict[str, Encoded], dict]:
    """Tokenize (the tokens stage, once for prepared data), report on the data, and stage the report beside
    the model to come."""
    ds, tokenizer = prepared.ds, prepared.tokenizer
    if prepared.tokens is None:
        prepared.tokens = encode_splits(ds, tokenizer, model_config, max_length=cfg.max_length,
                                        truncation=cfg.truncation, head_tokens=cfg.head_tokens)
    tokens = prepared.tokens
    if tokens.warning:
        say(f"warning: {tokens.warning}")
    encoded = tokens.splits
    report = build_report(ds, encoded, tokens.max_length, cfg.truncation, cfg.clean)
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


def _setup_model(cfg: TrainConfig, label_names: list[str], device: torch.device, world: World = ALONE):
    torch.manual_seed(cfg.seed)  # the classifier head's initialisation: the same on every rank
    notes: list[str] = []
    model = load_classifier(cfg.model, label_names, cfg.trust_remote_code, notes=notes)
    for note in notes:
        say(note)
    if world.rank:  # dropout: each rank draws its own masks (rank 0 keeps the single process's generator)
        torch.manual_seed((cfg.seed + 1_000_003 * world.rank) % (2**63))
    return model.to(device).train()


def _setup_engine(cfg: TrainConfig, model, tokenizer, max_length: int, world: World) -> Engine:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    options = EngineOptions(bf16=cfg.bf16, bf16_weights=cfg.bf16_weights, fast=cfg.cls_fast_path,
                            unpadded=cfg.unpadded, lane_dropout=cfg.lane_dropout,
                            cpu_micro_batches=cfg.cpu_micro_batches, pad_to=0 if cfg.dynamic_padding else max_length)
    engine = Engine(model, next(model.parameters()).device, pad_id, options=options, training=True)
    engine.world = world
    return engine


def _setup_trainer(engine: Engine, world: World):
    """What a training step runs: the engine, or under several processes the engine in PyTorch's
    DistributedDataParallel (made after a resume, so the state it broadcasts from rank 0 is the restored one;
    inside run_training's `distributed.talking`, like everything DDP exchanges in the backward)."""
    if not world.several:
        return engine
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(world.device)
    # no buffer sync in forward: a BERT's buffers are constants (position ids), and syncing them would put a
    # collective in every forward, before the vote that lets a rank out of memory retry with the others
    return DistributedDataParallel(engine, device_ids=[device.index] if device.type == "cuda" else None,
                                   forward_sync_buffers=False)


def _setup_output(cfg: TrainConfig) -> None:
    """Refuse, before any data is read, an output folder this run must not write into."""
    RunFolder.check(cfg.output, cfg.overwrite, cfg.resume)
    if cfg.resume and not cfg.overwrite and (Path(cfg.output) / "model.safetensors").is_file() \
            and not checkpoint.complete_checkpoints(Path(cfg.output)):
        raise UserError(f"--resume: {cfg.output} holds a finished model and no checkpoint to continue from; "
                        "pass --overwrite to train it again from the start, or choose a new --output")


def _setup_optimizer(cfg: TrainConfig, engine: Engine) -> torch.optim.Optimizer:
    """AdamW over what the engine trains (its fp32 masters with bf16 weights), with no weight decay on biases
    and LayerNorm weights (every 1-D parameter)."""
    params = engine.trainable()
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    fused = engine.device.type == "cuda"
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


def _setup_resume(cfg: TrainConfig, run: RunFolder, engine: Engine, optimizer, fresh: TrainState) -> TrainState:
    """The newest complete checkpoint's state, or `fresh`; a checkpoint from another run is refused. Rank 0
    picks the checkpoint; every rank loads it (the output folder must be on storage they all see)."""
    found = checkpoint.complete_checkpoints(run.path) if cfg.resume else []
    found = [Path(p) for p in distributed.from_main([str(p) for p in found], engine.world)]
    if cfg.resume and not found:
        say(f"--resume: no complete checkpoint in {run.path / 'checkpoints'}; starting fresh")
    if not found:
        return fresh
    state = checkpoint.load(found[-1], engine, optimizer, engine.world.rank)
    if diff := checkpoint.differences(state.fingerprint, fresh.fingerprint):
        raise UserError(f"--resume: {found[-1]} was made with other arguments or data; differences: "
                        + "; ".join(diff) + ". Use the original arguments, or a new --output")
    say(f"resumed from {found[-1]} at step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch})")
    run.log("resume", step=state.step, checkpoint=str(found[-1]))
    return state


def train(cfg: TrainConfig | None = None, **overrides: Any) -> TrainResult:
    """Fine-tune `cfg.model` on `cfg.data`; the best model by `cfg.metric` ends up in `cfg.output`. Under
    torchrun, this process's share of it (rank 0 alone writes and prints)."""
    if distributed.follower():
        silence()
    try:
        cfg = checked(cfg, **overrides)
    except UserError as exc:  # the same options on every rank: rank 0 says it
        if distributed.follower():
            raise Reported(exc.exit_code) from None
        raise
    started = time.time()
    world = distributed.start(pick_device(), cfg.dist_timeout)
    try:
        # Cheap checks first, so a bad row, a missing model or an unusable output fails in seconds and leaves
        # nothing behind; the model is loaded before the folder is touched (a head that cannot be made stops here).
        prepared = _together(world, lambda: preflight(cfg, world.main))
        return run_training(cfg, prepared, started=started, world=world)
    finally:
        distributed.stop(world)


def preflight(cfg: TrainConfig, main: bool = True) -> Prepared:
    """The output folder checked (by the process that writes it), the data read and validated, the tokenizer
    loaded: every problem of the user's found before a model is loaded or a file written."""
    if main:
        _setup_output(cfg)
    return prepare(cfg)


def _together(world: World, setup: Callable[[], Any]) -> Any:
    """`setup()` on every rank; a UserError on any rank stops them all. Rank 0's is said by rank 0 alone (the
    others met the same one); a problem of another rank's alone (its copy of the data) is said by that rank."""
    error = None
    try:
        result = setup()
    except UserError as exc:
        error = exc
    failed = distributed.gather_objects(error is not None, world)
    if error is not None:
        raise error if world.main or not failed[0] else Reported(error.exit_code) from None
    if any(failed):
        raise Reported(2)
    return result


def checked(cfg: TrainConfig | None = None, **overrides: Any) -> TrainConfig:
    """The config with `overrides`, every problem refused at once; warnings printed, threads set."""
    cfg = dataclasses.replace(cfg or TrainConfig(), **overrides)
    if problems := cfg.problems():
        raise UserError("; ".join(problems))
    for warning in cfg.warnings():
        say(f"warning: {warning}")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    say("config: " + json.dumps({k: v for k, v in cfg.to_json().items() if v not in (None, False)}))
    return cfg


@dataclass
class Prepared:
    """The data read and checked, and its tokenizer: what runs on the same data share (tune's trials read,
    validate and tokenize once). `tokens` is filled by the first run's tokens stage and reused after it."""

    ds: Dataset
    tokenizer: Any
    tokens: TokenizedSplits | None = None


def prepare(cfg: TrainConfig) -> Prepared:
    return Prepared(load_dataset(cfg), load_tokenizer(cfg.model, cfg.trust_remote_code))


def run_training(cfg: TrainConfig, prepared: Prepared, *, started: float | None = None,
                 on_eval: Callable[[TrainState, dict[str, Any]], None] | None = None,
                 world: World = ALONE) -> TrainResult:
    """Train on prepared data into `cfg.output` (checked by the caller). `on_eval(state, metrics)` after each
    validation: whatever it raises (a pruned trial) ends the run there, its checkpoints kept. `world`: this
    process's place under torchrun; rank 0 alone holds the output folder."""
    model = _setup_model(cfg, prepared.ds.label_names, torch.device(world.device) if world.several else pick_device(),
                         world)
    folder = RunFolder(cfg.output, cfg.overwrite, cfg.resume) if world.main else Follower(cfg.output)
    with folder as run, distributed.talking(world):
        job = _setup_job(cfg, run, prepared, model, world)
        job.started, job.on_eval = started or time.time(), on_eval
        _loop(job)
        result = finish(job)
        distributed.barrier(world)  # rank 0 has written everything before any process leaves
        return result


@dataclass
class _Job:
    """One training run's parts: what the loop reads, and the state it advances."""

    cfg: TrainConfig
    run: RunFolder
    ds: Dataset
    tokenizer: Any
    engine: Engine
    trainer: Any  # what a step runs: the engine, or it in DistributedDataParallel
    optimizer: torch.optim.Optimizer
    enc: dict[str, Encoded]
    report: dict[str, Any]
    state: TrainState
    step_options: StepOptions
    warmup: int
    total: int  # planned steps; state.total_steps is lowered by early stopping
    started: float = 0.0
    train_seconds: float = 0.0
    on_eval: Callable[[TrainState, dict[str, Any]], None] | None = None
    temperature: float = 1.0  # folded into the saved model by _calibrate

    @property
    def world(self) -> World:
        return self.engine.world

    @property
    def step_size(self) -> int:
        return self.cfg.batch_size * self.cfg.grad_accum

    @property
    def run_info(self) -> dict[str, Any]:
        """finetune_bert.json: how the saved model reads texts, for predict and evaluate."""
        cfg, ds = self.cfg, self.ds
        return {"max_length": self.report["max_length"], "truncation": cfg.truncation, "head_tokens": cfg.head_tokens,
                "clean": cfg.clean, "raw_labels": ds.raw_labels, "label_names": ds.label_names, "base_model": cfg.model,
                "temperature": self.temperature}


def _setup_job(cfg: TrainConfig, run: RunFolder, prepared: Prepared, model, world: World) -> _Job:
    """Tokenize, build the engine and the optimizer, and restore a checkpoint: everything before step one."""
    ds, tokenizer = prepared.ds, prepared.tokenizer
    run.own("checkpoints")
    run.stage("run_config.json", json.dumps(cfg.to_json(), indent=2) + "\n")
    enc, report = _setup_data(cfg, prepared, model.config, run)
    engine = _setup_engine(cfg, model, tokenizer, report["max_length"], world)
    optimizer = _setup_optimizer(cfg, engine)
    weights = _class_weights(cfg, enc["train"].labels, len(ds.label_names), engine.device)
    step_size = cfg.batch_size * cfg.grad_accum
    if len(enc["train"]) < step_size:
        say(f"note: {len(enc['train'])} training rows are fewer than one batch of {step_size}: every step uses all of them")
    steps_per_epoch = math.ceil(len(enc["train"]) / step_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    fingerprint = checkpoint.fingerprint(cfg, ds.train.texts, ds.train.labels, ds.val.texts)
    fingerprint["bf16_weights"] = engine.bf16_weights  # what runs, not the option (a no-op on CPU)
    fresh = TrainState(total_steps=total, micro_splits=cfg.grad_accum, eval_batch_size=cfg.eval_batch_size,
                       fingerprint=fingerprint)
    state = _setup_resume(cfg, run, engine, optimizer, fresh)
    job = _Job(cfg, run, ds, tokenizer, engine, _setup_trainer(engine, world), optimizer, enc, report, state,
               StepOptions(weights, cfg.max_grad_norm), math.ceil(cfg.warmup_ratio * total), total)
    _announce(job, steps_per_epoch)
    return job


def _announce(job: _Job, steps_per_epoch: int) -> None:
    engine, layout, state = job.engine, job.engine.layout, job.state
    precision = ", fp32" if engine.dtype is None else (" with bf16 weights (fp32 masters)" if engine.bf16_weights
                                                       else " with bf16 autocast")
    say(f"training {job.cfg.model} on {engine.device.type}{precision}"
        f"{', packed batches (no padding)' if layout.packed else ''}"
        f"{f', every batch padded to {layout.pad_to}' if layout.pad_to else ''}"
        f"{', lane dropout' if layout.lane_dropout else ''}: {len(job.enc['train'])} texts, "
        f"{state.total_steps} steps of {job.step_size} ({steps_per_epoch} per epoch), warm-up {job.warmup}")
    job.run.log("start", device=engine.device.type, steps=state.total_steps, examples=len(job.enc["train"]),
                labels=job.ds.label_names, packed=layout.packed, lane_dropout=layout.lane_dropout,
                bf16=engine.dtype is not None, bf16_weights=engine.bf16_weights)


def _loop(job: _Job) -> None:
    """The training loop: batches a pure function of (seed, epoch), the learning rate one of the step."""
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
    job.train_seconds = time.time() - meter.started


def _validate(job: _Job) -> None:
    """Score validation, keep the model if it is the best so far, and decide on early stopping."""
    cfg, state = job.cfg, job.state
    m = evaluate_step(job.engine, job.enc["validation"], job.ds.label_names, state)
    _record_eval(cfg, state, m, job.run)
    if state.best_step == state.step:
        job.run.save_model(job.engine.model, job.tokenizer, job.run_info, job.engine.weights())
    if cfg.patience and state.stale_evals >= cfg.patience:
        say(f"early stop: no {cfg.metric} improvement in {state.stale_evals} evaluations")
        state.total_steps = state.step
    if job.on_eval is not None:
        job.on_eval(state, m)


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
