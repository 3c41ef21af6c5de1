"""A fine-tuned model as a Python object: `load(DIR).predict("I loved it")`.

The same cleaning and truncation the model was trained with are applied at prediction time; they are
read from finetune_bert.json beside the weights (any other classifier folder gets the defaults).

torch and transformers are imported only by the torch backend: through an ONNX export, predicting one
text starts and answers in well under 2 s (issue 20).
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from finetune_bert.config import Reading
from finetune_bert.score_config import BACKENDS
from finetune_bert.data import Split, clean_text
from finetune_bert.heap import steady_heap
from finetune_bert.skipped import SkippedRow, refuse_foreign_skipped_list, write_skipped
from finetune_bert.tokens import Encoded, Windows, encode, encode_windows, max_length_for, window_size
from finetune_bert.errors import UserError
from finetune_bert.model import (load_classifier, load_model_config, load_tokenizer, pick_device, read_run_info,
                                 refuse_model_file, resolve)
from finetune_bert.onnx_engine import OnnxEngine, export_command, find_export, standalone
from finetune_bert.sources import source_chunks
from finetune_bert.safefiles import atomic_output, check_output_file, claim_output, read_marker
from finetune_bert.streaming import EVAL_CHUNK, ChunkedSplit, ahead, chunk_rows


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float

    def __str__(self) -> str:
        return f"{self.label}, confidence {self.confidence:.2f}"


# Output formats of predictions, by the extension of --output.
OUTPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}


class Classifier:
    """A fine-tuned model for prediction: its engine (engine.Engine in eval mode, or onnx_engine.OnnxEngine),
    tokenizer, and how the model was trained to read texts (cleaning, truncation, labels), or `reading` as
    asked (config.Reading: another truncation, or long texts read whole as windows)."""

    def __init__(self, engine, tokenizer, info: dict[str, Any], source: str | None = None,
                 reading: Reading = Reading()):
        self.engine, self.tokenizer, self.info = engine, tokenizer, info
        self.model, self.device = getattr(engine, "model", None), engine.device  # model: None for ONNX
        self.backend = engine.backend
        self.source = source  # the folder or hub id it was loaded from
        config = engine.config
        self.labels = LabelMap.of(config, info)
        self.label_names = self.labels.names
        # the length it was trained at, clamped as training clamps it (tokens.max_length_for)
        self.max_length, _ = max_length_for(tokenizer, config, info.get("max_length", 512))
        self.reading = reading
        self.truncation = reading.truncation or info.get("truncation", "head+tail")
        self.head_tokens = info.get("head_tokens", 128)
        self.clean = info.get("clean", True)
        self.temperature = float(info.get("temperature", 1.0))  # already folded into the weights
        if problems := reading.problems(window_size(tokenizer, self.max_length), self.max_length):
            raise UserError("; ".join(problems))

    def encode(self, texts: list[str], labels: list[int] | None = None) -> Encoded:
        return encode(self.tokenizer, texts, labels, self.max_length, self.truncation, self.head_tokens)

    def prepare(self, texts: list[str], *, cleaned: bool = False) -> tuple[Encoded | Windows, int]:
        """Texts as the model reads them (cleaned, unless `cleaned` says they are; cut, or as windows) and how
        many tokens that is: a unit the server's batcher queues and groups by token budget."""
        items = [clean_text(t) for t in texts] if self.clean and not cleaned else list(texts)
        if self.reading.mode != "chunks":
            encoded = self.encode(items)
            return encoded, int(encoded.lengths.sum())
        stride = self.reading.overlap(window_size(self.tokenizer, self.max_length))
        windows = encode_windows(self.tokenizer, items, self.max_length, stride)
        return windows, int(windows.encoded.lengths.sum())

    def logits_of(self, prepared: list[Encoded | Windows], batch_size: int = 64) -> np.ndarray:
        """fp32 logits (n, k) of several prepared units scored together, rows in their order, one after the
        other: the windows of every text are batched with all the others and aggregated per text after."""
        if not prepared:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        if isinstance(prepared[0], Windows):
            offsets = np.cumsum([0] + [len(w.full_lengths) for w in prepared])
            merged = _concat([w.encoded for w in prepared])
            owner = np.concatenate([w.owner + start for w, start in zip(prepared, offsets)])
            return aggregate(self._logits(merged, batch_size), owner, int(offsets[-1]), self.reading.how)
        return self._logits(_concat(prepared), batch_size)

    def _logits(self, encoded: Encoded, batch_size: int) -> np.ndarray:
        logits = self.engine.logits(encoded, batch_size)  # numpy from onnxruntime, a CPU tensor from torch
        return logits if isinstance(logits, np.ndarray) else logits.numpy()

    def score_prepared(self, prepared: list[Encoded | Windows], batch_size: int = 64) -> list[np.ndarray]:
        """Probabilities of each prepared unit (one array (n_i, k) each), scored together."""
        probs = softmax(self.logits_of(prepared, batch_size))
        sizes = [len(p.full_lengths) for p in prepared]
        return np.split(probs, np.cumsum(sizes)[:-1]) if sizes else []

    def scored(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Logits (n, k) in input order for texts already cleaned, and each text's length in tokens."""
        prepared, _ = self.prepare(texts, cleaned=True)
        return self.logits_of([prepared], batch_size), prepared.full_lengths

    def predict_proba(self, texts: str | list[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities, columns in `label_names` order: shape (n, k), or (k,) for one string."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        if not all(isinstance(t, str) for t in items):
            raise UserError("predict_proba takes a string or a list of strings")
        if not items:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        probs = self.score_prepared([self.prepare(items)[0]], batch_size)[0]
        return probs[0] if single else probs

    def predict(self, texts: str | list[str], batch_size: int = 64) -> Prediction | list[Prediction]:
        """The most likely label and its probability, for a string or a list of strings."""
        probs = self.predict_proba(texts, batch_size)
        rows = probs[None] if probs.ndim == 1 else probs
        out = [Prediction(self.label_names[int(p.argmax())], float(p.max())) for p in rows]
        return out[0] if isinstance(texts, str) else out


def _concat(parts: list[Encoded]) -> Encoded:
    if len(parts) == 1:
        return parts[0]
    return Encoded([ids for p in parts for ids in p.ids], np.concatenate([p.full_lengths for p in parts]), None)


def aggregate(logits: np.ndarray, owner: np.ndarray, n: int, how: str = "mean") -> np.ndarray:
    """Per-text logits (n, k) from per-window ones: each class's mean over the text's windows, or its max.
    Both commute with a folded temperature (mean(z / T) = mean(z) / T, and so for max)."""
    if how == "max":
        out = np.full((n, logits.shape[1]), -np.inf, dtype=np.float32)
        np.maximum.at(out, owner, logits)
        return out
    sums = np.zeros((n, logits.shape[1]), dtype=np.float32)
    np.add.at(sums, owner, logits)
    return sums / np.maximum(np.bincount(owner, minlength=n), 1)[:, None].astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise probabilities, in float32 as torch.softmax gives them."""
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


@dataclass
class LabelMap:
    """A model's classes, and how labels in data map to them: read from config.json and finetune_bert.json,
    so that data can be checked before the weights are loaded."""

    names: list[str]
    to_id: dict[Any, int]

    @classmethod
    def of(cls, config, info: dict[str, Any]) -> "LabelMap":
        names = [str(config.id2label[i]) for i in range(config.num_labels)]
        # Labels in data may be names or the values used in training; for a model finetune-bert did not
        # train, integer labels are taken as ids.
        raw = info.get("raw_labels", list(range(len(names))))
        return cls(names, {**{n: i for i, n in enumerate(names)}, **{r: i for i, r in enumerate(raw)}})

    def known(self, split: Split) -> tuple[Split, list[SkippedRow]]:
        """The rows whose label this model knows, with labels as ids; the others as bad rows."""
        ids, keep, bad = [], [], []
        for i, value in enumerate(split.labels):
            label_id = self.to_id.get(value, self.to_id.get(str(value)))
            if label_id is None:
                bad.append(SkippedRow("test", split.source, split.where[i], "label", self._unknown(value), repr(value)))
            else:
                ids.append(label_id)
                keep.append(i)
        kept = split.subset(keep)
        kept.labels = ids
        return kept, bad

    def _unknown(self, value: Any) -> str:
        same = [n for n in self.names if isinstance(value, str) and n.casefold() == value.casefold()]
        hint = f"; labels are case-sensitive: the model has {same[0]!r}" if same else ""
        return f"label {value!r} is not one of the model's labels ({', '.join(self.names)}){hint}"


def labelled_rows(data: str, labels: LabelMap, *, clean: bool, columns: tuple[str | None, str | None] = (None, None),
                  on_bad_rows: str = "error", rows_per_chunk: int = EVAL_CHUNK) -> ChunkedSplit:
    """Labelled rows for evaluate, a chunk at a time; `columns`: (text, label) column names, None to detect."""
    text_column, label_column = columns
    return ChunkedSplit(source_chunks(data, "test", rows_per_chunk), "test", text_column, label_column, clean, True,
                        on_bad_rows=on_bad_rows, row_filter=labels.known)


def load(model_dir: str, device: str | None = None, reading: Reading = Reading(), backend: str = "torch") -> Classifier:
    """Load a fine-tuned classifier folder (or hub id) for prediction; a warning on stderr if its
    classification head was never trained (its predictions would be random). `reading`: how texts longer
    than the model's max length are read (config.Reading), checked before the weights are loaded.
    `backend`: torch (bf16 where the device computes it fast: engine.inference_dtype), torch-fp32; onnx or
    onnx-int8 (the folder's `finetune-bert export`, on the CPU)."""
    if problems := reading.problems() + ([] if backend in BACKENDS else
                                         [f"--backend {backend}: one of {', '.join(BACKENDS)}"]):
        raise UserError("; ".join(problems))
    info = read_run_info(model_dir)
    if backend in ("onnx", "onnx-int8"):
        return _load_onnx(model_dir, backend, device, info, reading)
    import torch

    from finetune_bert.engine import Engine, inference_dtype

    tokenizer = load_tokenizer(model_dir)
    _check_stride(reading, tokenizer, info)
    _warn_unfinished(model_dir)
    target = torch.device(device) if device else pick_device()
    notes: list[str] = []
    model = load_classifier(model_dir, notes=notes)
    for note in notes:
        print(note, file=sys.stderr, flush=True)
    engine = Engine(model, target, _pad_id(tokenizer), dtype=None if backend == "torch-fp32" else inference_dtype(target))
    engine.backend = "torch-fp32" if backend == "torch-fp32" else "torch"
    return Classifier(engine, tokenizer, info, model_dir, reading)


def _load_onnx(model_dir: str, backend: str, device: str | None, info: dict[str, Any], reading: Reading) -> Classifier:
    """The folder's export (onnx or onnx-int8) in onnxruntime on the CPU; its config and tokenizer from the
    export itself where it holds them (no torch, no transformers), else through transformers. No export,
    or one older than the weights, is an error naming the command that makes it."""
    if device is not None and device.split(":")[0] != "cpu":
        raise UserError(f"--backend {backend} runs on the CPU (onnxruntime's CPU provider); on {device} use "
                        "--backend torch")
    folder = Path(resolve(model_dir))
    found = find_export(folder, backend, model_dir) if folder.is_dir() else None
    if found is None:
        raise UserError(f"--backend {backend}: {model_dir} has no {'int8 ' if backend == 'onnx-int8' else ''}ONNX "
                        f"export; make it with: {export_command(model_dir, backend)}")
    config, tokenizer = standalone(folder) or (load_model_config(model_dir), load_tokenizer(model_dir))
    _check_stride(reading, tokenizer, info)
    _warn_unfinished(model_dir)
    return Classifier(OnnxEngine(found, config, _pad_id(tokenizer)), tokenizer, info, model_dir, reading)


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _warn_unfinished(model_dir: str) -> None:
    folder = Path(resolve(model_dir))
    if "train_log.jsonl" in read_marker(folder)["files"] and not (folder / "metrics.json").is_file():
        print(f"warning: the training run in {model_dir} has not finished (no metrics.json): this is its best model "
              "so far; finish the run with `finetune-bert train ... --resume`", file=sys.stderr, flush=True)


def _check_stride(reading: Reading, tokenizer, info: dict[str, Any]) -> None:
    """A stride the model's windows cannot step by, refused before the weights are loaded."""
    length = min(int(info.get("max_length", 512)), getattr(tokenizer, "model_max_length", None) or 10**9)
    if problems := reading.problems(window_size(tokenizer, length), length):
        raise UserError("; ".join(problems))


def check_output(output_path: str, input_path: str, model: str | None = None, *, skipping: bool = False) -> Path:
    """Before any row is read or the model loaded: a known extension, a writable place, not the input, not
    a file of the model. The file of skipped rows beside it is checked as well (`skipping`: it will be written,
    so a file of the user's there is refused)."""
    out = Path(output_path).expanduser()
    ext = "".join(out.suffixes[-1:]).lower()
    if ext not in OUTPUT_FORMATS:
        raise UserError(f"--output {output_path}: unknown extension {ext or '(none)'!r}; predictions are written "
                        f"as {', '.join(OUTPUT_FORMATS)}, by the extension")
    for path, option in ((out, "--output"), (skipped_path(out), f"the skipped-rows file of --output {output_path},")):
        check_output_file(path, option, inputs=[input_path])
        if model is not None:
            refuse_model_file(path, model, option)
    if skipping:
        refuse_foreign_skipped_list(skipped_path(out), f"the skipped-rows file of --output {output_path},")
    return out


def skipped_path(out: Path) -> Path:
    return out.with_name(out.stem + ".skipped.csv")


def input_rows(input_path: str, text_column: str | None = None, label_column: str | None = None,
               ignore_labels: bool = False, on_bad_rows: str = "error", rows_per_chunk: int = EVAL_CHUNK,
               *, cleaned: bool = True) -> ChunkedSplit:
    """The texts to predict, a chunk at a time, as given (the model cleans them if `cleaned`, and a text left
    with nothing visible is a bad row). A label column, if any, is only copied to the output: its empty cells
    are fine, and with `ignore_labels` it is not looked for."""
    return ChunkedSplit(source_chunks(input_path, "test", rows_per_chunk), "input", text_column, label_column, False,
                        None if ignore_labels else False, on_bad_rows=on_bad_rows, judge_cleaned=cleaned)


def predict_file(clf: Classifier, input_path: str, output_path: str, batch_size: int = 64,
                 rows_per_chunk: int | None = None, *, overlap: bool = True, **read: Any) -> int:
    """Predict every row of a file into `output_path` (format by extension: OUTPUT_FORMATS), with every
    class probability; `read` are `input_rows`' options; `overlap`: see write_predictions. Returns the
    number of predictions."""
    out = check_output(output_path, input_path, clf.source, skipping=read.get("on_bad_rows") == "skip")
    rows = input_rows(input_path, rows_per_chunk=chunk_rows(rows_per_chunk, batch_size), cleaned=clf.clean, **read)
    rows.check()
    return write_predictions(clf, rows, out, batch_size, overlap=overlap)


def write_predictions(clf: Classifier, rows: ChunkedSplit, out: Path, batch_size: int = 64, *,
                      overlap: bool = True) -> int:
    """Read, predict and write a chunk of rows at a time, in the file's order, so memory does not grow with
    its size; the output appears whole, by rename, only when every row is written. `rows.check()` must
    have passed (so bad rows were reported before any prediction). `overlap`: the next chunk read and
    tokenized while this one is scored (streaming.ahead)."""
    steady_heap(clf.device)
    labelled = rows.picked is not None and rows.picked[1] is not None
    fields = ["row", "text", "predicted", "confidence", *(["true_label"] if labelled else []),
              *(f"prob_{n}" for n in clf.label_names)]
    written = 0
    with atomic_output(out, newline="") as handle:
        write = _row_writer(handle, OUTPUT_FORMATS[out.suffix.lower()], fields)
        for split, prepared in ahead(rows, lambda c: clf.prepare(c.texts)[0] if c.texts else None, overlap=overlap):
            for i, p in enumerate(clf.score_prepared([prepared], batch_size)[0] if prepared is not None else []):
                row = {"row": split.where[i], "text": split.texts[i],
                       "predicted": clf.label_names[int(p.argmax())], "confidence": round(float(p.max()), 6)}
                if labelled:
                    row["true_label"] = split.labels[i]
                row.update({f"prob_{n}": round(float(v), 6) for n, v in zip(clf.label_names, p)})
                write(row)
                written += 1
        write(None)
    write_skipped(rows.skipped, skipped_path(out))
    claim_output(out)
    if rows.skipped:
        claim_output(skipped_path(out))
        print(f"{len(rows.skipped)} rows skipped; listed in {skipped_path(out)}")
    return written


def _row_writer(handle, fmt: str, fields: list[str]) -> Callable[[dict[str, Any] | None], None]:
    """Write rows one by one in `fmt`; a final call with None closes the format (the JSON array)."""
    if fmt in ("csv", "tsv"):
        writer = csv.DictWriter(handle, fieldnames=fields, delimiter="\t" if fmt == "tsv" else ",")
        writer.writeheader()
        return lambda row: None if row is None else writer.writerow(row)
    if fmt == "jsonl":
        return lambda row: None if row is None else handle.write(json.dumps(row) + "\n")
    first = [True]

    def write_json_array(row: dict[str, Any] | None) -> None:
        if row is None:
            handle.write("[]\n" if first[0] else "\n]\n")
            return
        handle.write(("[\n" if first[0] else ",\n") + json.dumps(row))
        first[0] = False
    return write_json_array
