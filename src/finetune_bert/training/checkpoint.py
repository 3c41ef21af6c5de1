"""Crash-safe checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is the folder DIR/checkpoints/step-NNNNNNN holding
  model.safetensors   the weights (safetensors: loading it cannot run code); with LoRA only the adapters and
                      the head, the tensors trained (the frozen base is --model's own, pinned by the fingerprint)
  optimizer.pt        AdamW state, loaded with torch.load(weights_only=True)
  rng.pt              python, numpy, torch CPU and CUDA generator states (weights_only=True): rank 0's, and
                      under several processes every rank's in "ranks", so each resumes its own dropout
  state.json          step counters, data position, best metric, early stopping, backoff, run fingerprint
  COMPLETE            written last; a folder without it is never used
It is written into a temporary sibling folder, each file fsynced, then renamed into place. The learning
rate is a pure function of the step and bf16 needs no grad scaler, so there is no scheduler or scaler state.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from finetune_bert import faults
from finetune_bert.data.columns import identity
from finetune_bert.errors import UserError
from finetune_bert.safefiles import as_os_error, disk_error, public_mode

DONE = "COMPLETE"
CHECKPOINT_FILES = frozenset({"model.safetensors", "optimizer.pt", "rng.pt", "state.json", DONE})
# Options whose change would make a resumed run differ from the one it continues.
MUST_MATCH = ("model", "data", "val_data", "test_data", "text_column", "label_column", "label_names",
              "val_fraction", "max_train_samples", "clean", "max_length", "truncation", "head_tokens",
              "dedupe", "on_bad_rows", "epochs", "batch_size", "grad_accum", "lr", "weight_decay",
              "warmup_ratio", "max_grad_norm", "seed", "class_weights", "group_by_length", "bf16", "metric",
              "cls_fast_path", "lane_dropout", "unpadded", "cpu_micro_batches", "dynamic_padding", "bf16_weights",
              "lora", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "cpu_bf16")


@dataclass
class TrainState:
    """Where a run is. Everything in it is plain JSON."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0          # optimizer steps already taken in this epoch
    total_steps: int = 0             # lowered by early stopping
    best: float | None = None
    best_step: int = 0
    stale_evals: int = 0
    history: list = field(default_factory=list)
    best_metrics: dict = field(default_factory=dict)
    micro_splits: int = 1            # micro-batches per step; doubled by out-of-memory backoff
    eval_batch_size: int = 64        # halved by out-of-memory backoff in evaluation
    bad_steps: int = 0               # consecutive NaN/inf steps
    skipped_steps: int = 0           # all NaN/inf steps skipped so far
    tokens_seen: int = 0
    fingerprint: dict = field(default_factory=dict)


def fingerprint(cfg, train_texts: Sequence[str], train_labels, val_texts: Sequence[str]) -> dict[str, Any]:
    """The options a resume must share, and a hash of the data: of every text and label, or for a stored split
    (data.stored) of its store's name (a hash of the data file's bytes and the options that read it) and the
    rows it shows, so that no text is read to compute it."""
    digest = hashlib.sha256()
    stored = identity(train_texts)
    if stored is not None:
        digest.update(b"stored\0" + stored + b"\1" + (identity(train_labels) or repr(list(train_labels)).encode()))
        val = identity(val_texts)
        digest.update(b"\2" + (val if val is not None else b"\2".join(t.encode() for t in val_texts)))
        return {**{k: getattr(cfg, k) for k in MUST_MATCH}, "data_sha256": digest.hexdigest()}
    for text, label in zip(train_texts, train_labels):
        digest.update(text.encode())
        digest.update(b"\0" + str(label).encode() + b"\1")
    digest.update(b"\2".join(t.encode() for t in val_texts))
    return {**{k: getattr(cfg, k) for k in MUST_MATCH}, "data_sha256": digest.hexdigest()}


# What a checkpoint written before an option existed did, so it can still be resumed (with that value).
BEFORE_OPTION = {"lane_dropout": False, "cpu_micro_batches": False, "dynamic_padding": True, "bf16_weights": False,
                 "lora": False, "lora_rank": None, "lora_alpha": None, "lora_dropout": None, "lora_targets": None,
                 "cpu_bf16": False}
# Options that existed before they were recorded: an older checkpoint does not say which value it used.
RECORDED_LATER = ("unpadded",)


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    saved = {**BEFORE_OPTION, **saved}
    keys = set(saved) | (set(now) - {k for k in RECORDED_LATER if k not in saved})
    return [f"{k}: checkpoint has {saved.get(k)!r}, now {now.get(k)!r}" for k in sorted(keys)
            if saved.get(k) != now.get(k)]


def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        # the current device's alone: every process trains on one, and touching the others would give each
        # process of a multi-GPU job a CUDA context on every GPU
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any], rank: int = 0) -> None:
    """Rank `rank`'s generators from a checkpoint's states. A rank the checkpoint has none for (a resume
    with more processes than saved it) keeps the fresh seeding it started with: its dropout masks are new
    ones, which no run without dropout notices."""
    ranks = state.get("ranks") or [state]
    if rank >= len(ranks):
        return
    state = ranks[rank]
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every device's state
            cuda = cuda[min(torch.cuda.current_device(), len(cuda) - 1)]
        torch.cuda.set_rng_state(cuda)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(folder: Path, engine, optimizer, state: TrainState, keep: int, rngs: list[dict] | None = None) -> Path:
    """Write a complete checkpoint atomically, then prune all but the newest `keep` (at least 1).

    A disk problem (full, read-only, file-size limit) removes the partial folder and is one line naming the
    last complete checkpoint, which is left intact. `engine`: an torch_engine.Engine; its full-precision weights
    (the fp32 masters when the model runs in bf16) are what is saved. `rngs`: every rank's generator
    states, rank order (default: this process's)."""
    root = folder / "checkpoints"
    final = root / f"step-{state.step:07d}"
    tmp = root / f".tmp-step-{state.step:07d}"
    try:
        root.mkdir(exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        _write(tmp, engine.checkpoint_weights(), optimizer, state, rngs or [rng_state()])
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync(root)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        error = as_os_error(exc)
        if error is None:
            raise
        last = complete_checkpoints(folder)
        intact = f"the last complete checkpoint {last[-1]} is intact" if last else "there is no earlier complete checkpoint"
        raise UserError(f"{disk_error(error, final, 'write the checkpoint')}; {intact}") from None
    # keep 0 would slice [:-0], deleting nothing; the newest must survive anyway, a resume needs it.
    for old in complete_checkpoints(folder)[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write(tmp: Path, state_dict: dict[str, torch.Tensor], optimizer, state: TrainState, rngs: list[dict]) -> None:
    from safetensors.torch import save_file

    tmp.mkdir()
    weights = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(_untie(weights), str(tmp / "model.safetensors"))
    faults.hit("checkpoint", state.step)  # tests kill the process here: mid-write
    _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
    _torch_save({**rngs[0], "ranks": rngs} if len(rngs) > 1 else rngs[0], tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state)) + "\n", encoding="utf-8")
    mode = public_mode()  # safetensors >= 0.8 writes 0600
    for name in ("model.safetensors", "optimizer.pt", "rng.pt", "state.json"):
        os.chmod(tmp / name, mode)
        _fsync(tmp / name)
    (tmp / DONE).write_text("ok\n", encoding="utf-8")  # last, once everything else is on disk
    os.chmod(tmp / DONE, mode)
    _fsync(tmp / DONE)


class _Recording:
    """A write-only file that remembers its OSError: torch.save reports a failed write only as an
    unexplained RuntimeError ("unexpected pos"), losing the errno a user needs (disk full, file too large)."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def _torch_save(obj: Any, path: Path) -> None:
    with open(path, "wb") as handle:
        sink = _Recording(handle)
        try:
            torch.save(obj, sink)
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise


def _untie(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory (tied embeddings); clone the repeats."""
    seen, out = set(), {}
    for key, tensor in weights.items():
        ptr = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        out[key] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return out


def complete_checkpoints(folder: Path) -> list[Path]:
    root = folder / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / DONE).is_file())


def saved_fingerprint(path: Path) -> dict[str, Any]:
    """The run fingerprint a checkpoint was saved with (its state.json), read without loading any tensor."""
    try:
        return json.loads((path / "state.json").read_text()).get("fingerprint", {})
    except (OSError, ValueError) as exc:
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}); remove it to resume from an "
                        "older one") from None


def load(path: Path, engine, optimizer, rank: int = 0) -> TrainState:
    """Restore weights (into an torch_engine.Engine), optimizer, RNG (rank `rank`'s) and counters. Pickled code is
    refused, never run."""
    from safetensors.torch import load_file

    try:
        engine.load_weights(load_file(str(path / "model.safetensors"), device=str(engine.device)))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=engine.device, weights_only=True))
        rng = torch.load(path / "rng.pt", weights_only=True)
    except Exception as exc:  # weights_only raises UnpicklingError for anything that is not plain data
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"checkpoint {path} cannot be loaded safely ({type(exc).__name__}: {first}); "
                        "it may be damaged or tampered with. Remove it to resume from an older one") from None
    _set_rng_state(rng, rank)
    payload = json.loads((path / "state.json").read_text())
    return TrainState(**payload)
