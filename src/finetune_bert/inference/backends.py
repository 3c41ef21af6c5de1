"""What runs a model for prediction, chosen by name in one place: `BACKENDS[name](folder, device, check)`.

Every backend answers the `InferenceEngine` protocol, so the Classifier, evaluate, predict and the server run
any of them unchanged. torch runs in the device's fast dtype (engine.inference_dtype: bf16 on GPUs and AMX
CPUs); the ONNX backends run a folder's export (`train` writes the fp32 one, `finetune-bert export` both) in
onnxruntime on the CPU, and import neither torch nor transformers where the export holds the model's config
and a checked tokenizer.

`auto` (the default) is no engine of its own: `choose` names the fastest backend that gives the model's own
answers on this machine, by checking what it has: torch on a GPU or an AMX CPU (bf16, the fastest measured
there), the folder's ONNX fp32 export on other CPUs when it is whole and made from the weights beside it
(whole processes 1.1-1.5x torch fp32 on a 2-core AVX-512 Xeon, benchmarks/RESULTS.md; logits within 1e-4,
checked at export), else torch. int8 is never chosen: its scores move with the texts batched together.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from finetune_bert.console import console
from finetune_bert.data.tokens import Encoded, pad_id
from finetune_bert.engine.model_folder import ModelFolder, pick_device
from finetune_bert.engine.onnx_engine import OnnxEngine, export_command, find_export, head_warning, standalone
from finetune_bert.errors import UserError

# Called with (tokenizer, config) once both are read and before any weights are loaded: a reading the model's
# windows cannot take is refused in seconds.
Check = Callable[[Any, Any], None]


class InferenceEngine(Protocol):
    """What a backend gives the Classifier: logits of encoded texts in input order."""

    device: Any  # a torch.device, or onnx_engine.Device; callers ask `.type`
    config: Any  # the model's config (HF, or onnx_engine.ExportedConfig): num_labels, id2label

    def logits(self, encoded: Encoded, batch_size: int) -> Any: ...  # numpy, or a CPU tensor from torch


def _torch(folder: ModelFolder, device: str | None, check: Check, *, fp32: bool) -> tuple[InferenceEngine, Any]:
    import torch

    from finetune_bert.engine.torch_engine import Engine, inference_dtype

    tokenizer = folder.tokenizer()
    check(tokenizer, folder.config())
    target = torch.device(device) if device else pick_device()
    notes: list[str] = []
    model = folder.classifier(notes=notes)
    for note in notes:
        console.warn(note)
    return Engine(model, target, pad_id(tokenizer), dtype=None if fp32 else inference_dtype(target)), tokenizer


def _onnx(folder: ModelFolder, device: str | None, check: Check, *, name: str) -> tuple[InferenceEngine, Any]:
    """The folder's export in onnxruntime on the CPU; its config and tokenizer from the export itself where it
    holds them, else through transformers. No export, or one older than the weights or damaged, is an error
    naming the command that makes it; an export of an untrained head warns as the torch backend does."""
    if device is not None and device.split(":")[0] != "cpu":
        raise UserError(f"--backend {name} runs on the CPU (onnxruntime's CPU provider); on {device} use "
                        "--backend torch")
    found = find_export(folder.path, name, folder.name) if folder.path is not None else None
    if found is None:
        raise UserError(f"--backend {name}: {folder} has no {'int8 ' if name == 'onnx-int8' else ''}ONNX "
                        f"export; make it with: {export_command(folder.name, name)}")
    return _onnx_engine(folder, found, check)


def _onnx_engine(folder: ModelFolder, found: Path, check: Check) -> tuple[InferenceEngine, Any]:
    """The engine of an export `find_export` checked (`found`), with the config and tokenizer it holds."""
    config, tokenizer = standalone(folder.path) or (folder.config(), folder.tokenizer())
    check(tokenizer, config)
    if (warning := head_warning(folder.path, folder.name)) is not None:
        console.warn(warning)
    return OnnxEngine(found, config, pad_id(tokenizer)), tokenizer


BACKENDS: dict[str, Callable[[ModelFolder, str | None, Check], tuple[InferenceEngine, Any]]] = {
    "torch": partial(_torch, fp32=False),
    "torch-fp32": partial(_torch, fp32=True),
    "onnx": partial(_onnx, name="onnx"),
    "onnx-int8": partial(_onnx, name="onnx-int8"),
}


AUTO = "auto"
CHOICES = (AUTO, *BACKENDS)  # what --backend and load() take


@dataclass(frozen=True)
class Choice:
    """What `auto` resolved to, and why, as said once to the user; `export`: the graph checked for it."""

    backend: str
    why: str
    export: Path | None = None

    def line(self) -> str:
        return f"backend {self.backend} (auto: {self.why})"


def choose(folder: ModelFolder, device: str | None = None, *, gradients: bool = False) -> Choice:
    """The fastest backend that gives `folder`'s own answers here. `gradients`: explanations will be asked,
    which torch alone gives. A stale or damaged export is passed over for torch, with the reason."""
    if gradients:
        return Choice("torch", "explanations need the model's gradients, which only torch gives")
    fast = _torch_accelerated(device)
    if fast is not None:
        return Choice("torch", fast)
    if importlib.util.find_spec("onnxruntime") is None:
        return Choice("torch", "onnxruntime is not installed, so the ONNX export cannot run")
    name = str(folder.name)  # as the user gave it (a Path in the API)
    if folder.path is None:
        return Choice("torch", f"{name} is not a local folder, so it has no ONNX export")
    try:
        found = find_export(folder.path, "onnx", name)
    except UserError as exc:  # made from other weights, damaged, or not finished
        return Choice("torch", f"its ONNX export is not used: {exc}")
    if found is None:
        return Choice("torch", f"no ONNX export in {name} (train writes one; or: {export_command(name)})")
    return Choice("onnx", "no GPU or AMX here; the folder's ONNX fp32 export is current, its logits within 1e-4 of "
                          "torch's", found)


def load_auto(folder: ModelFolder, device: str | None, check: Check, *,
              gradients: bool = False) -> tuple[Choice, InferenceEngine, Any]:
    """`auto`'s choice, and its engine and tokenizer; an export that passed `choose` but fails to load (a config
    changed since) is passed over for torch as well."""
    choice = choose(folder, device, gradients=gradients)
    if choice.export is not None:  # checked once: its graph and weights are not hashed again
        try:
            return (choice, *_onnx_engine(folder, choice.export, check))
        except UserError as exc:  # a reading the model refuses is refused by torch's check in the same words
            choice = Choice("torch", f"its ONNX export is not used: {exc}")
    return (choice, *BACKENDS[choice.backend](folder, device, check))


def _torch_accelerated(device: str | None) -> str | None:
    """Why torch is the fastest exact backend on `device` (default: the one torch picks), or None. torch is
    imported (over a second of a prediction's start) only where the machine may have a GPU or AMX tiles."""
    if device is not None and device.split(":")[0] != "cpu":
        return f"runs on {device}"
    if not may_accelerate(gpu=device is None):
        return None
    import torch

    from finetune_bert.engine.torch_engine import inference_dtype

    target = torch.device(device) if device else pick_device()
    if target.type != "cpu":
        return f"a GPU ({target})"
    return "a CPU with AMX tiles, where torch runs bf16" if inference_dtype(target) is not None else None


# Where torch could find a GPU or AMX tiles, read without importing it: the device nodes of NVIDIA's, AMD's
# (ROCm) and WSL's GPU drivers, and the CPU flags Linux lists (amx_tile only where the kernel enables AMX).
GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")
CPUINFO = Path("/proc/cpuinfo")


def may_accelerate(*, gpu: bool = True) -> bool:
    """False only where this is surely a CPU without AMX (Linux, no GPU device node, no amx_tile flag); anything
    else (macOS with MPS, another system, an unreadable cpuinfo) is for torch to answer. `gpu`: a GPU counts."""
    if sys.platform != "linux":
        return True
    if gpu and any(os.path.exists(node) for node in GPU_NODES):
        return True
    try:
        flags = CPUINFO.read_text(errors="replace")
    except OSError:
        return True
    return re.search(r"\bamx_tile\b", flags) is not None


def as_numpy(logits: Any) -> np.ndarray:
    return logits if isinstance(logits, np.ndarray) else logits.numpy()
