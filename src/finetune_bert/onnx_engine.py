"""The ONNX engine: a model exported by `finetune-bert export`, run by onnxruntime on the CPU.

It answers what the torch engine (engine.Engine) answers for inference, `logits(encoded, batch_size)` in
input order, so predict, evaluate and the server run either one unchanged. Batches are sorted by length
and sized by tokens: a file of tweets and a file of long reviews both run near the best batch.

An export records the weights it was made from (size, mtime, sha256, in onnx/export.json). A model
folder retrained or replaced since is refused, never scored with the old graph: that would be a silent
wrong result.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune_bert.batches import collate, eval_batches
from finetune_bert.errors import UserError
from finetune_bert.tokens import Encoded

EXPORT_DIR = "onnx"
MANIFEST = "export.json"
FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
WEIGHTS = "model.safetensors"
# Tokens in one ONNX batch (padded), so tweets and long reviews both run at a sensible batch; not tuned:
# 8192 is 64 texts at 128 tokens, 16 at 512 (the torch engine's CPU default sizes).
BATCH_TOKENS = 8192


def weights_stamp(folder: Path, with_hash: bool = True) -> dict[str, Any]:
    """What identifies the weights an export was made from: size and mtime (cheap), and their sha256."""
    path = folder / WEIGHTS
    st = path.stat()
    stamp: dict[str, Any] = {"file": WEIGHTS, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if with_hash:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        stamp["sha256"] = digest.hexdigest()
    return stamp


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / EXPORT_DIR / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def export_command(model: str, backend: str = "onnx") -> str:
    return f"finetune-bert export --model {model} --format onnx" + (" --quantize int8" if backend == "onnx-int8" else "")


def find_export(folder: Path, backend: str, model: str) -> Path | None:
    """The ONNX file of `backend` (onnx, onnx-int8) in a model folder, checked current; None if there is no
    export. An export older than the weights is an error naming the command that renews it."""
    manifest = read_manifest(folder)
    path = folder / EXPORT_DIR / FILES[backend]
    if manifest is None or FILES[backend] not in manifest.get("files", []) or not path.is_file():
        return None
    made = manifest.get("weights", {})
    now = weights_stamp(folder, with_hash=False) if (folder / WEIGHTS).is_file() else {}
    same = now and now["size"] == made.get("size") and now["mtime_ns"] == made.get("mtime_ns")
    # a copied folder keeps the bytes but not the mtime: the hash decides (slower, once per load)
    if not same and not (now and now["size"] == made.get("size") and weights_stamp(folder)["sha256"] == made.get("sha256")):
        raise UserError(f"--model {model}: its ONNX export ({EXPORT_DIR}/{FILES[backend]}) was made from other weights "
                        f"than its {WEIGHTS} (retrained or replaced since); renew it: {export_command(model, backend)}")
    return path


class OnnxEngine:
    """An exported classifier in an onnxruntime session on the CPU; `config` is the model's HF config."""

    backend = "onnx"

    def __init__(self, path: Path, config, pad_id: int, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        # torch runs in the same process (tokenizing, aggregating): spinning ORT threads would steal its
        # cores between calls (onnxruntime#13808)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # a truncated or foreign file: InvalidProtobuf, Fail, ...
            raise UserError(f"{path}: cannot be loaded by onnxruntime ({type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}); the export may "
                            "be damaged: run the export again") from None
        self.path, self.config, self.pad_id = path, config, pad_id
        self.device = torch.device("cpu")
        self.backend = "onnx-int8" if path.name == FILES["onnx-int8"] else "onnx"

    def batch_fit(self, length: int) -> int:
        return max(1, BATCH_TOKENS // max(length, 1))

    def logits(self, encoded: Encoded, batch_size: int) -> torch.Tensor:
        """fp32 logits (n, classes) in input order; batches longest first, at most `batch_size` texts and
        about BATCH_TOKENS tokens each."""
        out = np.zeros((len(encoded), self.config.num_labels), dtype=np.float32)
        for index in eval_batches(encoded.lengths, batch_size, self.batch_fit):
            batch = collate(encoded, index, self.pad_id)  # the graph's two inputs, int64 (as exported)
            feed = {name: batch[name].numpy() for name in ("input_ids", "attention_mask")}
            out[index] = self.session.run(["logits"], feed)[0]
        return torch.from_numpy(out)
