"""The teacher of a distillation: opened and checked against the data, and its outputs for every text the student
trains on, computed once and kept in the output folder.

The outputs are computed a chunk of texts at a time (tokenized, then scored in the engine's length-sorted
batches), into a file on disk: memory holds one chunk's tokens and one batch's activations, whatever the number
of texts. The file is keyed (teacher_logits.json) by a hash of the teacher's weights, config and tokenizer, a hash
of the texts in order, and how they were cut: every epoch, a --resume and a rerun into the same folder read it
back, and anything else that would change the outputs computes them afresh. The teacher reads each text as the
student does: the same cleaning, max length and truncation, through its own tokenizer."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetune_bert.console import Progress, console
from finetune_bert.data.chunks import EVAL_CHUNK
from finetune_bert.data.tokens import encode, max_length_for, pad_id
from finetune_bert.engine.model_folder import TOKENIZER_FILES, ModelFolder, load_classifier, pick_device
from finetune_bert.engine.torch_engine import Engine, EngineOptions
from finetune_bert.errors import UserError
from finetune_bert.safefiles import claim, write_text_atomic
from finetune_bert.tasks import REGRESSION, task_of_config

LOGITS_FILE = "teacher_logits.npy"
KEY_FILE = "teacher_logits.json"
# What a teacher's outputs depend on, of its folder: the weights, the config (labels, head) and the tokenizer.
HASHED = ("model.safetensors", "config.json", "tokenizer_config.json", "special_tokens_map.json", *TOKENIZER_FILES)


@dataclass(frozen=True)
class Teacher:
    folder: ModelFolder
    columns: list[int]  # the teacher's output for each of the data's labels, in the data's order
    task: str


def _as_teacher(exc: UserError) -> UserError:
    """The model folder's own messages name the option --model; here the folder is --teacher."""
    return UserError(str(exc).replace("--model ", "--teacher ", 1))


def open_teacher(name: str, label_names: list[str], task: str, trust_remote_code: bool = False) -> Teacher:
    """The teacher, refused unless it is trained for the data's task kind and labels (any order of them)."""
    try:
        folder = ModelFolder.open(name)
        config = folder.config(trust_remote_code)
    except UserError as exc:
        raise _as_teacher(exc) from None
    kind = task_of_config(config)
    if kind != task:
        raise UserError(f"--teacher {name}: predicts {kind}, and the data is read as {task}; distillation needs "
                        f"the same kind (--task {kind})")
    names = [str(config.id2label[i]) for i in range(config.num_labels)]
    if task == REGRESSION:
        if len(names) != 1:
            raise UserError(f"--teacher {name}: has {len(names)} outputs; a regression teacher has one")
        return Teacher(folder, [0], task)
    if sorted(names) != sorted(label_names):
        raise UserError(f"--teacher {name}: predicts the labels {', '.join(names)}, and the data's are "
                        f"{', '.join(label_names)}; distillation needs the same labels")
    return Teacher(folder, [names.index(n) for n in label_names], task)


def folder_digest(folder: ModelFolder) -> str:
    """sha256 of the teacher's files that decide its outputs (HASHED, those present), read a block at a time;
    a hub id is its name."""
    digest = hashlib.sha256()
    if folder.path is None:
        digest.update(folder.source.encode())
        return digest.hexdigest()
    for name in HASHED:
        path = folder.path / name
        if not path.is_file():
            continue
        digest.update(name.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def texts_digest(texts: list[str], pairs: list[str] | None) -> str:
    digest = hashlib.sha256()
    for i, text in enumerate(texts):
        digest.update(text.encode() + (b"\1" + pairs[i].encode() if pairs is not None else b"") + b"\0")
    return digest.hexdigest()


def cache_key(cfg, teacher: Teacher, texts: list[str], pairs: list[str] | None, max_length: int) -> dict[str, Any]:
    """What the cached outputs depend on (`cfg`: the tokenization options, truncation and head_tokens)."""
    return {"teacher_sha256": folder_digest(teacher.folder), "texts_sha256": texts_digest(texts, pairs),
            "rows": len(texts), "max_length": max_length, "truncation": cfg.truncation,
            "head_tokens": cfg.head_tokens}


def teacher_outputs(cfg, teacher: Teacher, texts: list[str], pairs: list[str] | None,
                    key: dict[str, Any]) -> np.ndarray:
    """The teacher's raw outputs (rows, its outputs) for `texts` (and their `pairs`), read from
    OUTPUT/teacher_logits.npy when its key is `key`, else computed and kept there. The caller holds the
    output folder's lock."""
    folder = Path(cfg.output).expanduser()
    cached = _cached(folder, key)
    if cached is not None:
        console.say(f"teacher outputs: read from {folder / LOGITS_FILE} ({len(cached)} texts; computed before for the "
                    "same teacher, texts and truncation)")
        return cached
    started = time.time()
    folder.mkdir(parents=True, exist_ok=True)
    claim(folder, [LOGITS_FILE, KEY_FILE])  # listed before they are written: a later run must never call them foreign
    (folder / KEY_FILE).unlink(missing_ok=True)  # the old key must not vouch for a file being replaced
    _compute(cfg, teacher, texts, pairs, key["max_length"], folder)
    write_text_atomic(folder / KEY_FILE, json.dumps(key, indent=2) + "\n")
    console.say(f"teacher outputs: {len(texts)} texts scored by {teacher.folder} in {time.time() - started:.1f}s, "
                f"kept in {folder / LOGITS_FILE}")
    return np.load(folder / LOGITS_FILE)


def _cached(folder: Path, key: dict[str, Any]) -> np.ndarray | None:
    try:
        saved = json.loads((folder / KEY_FILE).read_text(encoding="utf-8"))
        if saved != key:
            return None
        outputs = np.load(folder / LOGITS_FILE)
    except (OSError, ValueError):
        return None
    return outputs if outputs.shape[0] == key["rows"] else None


def _compute(cfg, teacher: Teacher, texts: list[str], pairs: list[str] | None, max_length: int,
             folder: Path) -> None:
    """Score the texts a chunk at a time into a temporary .npy beside the cache, renamed onto it when whole."""
    notes: list[str] = []
    try:
        model = load_classifier(teacher.folder, None, cfg.trust_remote_code, notes=notes)
        tokenizer = teacher.folder.tokenizer(cfg.trust_remote_code)
    except UserError as exc:
        raise _as_teacher(exc) from None
    if notes:  # the one note of a model loaded as saved: it has no trained head, its outputs are random
        raise UserError(f"--teacher {teacher.folder}: has no trained classification head; fine-tune it first "
                        "(finetune-bert train), then distil from the model it gives")
    length = max_length_for(tokenizer, model.config, max_length)[0]
    engine = Engine(model, pick_device(), pad_id(tokenizer),
                    options=EngineOptions(bf16=cfg.bf16, cls_fast_path=cfg.cls_fast_path,
                                          cpu_micro_batches=cfg.cpu_micro_batches))
    tmp = folder / f".{LOGITS_FILE}.tmp"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(texts), model.config.num_labels))
    progress = Progress(len(texts), "teacher outputs")
    try:
        for start in range(0, len(texts), EVAL_CHUNK):
            end = min(start + EVAL_CHUNK, len(texts))
            chunk = encode(tokenizer, texts[start:end], None, length, cfg.truncation, cfg.head_tokens,
                           pairs=None if pairs is None else pairs[start:end])
            out[start:end] = engine.logits(chunk, cfg.eval_batch_size).numpy()
            progress.update(end - start)
        out.flush()
        del out
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, folder / LOGITS_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        progress.close()
