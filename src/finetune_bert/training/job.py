"""One training run's parts, built before its first step: data, model, engine, optimizer and the state to resume."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
import numpy as np
import torch
from finetune_bert.training import checkpoint
from finetune_bert.engine import distributed
from finetune_bert.training.checkpoint import TrainState
from finetune_bert.training.config import TrainConfig
from finetune_bert.data.dataset import Dataset, load_dataset
from finetune_bert.engine.distributed import ALONE, World
from finetune_bert.engine.torch_engine import Engine, EngineOptions, native_cpu_bf16
from finetune_bert.engine.lora import ADAPTER_DIR, save_adapter
from finetune_bert.errors import UserError
from finetune_bert.engine.model_folder import ModelFolder, load_classifier
from finetune_bert.training.run_folder import RunFolder
from finetune_bert.console import console
from finetune_bert.data.report import report_files
from finetune_bert.data.prepared import Prepared
from finetune_bert.data.prepared import prepare as prepare_tokens
from finetune_bert.data.config import DataConfig
from finetune_bert.engine.run_info import RunInfo
from finetune_bert.data.skipped import skipped_csv
from finetune_bert.training.steps import StepOptions
from finetune_bert.data.seen import SEEN_FILE, seen_splits
from finetune_bert.data.tokens import Encoded, pad_id
from finetune_bert.tasks import MULTI_LABEL, REGRESSION, Scoring
from finetune_bert.training.kinds import class_weights, fold_scale
from finetune_bert.training.class_weights import by_name
from finetune_bert.evaluation.named import data_problem


def _setup_data(prepared: Prepared, run: RunFolder) -> None:
    """Say the data report, and stage it beside the model to come."""
    ds, tokenizer, encoded = prepared.ds, prepared.tokenizer, prepared.tokens.splits
    console.say(prepared.report_text)
    # Staged, not written: they appear with the first model saved, so that a run failing before it never
    # leaves a report of its own beside an earlier run's model.
    for name, text in report_files(prepared.report).items():
        run.stage(name, text)
    # what the model learned from or was selected on: `audit` refuses to judge labels with a model that saw them
    # (hashed from the store's keys when the data is stored: no text is read)
    run.stage(SEEN_FILE, seen_splits([s for s in (ds.train, ds.val, prepared.unlabeled) if s is not None]))
    if ds.skipped:
        run.stage("skipped_rows.csv", skipped_csv(ds.skipped))
        console.warn(f"{len(ds.skipped)} bad rows skipped; each is listed with its reason in "
                     f"{run.path / 'skipped_rows.csv'} (written with the model)")
    for i in range(min(2, len(ds.train))):
        ids = encoded["train"].ids[i]
        console.say(f"sample {i}: label {_shown_label(ds, ds.train.labels[i])}, {len(ids)} tokens: "
                    f"{tokenizer.decode(ids[:24])} ... {tokenizer.decode(ids[-8:])}")


def _shown_label(ds: Dataset, label: Any) -> str:
    """A training row's label as a person reads it: its class's name, its set of labels, or its target."""
    if ds.task == MULTI_LABEL:
        return "{" + ", ".join(ds.label_names[ds.label_to_id[x]] for x in label) + "}"
    if ds.task == REGRESSION:
        return f"{label:g}"
    return repr(ds.label_names[ds.label_to_id[label]])


def _setup_model(cfg: TrainConfig, prepared: Prepared, device: torch.device, world: World = ALONE):
    torch.manual_seed(cfg.seed)  # the classifier head's initialisation: the same on every rank
    notes: list[str] = []
    model = load_classifier(prepared.model or cfg.model, prepared.ds.label_names, cfg.trust_remote_code, notes=notes,
                            task=prepared.ds.task)
    for note in notes:
        console.say(f"note: {note}")
    if getattr(cfg, "student_layers", None):  # distill --student-layers, prune --keep-layers: the model's own layers
        from finetune_bert.engine.layers import keep_layers

        total = model.config.num_hidden_layers
        kept = keep_layers(model, cfg.student_layers, cfg.layer_pick)
        console.say(f"student: layers {', '.join(str(i + 1) for i in kept)} of the model's {total}")
    if world.rank:  # dropout: each rank draws its own masks (rank 0 keeps the single process's generator)
        torch.manual_seed((cfg.seed + 1_000_003 * world.rank) % (2**63))
    return model.to(device).train()


def _setup_engine(cfg: TrainConfig, model, tokenizer, max_length: int, world: World) -> Engine:
    options = EngineOptions(bf16=cfg.bf16, bf16_weights=cfg.bf16_weights, cls_fast_path=cfg.cls_fast_path,
                            unpadded=cfg.unpadded, lane_dropout=cfg.lane_dropout,
                            cpu_micro_batches=cfg.cpu_micro_batches, pad_to=0 if cfg.dynamic_padding else max_length,
                            lora=cfg.lora_settings(), cpu_bf16=cfg.cpu_bf16)
    device = next(model.parameters()).device
    if cfg.cpu_bf16 and device.type != "cpu":
        console.warn(f"--cpu-bf16 has no effect on {device.type}: --bf16 decides there")
    elif cfg.cpu_bf16 and not native_cpu_bf16():
        console.warn("--cpu-bf16 on a CPU with neither AMX tiles nor AVX-512 bf16: bf16 is emulated here and runs "
                     "slower than fp32")
    return Engine(model, device, pad_id(tokenizer), options=options, training=True, world=world)


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




def _setup_resume(cfg: TrainConfig, run: RunFolder, engine: Engine, optimizer, fresh: TrainState) -> TrainState:
    """The newest complete checkpoint's state, or `fresh`; a checkpoint from another run is refused. Rank 0
    picks the checkpoint; every rank loads it (the output folder must be on storage they all see)."""
    found = checkpoint.complete_checkpoints(run.path) if cfg.resume else []
    found = [Path(p) for p in distributed.from_main([str(p) for p in found], engine.world)]
    if cfg.resume and not found:
        console.say(f"--resume: no complete checkpoint in {run.path / 'checkpoints'}; starting fresh")
    if not found:
        return fresh
    # the arguments compared before any tensor is loaded: another model shape (a LoRA rank) would fail to load
    # with an error that says nothing of the arguments that changed
    if diff := checkpoint.differences(checkpoint.saved_fingerprint(found[-1]), fresh.fingerprint):
        raise UserError(f"--resume: {found[-1]} was made with other arguments or data; differences: "
                        + "; ".join(diff) + ". Use the original arguments, or a new --output")
    state = checkpoint.load(found[-1], engine, optimizer, engine.world.rank)
    console.say(f"resumed from {found[-1]} at step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch})")
    run.log("resume", step=state.step, checkpoint=str(found[-1]))
    return state


def prepare(cfg: DataConfig) -> Prepared:
    """The data read and checked (before any model file is touched), then the model's tokenizer and config
    from its folder, opened once, and the tokens stage (data.prepared): what train, tune and inspect share.
    `cfg`: the data options with `model` and `trust_remote_code`."""
    ds = load_dataset(cfg)
    check_labels(cfg, ds)
    folder = ModelFolder.open(cfg.model)
    tokenizer = folder.tokenizer(cfg.trust_remote_code)
    return dataclasses.replace(prepare_tokens(cfg, ds, tokenizer, folder.config(cfg.trust_remote_code)),
                               model=folder)


def check_labels(cfg: Any, ds: Dataset) -> None:
    """What only the data's labels tell, refused before any model is loaded: --class-weights naming no label,
    a --metric scikit-learn refuses for this many classes. `cfg`: any config; what it lacks is not checked."""
    by_name(getattr(cfg, "class_weights", "none"), ds.label_names, ds.raw_labels)
    problem = data_problem(getattr(cfg, "metric", None), ds.task, len(ds.label_names))
    if problem:
        raise UserError(problem)


@dataclass(frozen=True)
class Job:
    """One training run's parts, built whole before its first step: what the loop reads, and the state it
    advances (`state`, the one part that changes). `on_eval(state, metrics)` after each validation."""

    cfg: TrainConfig
    run: RunFolder
    prepared: Prepared
    engine: Engine
    trainer: Any  # what a step runs: the engine, or it in DistributedDataParallel
    optimizer: torch.optim.Optimizer
    state: TrainState
    step_options: StepOptions
    warmup: int
    total: int  # planned steps; state.total_steps is lowered by early stopping
    started: float
    on_eval: Callable[[TrainState, dict[str, Any]], None] | None = None

    @property
    def ds(self) -> Dataset:
        return self.prepared.ds

    @property
    def tokenizer(self):
        return self.prepared.tokenizer

    @property
    def enc(self) -> dict[str, Encoded]:
        return self.prepared.tokens.splits

    @property
    def report(self) -> dict[str, Any]:
        return self.prepared.report

    @property
    def world(self) -> World:
        return self.engine.world

    @property
    def step_size(self) -> int:
        return self.cfg.batch_size * self.cfg.grad_accum

    @property
    def scoring(self) -> Scoring:
        """How validation scores the model being trained: a regression model's outputs are still z-scores."""
        ds, threshold = self.ds, self.cfg.threshold
        fixed = None if threshold is None else (threshold,) * len(ds.label_names)
        return Scoring(ds.task, ds.target_scale, ds.integer_targets, fixed, self.cfg.metric)

    def run_info(self, temperature: float = 1.0, **decided: Any) -> RunInfo:
        """finetune_bert.json: how the saved model reads texts, for predict and evaluate; `temperature`: the
        one folded into the weights saved with it; `decided`: what calibration decided for the other kinds
        (thresholds, label_temperatures)."""
        cfg, ds = self.cfg, self.ds
        columns = ds.train.columns
        return RunInfo(max_length=self.prepared.tokens.max_length, truncation=cfg.truncation,
                       head_tokens=cfg.head_tokens, clean=cfg.clean, raw_labels=tuple(ds.raw_labels),
                       label_names=tuple(ds.label_names), base_model=cfg.model, temperature=temperature,
                       task=ds.task, pair_column=columns.pair if columns and ds.train.pairs is not None else None,
                       text_column=columns.text if columns else None,
                       target_scale=ds.target_scale if ds.task == REGRESSION else None,
                       integer_targets=ds.integer_targets, label_separator=cfg.label_separator, **decided)

    def save_best(self) -> None:
        """The model as it is now saved as the run's model (and, with --lora-save-adapter, its adapter)."""
        self.run.save_model(self.engine.model, self.tokenizer, self.run_info(), self.saved_weights())
        if self.cfg.lora_save_adapter and self.world.main and self.engine.lora:
            save_adapter(self.engine.model, self.cfg.lora_settings(), self.run.path / ADAPTER_DIR, self.cfg.model)

    def saved_weights(self) -> dict[str, torch.Tensor]:
        """The weights a saved model holds: the engine's, with a regression head's target scaling folded in."""
        return fold_scale(self.engine.weights(), self.engine.model, self.ds.target_scale)


def build_job(cfg: TrainConfig, run: RunFolder, prepared: Prepared, model, world: World, *, started: float,
              on_eval: Callable[[TrainState, dict[str, Any]], None] | None = None) -> Job:
    """Build the engine and the optimizer, and restore a checkpoint: everything before step one."""
    ds, enc = prepared.ds, prepared.tokens.splits
    run.own("checkpoints", *([ADAPTER_DIR] if cfg.lora_save_adapter else []))
    run.stage("run_config.json", json.dumps(cfg.to_json(), indent=2) + "\n")
    _setup_data(prepared, run)
    engine = _setup_engine(cfg, model, prepared.tokenizer, prepared.tokens.max_length, world)
    optimizer = _setup_optimizer(cfg, engine)
    weights = class_weights(cfg.class_weights, ds, enc["train"].labels, engine.device)
    step_size = cfg.batch_size * cfg.grad_accum
    if len(enc["train"]) < step_size:
        console.say(f"note: {len(enc['train'])} training rows are fewer than one batch of {step_size}: every step "
                    "uses all of them")
    steps_per_epoch = math.ceil(len(enc["train"]) / step_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    fingerprint = checkpoint.fingerprint(cfg, ds.train.texts, ds.train.labels, ds.val.texts)
    fingerprint["bf16_weights"] = engine.bf16_weights  # what runs, not the option (a no-op on CPU)
    fresh = TrainState(total_steps=total, micro_splits=cfg.grad_accum, eval_batch_size=cfg.eval_batch_size,
                       fingerprint=fingerprint)
    state = _setup_resume(cfg, run, engine, optimizer, fresh)
    job = Job(cfg, run, prepared, engine, _setup_trainer(engine, world), optimizer, state,
              StepOptions.of(cfg, weights, ds.task), math.ceil(cfg.warmup_ratio * total), total, started, on_eval)
    _announce(job, steps_per_epoch)
    return job


def _announce(job: Job, steps_per_epoch: int) -> None:
    engine, layout, state = job.engine, job.engine.layout, job.state
    precision = ", fp32" if engine.dtype is None else (" with bf16 weights (fp32 masters)" if engine.bf16_weights
                                                       else " with bf16 autocast")
    console.say(f"training {job.cfg.model} on {engine.device.type}{precision}"
        f"{', packed batches (no padding)' if layout.packed else ''}"
        f"{f', every batch padded to {layout.pad_to}' if layout.pad_to else ''}"
        f"{', lane dropout' if layout.lane_dropout else ''}: {len(job.enc['train'])} texts, "
        f"{state.total_steps} steps of {job.step_size} ({steps_per_epoch} per epoch), warm-up {job.warmup}")
    job.run.log("start", device=engine.device.type, steps=state.total_steps, examples=len(job.enc["train"]),
                labels=job.ds.label_names, packed=layout.packed, lane_dropout=layout.lane_dropout,
                bf16=engine.dtype is not None, bf16_weights=engine.bf16_weights)
