"""The ONNX engine: a model exported by `finetune-bert export`, run by onnxruntime on the CPU.

It answers what the torch engine (torch_engine.Engine) answers for inference, `logits(encoded, batch_size)` in
input order, so predict, evaluate and the server run either one unchanged. Batches are sorted by length
and sized by tokens: a file of tweets and a file of long reviews both run near the best batch.

Nothing here imports torch or transformers: with an export whose manifest holds the model's config and a
checked tokenizer (onnx_tokenizer.py), a prediction starts without paying their import.

An export records the weights it was made from (size, mtime, sha256, in onnx/export.json). A model
folder retrained or replaced since is refused, never scored with the old graph: that would be a silent
wrong result.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetune_bert.engine import onnx_tokenizer
from finetune_bert.engine.batches import eval_batches, padded
from finetune_bert.errors import UserError
from finetune_bert.data.tokens import Encoded

EXPORT_DIR = "onnx"
MANIFEST = "export.json"
FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
WEIGHTS = "model.safetensors"
# Tokens in one ONNX batch (padded), so tweets and long reviews both run at their best batch: small batches
# keep each layer's activations (and the heads' score matrices) in cache. On a 2-core AVX-512 Xeon, 200 IMDB
# reviews cut at 256 took 2.18 s (int8) at 1024 tokens a batch, 2.32 at 2048, 2.84 at 8192 and 3.21 at 16384;
# fp32 4.26 s at 1024 against 4.14 at 2048 (benchmarks/NOTES.md).
BATCH_TOKENS = 1024
# The files the manifest's config and tokenizer were read from: any of them changed since the export, and
# they are read again through transformers (slower to start, never stale).
SOURCES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class Device:
    """Where onnxruntime's CPU provider runs, as a torch.device would say it (callers ask `.type`)."""

    type: str = "cpu"


@dataclass(frozen=True)
class ExportedConfig:
    """What predict reads of a model's HF config, as transformers gave it at export time."""

    num_labels: int
    id2label: dict[int, str]
    model_type: str
    max_position_embeddings: int | None
    vocab_size: int | None

    @classmethod
    def of(cls, config) -> "ExportedConfig":
        return cls(config.num_labels, {int(k): str(v) for k, v in config.id2label.items()},
                   getattr(config, "model_type", ""), getattr(config, "max_position_embeddings", None),
                   getattr(config, "vocab_size", None))

    def as_json(self) -> dict[str, Any]:
        return {"num_labels": self.num_labels, "id2label": {str(k): v for k, v in self.id2label.items()},
                "model_type": self.model_type, "max_position_embeddings": self.max_position_embeddings,
                "vocab_size": self.vocab_size}


def standalone(folder: Path) -> tuple[ExportedConfig, onnx_tokenizer.TokenizerFile] | None:
    """The model's config and tokenizer from its export alone (no transformers), or None when the export
    predates them, its tokenizer check failed, a source file or the saved tokenizer changed since, or any of
    it cannot be read: the caller then reads the folder's own files through transformers."""
    manifest = read_manifest(folder) or {}
    config, tokenizer = manifest.get("config"), manifest.get("tokenizer")
    path = folder / EXPORT_DIR / onnx_tokenizer.FILE
    if not (isinstance(config, dict) and isinstance(tokenizer, dict) and path.is_file()):
        return None
    try:
        if onnx_tokenizer.stamps(folder, SOURCES) != manifest.get("sources") or \
                onnx_tokenizer.stamps(path.parent, (path.name,)).get(path.name) != tokenizer.get("sha256"):
            return None
        config = {**config, "id2label": {int(k): v for k, v in config["id2label"].items()}}
        return ExportedConfig(**config), onnx_tokenizer.TokenizerFile(path, tokenizer["pad_token_id"],
                                                                      tokenizer["model_max_length"])
    except Exception:  # a hand-edited manifest, or a damaged tokenizer.json (tokenizers raises a bare Exception)
        return None  # (the fallback reads the folder's own files, and reports what is wrong with them)


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

    def __init__(self, path: Path, config, pad_id: int, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_threads()
        options.inter_op_num_threads = 1
        # idle ORT threads must not spin: they would take the cores of the tokenizing thread (evaluate's and
        # predict's overlap) and of a server's event loop between calls (onnxruntime#13808); spinning bought
        # 0-3% here (benchmarks/NOTES.md)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # a truncated or foreign file: InvalidProtobuf, Fail, ...
            raise UserError(f"{path}: cannot be loaded by onnxruntime ({type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}); the export may "
                            "be damaged: run the export again") from None
        self.path, self.config, self.pad_id = path, config, pad_id
        self.device = Device()

    def batch_fit(self, length: int) -> int:
        return max(1, BATCH_TOKENS // max(length, 1))

    def logits(self, encoded: Encoded, batch_size: int) -> np.ndarray:
        """fp32 logits (n, classes) in input order; batches longest first, at most `batch_size` texts and
        about BATCH_TOKENS tokens each."""
        out = np.zeros((len(encoded), self.config.num_labels), dtype=np.float32)
        for index in eval_batches(encoded.lengths, batch_size, self.batch_fit):
            out[index] = self.session.run(["logits"], padded(encoded, index, self.pad_id))[0]
        return out


def cpu_threads() -> int:
    """OMP_NUM_THREADS if set (as torch honours it), else 0: onnxruntime's default, one thread per physical
    core (the logical CPUs of a hyperthreaded core share one set of vector units)."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return 0
