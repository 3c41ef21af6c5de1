"""The ONNX engine: a model exported by `finetune-bert export`, run by onnxruntime on the CPU.

It answers what the torch engine (torch_engine.Engine) answers for inference, `logits(encoded, batch_size)` in
input order, so predict, evaluate and the server run either one unchanged. Batches are sorted by length
and sized by tokens: a file of tweets and a file of long reviews both run near the best batch.

Nothing here imports torch or transformers: with an export whose manifest holds the model's config and a
checked tokenizer (onnx_tokenizer.py), a prediction starts without paying their import.

An export records the weights it was made from (size, mtime, sha256, in onnx/export.json). A model
folder retrained or replaced since is refused, never scored with the old graph: that would be a silent
wrong result. So is a graph whose bytes are not the ones written (its sha256 is in the manifest too: damage
that keeps a file's size still moves every probability), and a manifest that is not what export writes.
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
TOOL = "finetune-bert"  # the manifest's "tool": onnx/ is ours, and "owned" lists every file we wrote there
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
    problem_type: str | None = None  # what the outputs mean (tasks.task_of_config); exports before it: None

    @classmethod
    def of(cls, config) -> "ExportedConfig":
        return cls(config.num_labels, {int(k): str(v) for k, v in config.id2label.items()},
                   getattr(config, "model_type", ""), getattr(config, "max_position_embeddings", None),
                   getattr(config, "vocab_size", None), getattr(config, "problem_type", None))

    def as_json(self) -> dict[str, Any]:
        return {"num_labels": self.num_labels, "id2label": {str(k): v for k, v in self.id2label.items()},
                "model_type": self.model_type, "max_position_embeddings": self.max_position_embeddings,
                "vocab_size": self.vocab_size, "problem_type": self.problem_type}


def standalone(folder: Path) -> tuple[ExportedConfig, onnx_tokenizer.TokenizerFile] | None:
    """The model's config and tokenizer from its export alone (no transformers), or None when the export
    predates them, its tokenizer check failed, a source file or the saved tokenizer changed since, or any of
    it cannot be read: the caller then reads the folder's own files through transformers."""
    manifest = read_manifest(folder) or {}
    config, tokenizer = manifest.get("config"), manifest.get("tokenizer")
    path = folder / EXPORT_DIR / onnx_tokenizer.FILE
    if not (_parts_as_written(config, tokenizer) and path.is_file()):
        return None
    try:
        if onnx_tokenizer.stamps(folder, SOURCES) != manifest.get("sources") or \
                onnx_tokenizer.stamps(path.parent, (path.name,)).get(path.name) != tokenizer.get("sha256"):
            return None
        config = {**config, "id2label": {int(k): v for k, v in config["id2label"].items()}}
        return ExportedConfig(**config), onnx_tokenizer.TokenizerFile(path, tokenizer["pad_token_id"],
                                                                      tokenizer["model_max_length"],
                                                                      tokenizer.get("type_ids", True))
    except Exception:  # a hand-edited manifest, or a damaged tokenizer.json (tokenizers raises a bare Exception)
        return None  # (the fallback reads the folder's own files, and reports what is wrong with them)


def _parts_as_written(config: Any, tokenizer: Any) -> bool:
    """The manifest's config and tokenizer of the types export writes; else the folder's own files are read."""
    labels = config.get("id2label") if _has(config, num_labels=_count) else None
    return isinstance(labels, dict) and set(labels) == {str(i) for i in range(config["num_labels"])} and \
        all(isinstance(v, str) for v in labels.values()) and \
        _has(config, model_type=lambda v: isinstance(v, str), max_position_embeddings=_none_or_count,
             vocab_size=_none_or_count) and isinstance(config.get("problem_type"), (str, type(None))) and \
        _has(tokenizer, pad_token_id=_none_or_count, model_max_length=_none_or_count, sha256=_digest) and \
        isinstance(tokenizer.get("type_ids", True), bool)  # exports before text pairs do not record it


def weights_stamp(folder: Path, with_hash: bool = True) -> dict[str, Any]:
    """What identifies the weights an export was made from: size and mtime (cheap), and their sha256."""
    path = folder / WEIGHTS
    st = path.stat()
    stamp: dict[str, Any] = {"file": WEIGHTS, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if with_hash:
        stamp["sha256"] = sha256_of(path)
    return stamp


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def graph_stamp(path: Path) -> dict[str, Any]:
    """What a graph is checked against at load: its size (a cheap first test) and its sha256."""
    return {"size": path.stat().st_size, "sha256": sha256_of(path)}


def manifest_json(folder: Path) -> Any:
    """export.json as parsed, whatever its shape (JSON null too); absent, unreadable or not JSON: ValueError."""
    try:
        return json.loads((folder / EXPORT_DIR / MANIFEST).read_bytes())
    except (OSError, ValueError, RecursionError) as exc:  # missing, a folder, bad UTF-8, not JSON, too deep
        raise ValueError(f"cannot be read as JSON ({type(exc).__name__})") from None


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest as export wrote it, or None: absent, unreadable, or of another shape."""
    try:
        payload = manifest_json(folder)
    except ValueError:
        return None
    return payload if manifest_problem(payload) is None else None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _none_or_count(value: Any) -> bool:
    return value is None or _count(value)


def _digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and not value.strip("0123456789abcdef")


def _has(value: Any, **fields) -> bool:
    """`value` is an object whose `fields` pass their tests."""
    return isinstance(value, dict) and all(key in value and ok(value[key]) for key, ok in fields.items())


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v.strip(".") and "/" not in v for v in value)


def manifest_problem(payload: Any) -> str | None:
    """What makes `payload` other than the manifest export writes, or None. Parts predict can do without (the
    config and tokenizer for a start without transformers) are checked where they are read (standalone)."""
    if not isinstance(payload, dict):
        return f"a JSON {_JSON_TYPES.get(type(payload), type(payload).__name__)}, not the object export writes"
    files = payload.get("files")
    if payload.get("complete") is False:
        return "an export that did not finish"
    if "tool" not in payload and payload.get("format") == "onnx":
        return "written by an earlier finetune-bert, without its graphs' checksums"
    checks = {"tool": lambda v: v == TOOL, "format": lambda v: v == "onnx", "opset": _count, "probes": _count,
              "weights": lambda v: _has(v, size=_count, mtime_ns=_count, sha256=_digest),
              "files": lambda v: _names(v) and FILES["onnx"] in v and set(v) <= set(FILES.values())
              and len(set(v)) == len(v),
              "graphs": lambda v: isinstance(v, dict) and set(v) == set(files)
              and all(_has(g, size=_count, sha256=_digest) for g in v.values()),
              "owned": lambda v: _names(v) and set(files) | {MANIFEST} <= set(v),
              "head": lambda v: _has(v, trained=lambda t: isinstance(t, bool), note=lambda n: n is None or
                                     isinstance(n, str)),
              "onnx": lambda v: _has(v, max_abs_logit_diff=_number)}
    if isinstance(files, list) and FILES["onnx-int8"] in files:
        # a regression's int8 measures have no label agreement (it has no label); every other task's have
        checks["onnx-int8"] = lambda v: _has(v, max_abs_prob_diff=_number, max_abs_logit_diff=_number) and \
            _number(v.get("label_agreement", 0))
    for key, ok in checks.items():
        if key not in payload:
            return f"no {key!r}"
        if not ok(payload[key]):
            return f"its {key!r} is not what export writes"
    return None


_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def owned_files(folder: Path) -> set[str] | None:
    """The files in onnx/ that a manifest of ours says we wrote (the manifest among them); None when onnx/
    holds no manifest of ours. A manifest written before its graphs (export owns a file before writing it)
    or by an export before "tool" was recorded counts: its files are ours to replace all the same."""
    try:
        payload = manifest_json(folder)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    if payload.get("tool") == TOOL and _names(payload.get("owned")):
        return set(payload["owned"]) | {MANIFEST}
    legacy = payload.get("format") == "onnx" and _has(payload, weights=lambda v: isinstance(v, dict),
                                                      onnx=lambda v: isinstance(v, dict)) \
        and _names(payload.get("files")) and set(payload["files"]) <= set(FILES.values())
    if not legacy:
        return None
    tokenizer = payload.get("tokenizer")
    saved = {onnx_tokenizer.FILE} if isinstance(tokenizer, dict) and tokenizer.get("file") == onnx_tokenizer.FILE \
        else set()
    return set(payload["files"]) | saved | {MANIFEST}


def export_command(model: str, backend: str = "onnx") -> str:
    return f"finetune-bert export --model {model} --format onnx" + (" --quantize int8" if backend == "onnx-int8" else "")


def find_export(folder: Path, backend: str, model: str) -> Path | None:
    """The ONNX file of `backend` (onnx, onnx-int8) in a model folder, checked current and whole; None if there
    is no export. A manifest that is not export's, a graph whose bytes are not the ones written, or an export
    older than the weights is an error naming the file and the command that renews it."""
    where = folder / EXPORT_DIR
    if not (where / MANIFEST).exists() and not (where / MANIFEST).is_symlink():
        return None
    try:
        manifest = manifest_json(folder)
        problem = manifest_problem(manifest)
    except ValueError as exc:
        problem = str(exc)
    if problem is not None:  # without a manifest of ours, export cannot tell onnx/ holds only its own files
        hint = "" if owned_files(folder) is not None else " --overwrite, if onnx/ holds only finetune-bert's files"
        raise UserError(f"--model {model}: {where / MANIFEST} is not an export manifest as finetune-bert writes it "
                        f"({problem}); run the export again: {export_command(model, backend)}{hint}")
    if FILES[backend] not in manifest["files"]:
        return None
    path = where / FILES[backend]
    _check_graph(path, manifest["graphs"][FILES[backend]], export_command(model, backend))
    made = manifest["weights"]
    now = weights_stamp(folder, with_hash=False) if (folder / WEIGHTS).is_file() else {}
    same = now and now["size"] == made["size"] and now["mtime_ns"] == made["mtime_ns"]
    # a copied folder keeps the bytes but not the mtime: the hash decides (slower, once per load)
    if not same and not (now and now["size"] == made["size"] and weights_stamp(folder)["sha256"] == made["sha256"]):
        raise UserError(f"--model {model}: its ONNX export ({EXPORT_DIR}/{FILES[backend]}) was made from other weights "
                        f"than its {WEIGHTS} (retrained or replaced since); renew it: {export_command(model, backend)}")
    return path


def _check_graph(path: Path, made: dict[str, Any], command: str) -> None:
    """The graph's bytes are the ones export wrote: one read and hash per load (about 0.1 s for MiniLM's 90 MB;
    the load that follows finds the file in the page cache)."""
    try:
        whole = path.stat().st_size == made["size"] and sha256_of(path) == made["sha256"]
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__}); the export is incomplete: "
                        f"run the export again: {command}") from None
    if not whole:
        raise UserError(f"{path}: is not the graph export wrote (its size or sha256 differs from {MANIFEST}'s); the "
                        f"export is damaged: run the export again: {command}")


def head_record(notes: list[str], name: str) -> dict[str, Any]:
    """The manifest's "head": whether it was trained, as load_classifier's notes say (loaded to predict, a model
    gets a note only for an untrained head), the note kept with the model's name open for the folder a load names."""
    note = notes[0] if notes else None
    if note is not None and note.startswith(f"{name} "):
        note = "{model}" + note[len(name):]
    return {"trained": not notes, "note": note}


def head_warning(folder: Path, model: str) -> str | None:
    """The warning torch gives for this model's head, recorded at export: an untrained head scores at random."""
    head = (read_manifest(folder) or {}).get("head") or {}
    if head.get("trained") is not False:
        return None
    return (head.get("note") or "{model} has no trained classification head: its predictions are random. "
            "Fine-tune it first with `finetune-bert train`").replace("{model}", model)


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
        classes = self.session.get_outputs()[0].shape[-1]
        if config is not None and isinstance(classes, int) and classes != config.num_labels:
            raise UserError(f"{path}: gives {classes} logits where the model's config has {config.num_labels} labels "
                            "(its config.json changed since the export?); run the export again")
        self.path, self.config, self.pad_id = path, config, pad_id
        self.device = Device()
        # graphs of models trained on text pairs take token type ids too; every other graph does not
        self.inputs = {node.name for node in self.session.get_inputs()}

    def batch_fit(self, length: int) -> int:
        return max(1, BATCH_TOKENS // max(length, 1))

    def logits(self, encoded: Encoded, batch_size: int) -> np.ndarray:
        """fp32 logits (n, classes) in input order; batches longest first, at most `batch_size` texts and
        about BATCH_TOKENS tokens each."""
        out = np.zeros((len(encoded), self.config.num_labels), dtype=np.float32)
        for index in eval_batches(encoded.lengths, batch_size, self.batch_fit):
            out[index] = self.session.run(["logits"], self._feed(padded(encoded, index, self.pad_id)))[0]
        return out

    def _feed(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The batch's arrays the graph takes; single texts on a pair graph get type 0, as torch gives them."""
        if "token_type_ids" in self.inputs and "token_type_ids" not in batch:
            batch["token_type_ids"] = np.zeros_like(batch["input_ids"])
        return {name: array for name, array in batch.items() if name in self.inputs}


def cpu_threads() -> int:
    """OMP_NUM_THREADS if set (as torch honours it), else 0: onnxruntime's default, one thread per physical
    core (the logical CPUs of a hyperthreaded core share one set of vector units)."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return 0
