"""Fine-tuning: one `_setup_*` per stage, then the whole loop on one screen.

The engine is our own loop on plain PyTorch (see README, "Design"): batches are a pure function of
(seed, epoch), the learning rate a pure function of the step, and each optimizer step's batch is split
into micro-batches whose losses are summed and divided by the step's example count, so splitting it
finer (gradient accumulation, out-of-memory backoff) does not change the update."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable
import torch
from finetune_bert.engine import distributed
from finetune_bert.training.checkpoint import TrainState
from finetune_bert.training.config import TrainConfig
from finetune_bert.engine.distributed import ALONE, World
from finetune_bert.errors import Reported, UserError, refuse
from finetune_bert.training.finish import TrainResult, finish
from finetune_bert.engine.model_folder import pick_device
from finetune_bert.training.run_folder import Follower, RunFolder
from finetune_bert.training import tracking
from finetune_bert.console import console
from finetune_bert.data.prepared import Prepared
from finetune_bert.training.job import _setup_model, _setup_output, build_job, prepare
from finetune_bert.training.loop import _loop


def process_settings(cfg: TrainConfig) -> None:
    """What a training command sets for its whole process, in one place: torch's CPU threads, and the MLflow
    client's retries and printing (tracking.process_settings)."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    tracking.process_settings(cfg.report_to)


def train(cfg: TrainConfig | None = None, **overrides: Any) -> TrainResult:
    """Fine-tune `cfg.model` on `cfg.data`; the best model by `cfg.metric` ends up in `cfg.output`. Under
    torchrun, this process's share of it (rank 0 alone writes and prints)."""
    try:
        cfg = checked(cfg, **overrides)
    except UserError as exc:  # the same options on every rank: rank 0 says it
        if distributed.follower():
            raise Reported(exc.exit_code) from None
        raise
    process_settings(cfg)
    started = time.time()
    world = distributed.start(pick_device(), cfg.dist_timeout)
    try:
        # Cheap checks first, so a bad row, a missing model or an unusable output fails in seconds and leaves
        # nothing behind; the model is loaded before the folder is touched (a head that cannot be made stops here).
        prepared = distributed.together(world, lambda: preflight(cfg, world.main))
        result = run_training(cfg, prepared, started=started, world=world)
    finally:
        distributed.stop(world)
    if cfg.push_to_hub and world.main:  # after the run let go of its folder: what goes up is final
        from finetune_bert.export.hub import push_after_training

        push_after_training(result.output, cfg.push_to_hub)
    return result


def preflight(cfg: TrainConfig, main: bool = True) -> Prepared:
    """The output folder checked (by the process that writes it), the data read and validated, the tokenizer
    loaded: every problem of the user's found before a model is loaded or a file written."""
    if main:
        _setup_output(cfg)
    return prepare(cfg)


def checked(cfg: TrainConfig | None = None, **overrides: Any) -> TrainConfig:
    """The config with `overrides`, every problem refused at once; its warnings and itself said."""
    cfg = dataclasses.replace(cfg or TrainConfig(), **overrides).with_defaults()
    refuse(cfg.problems())
    for warning in cfg.warnings():
        console.warn(warning)
    console.say("config: " + json.dumps({k: v for k, v in cfg.to_json().items() if v not in (None, False)}))
    return cfg


def run_training(cfg: TrainConfig, prepared: Prepared, *, started: float | None = None,
                 on_eval: Callable[[TrainState, dict[str, Any]], None] | None = None,
                 world: World = ALONE) -> TrainResult:
    """Train on prepared data into `cfg.output` (checked by the caller). `on_eval(state, metrics)` after each
    validation: whatever it raises (a pruned trial) ends the run there, its checkpoints kept. `world`: this
    process's place under torchrun; rank 0 alone holds the output folder."""
    cfg = cfg.with_defaults()  # idempotent; callers that build their own config (tune, audit) get the defaults too
    model = _setup_model(cfg, prepared, torch.device(world.device) if world.several else pick_device(), world)
    folder = RunFolder(cfg.output, cfg.overwrite, cfg.resume, tracking=tracking.Tracking.of(cfg)) if world.main \
        else Follower(cfg.output)  # rank 0 alone writes and tracks
    with folder as run, distributed.talking(world):
        job = build_job(cfg, run, prepared, model, world, started=started or time.time(), on_eval=on_eval)
        seconds = _loop(job)
        result = finish(job, seconds)
        run.finished(result.metrics)
        distributed.barrier(world)  # rank 0 has written everything before any process leaves
        return result
