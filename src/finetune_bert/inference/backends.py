"""What runs a model for prediction, chosen by name in one place: `BACKENDS[name](folder, device, check)`.

Every backend answers the `InferenceEngine` protocol, so the Classifier, evaluate, predict and the server run
any of them unchanged. torch (the default) runs in the device's fast dtype (engine.inference_dtype: bf16 on
GPUs and AMX CPUs), the fastest measured on every machine so far; the ONNX backends run a folder's
`finetune-bert export` in onnxruntime on the CPU, and import neither torch nor transformers where the export
holds the model's config and a checked tokenizer.
"""

from __future__ import annotations

from functools import partial
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


def as_numpy(logits: Any) -> np.ndarray:
    return logits if isinstance(logits, np.ndarray) else logits.numpy()
