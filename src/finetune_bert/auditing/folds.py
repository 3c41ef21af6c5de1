"""K-fold cross-validation for the audit: stratified, seeded folds, each a normal training run into
OUTPUT/folds/fold-K (crash-safe and resumable as any run), whose best model then scores the rows it never
saw. A fold is done when OUTPUT/folds/fold-K.npz holds those rows' outputs: a rerun of the same command keeps
the done folds, resumes the one that was running from its last checkpoint, and starts the rest."""

from __future__ import annotations

import dataclasses
import gc
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from finetune_bert import faults
from finetune_bert.console import console
from finetune_bert.data.dataset import Dataset
from finetune_bert.data.kinds import strata, target_scale
from finetune_bert.data.prepared import prepare as prepare_tokens
from finetune_bert.data.splits import Split, stratified_split
from finetune_bert.errors import UserError
from finetune_bert.tasks import CLASSIFICATION, REGRESSION
from finetune_bert.training.checkpoint import complete_checkpoints
from finetune_bert.training.config import TrainConfig
from finetune_bert.training.train import run_training

# What a fold's folder keeps once its outputs are saved and the audit written (its weights go, unless asked).
_WEIGHTS = ("model.safetensors", "checkpoints")


def assign_folds(rows: Split, task: str, k: int, seed: int) -> np.ndarray:
    """Each row's fold, 0..k-1: stratified by class (a row's rarest label for label sets, a target's decile),
    seeded, every row in exactly one fold."""
    from sklearn.model_selection import StratifiedKFold

    if len(rows) < k:
        raise UserError(f"{rows.source}: {len(rows)} rows cannot be split into {k} folds; pass a smaller --folds")
    by = np.asarray(strata(rows, task) if task != CLASSIFICATION else [str(x) for x in rows.labels])
    fold = np.empty(len(rows), dtype=np.int64)
    with warnings.catch_warnings():  # a class rarer than k: sklearn spreads what it has, which is all one can do
        warnings.simplefilter("ignore")
        for number, (_, held) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(by, by)):
            fold[held] = number
    return fold


def fold_dataset(ds: Dataset, rows: Split, held: np.ndarray, cfg: TrainConfig) -> Dataset:
    """The training data of one fold: the other folds, less a stratified validation split of them (early
    stopping and calibration never see the held-out rows), with the whole data's labels and names."""
    notes: list[str] = []
    train = rows.subset(np.flatnonzero(~held).tolist())
    train, val = stratified_split(train, cfg.val_fraction, cfg.seed, notes,
                                  None if ds.task == CLASSIFICATION else strata(train, ds.task))
    scale = target_scale(train) if ds.task == REGRESSION else (0.0, 1.0)
    return Dataset(train, val, None, ds.label_names, ds.raw_labels, [], notes, train, ds.task, scale)


@dataclasses.dataclass
class FoldRunner:
    """Trains and scores the folds in OUTPUT/folds; `run(score)`: `score(model_folder, split)` gives a split's
    outputs with a trained fold model (the audit's own scoring, so that folds and a fine-tuned model agree)."""

    cfg: TrainConfig
    ds: Dataset
    rows: Split
    fold: np.ndarray
    folder: Path
    tokenizer: Any
    model: Any  # the base model's engine.model_folder.ModelFolder, opened once for every fold

    def path(self, k: int) -> Path:
        return self.folder / "folds" / f"fold-{k}"

    def outputs_path(self, k: int) -> Path:
        return self.folder / "folds" / f"fold-{k}.npz"

    def run(self, score) -> np.ndarray:
        """Every fold's outputs, rows in the data's order: the done folds read back, the others trained."""
        k_total = int(self.fold.max()) + 1
        out: np.ndarray | None = None
        for k in range(k_total):
            faults.hit("fold", k)
            outputs = self._fold(k, k_total, score)
            if out is None:
                out = np.zeros((len(self.rows), outputs.shape[1]), dtype=np.float32)
            out[self.fold == k] = outputs
        assert out is not None
        return out

    def _fold(self, k: int, k_total: int, score) -> np.ndarray:
        saved = self.outputs_path(k)
        if saved.is_file():
            with np.load(saved) as data:
                console.say(f"fold {k + 1}/{k_total}: done earlier (its outputs are in {saved})")
                return data["outputs"]
        held = self.fold == k
        run_dir = self.path(k)
        if not (run_dir / "metrics.json").is_file():
            self._train(k, k_total, held, run_dir)
        held_rows = self.rows.subset(np.flatnonzero(held).tolist())
        outputs = np.asarray(score(run_dir, held_rows), dtype=np.float32)
        _save_npz(saved, outputs=outputs, index=np.flatnonzero(held))
        return outputs

    def _train(self, k: int, k_total: int, held: np.ndarray, run_dir: Path) -> None:
        started = time.time()
        fold_ds = fold_dataset(self.ds, self.rows, held, self.cfg)
        resumed = bool(complete_checkpoints(run_dir)) if run_dir.is_dir() else False
        console.say(f"fold {k + 1}/{k_total}: training on {len(fold_ds.train)} rows (validation {len(fold_ds.val)}), "
                    f"{int(held.sum())} held out" + (" (resumed from its checkpoint)" if resumed else ""))
        cfg = dataclasses.replace(self.cfg, output=str(run_dir), resume=run_dir.is_dir(), overwrite=False)
        prepared = dataclasses.replace(prepare_tokens(cfg, fold_ds, self.tokenizer,
                                                      self.model.config(cfg.trust_remote_code)), model=self.model)
        try:
            with console.quiet():
                result = run_training(cfg, prepared)
        finally:
            gc.collect()
        value = result.metrics["validation"].get(cfg.metric)
        console.say(f"fold {k + 1}/{k_total}: trained in {time.time() - started:.0f}s (validation {cfg.metric} "
                    f"{value:.4f})" if isinstance(value, float) else f"fold {k + 1}/{k_total}: trained")

    def drop_weights(self) -> None:
        """Each fold's weights and checkpoints, once the audit is written: the outputs and metrics stay."""
        for k in range(int(self.fold.max()) + 1):
            for name in _WEIGHTS:
                target = self.path(k) / name
                if target.is_dir():
                    shutil.rmtree(target, ignore_errors=True)
                elif target.exists():
                    target.unlink()


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Written whole or not at all: a fold's outputs file is the mark that the fold is done."""
    tmp = path.with_name("." + path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
