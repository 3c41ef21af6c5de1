"""A fine-tuned model as a Python object: `load(DIR).predict("I loved it")`.

The same cleaning and truncation the model was trained with are applied at prediction time; they are
read from finetune_bert.json beside the weights (any other classifier folder gets the defaults).
"""

from __future__ import annotations

import csv
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from finetune_bert import fastpath
from finetune_bert.data import SkippedRow, Split, clean_text, read_source, report_bad_rows, to_split, write_skipped
from finetune_bert.encoding import Encoded, encode
from finetune_bert.errors import UserError
from finetune_bert.evaluate import EVAL_CHUNK, batched_logits, chunk_rows, steady_heap
from finetune_bert.model import autocast_dtype, load_classifier, load_tokenizer, pick_device, read_run_info
from finetune_bert.readers import source_chunks
from finetune_bert.streaming import ChunkedSplit


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float

    def __str__(self) -> str:
        return f"{self.label}, confidence {self.confidence:.2f}"


class Classifier:
    def __init__(self, model, tokenizer, info: dict[str, Any], device: torch.device):
        self.model, self.tokenizer, self.info, self.device = model, tokenizer, info, device
        self.dtype = autocast_dtype(device, True)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.layout = fastpath.layout(model, device, self.dtype, self.pad_id)
        config = model.config
        self.label_names = [config.id2label[i] for i in range(config.num_labels)]
        self.max_length = min(info.get("max_length", 512), getattr(config, "max_position_embeddings", 512))
        self.truncation = info.get("truncation", "head+tail")
        self.head_tokens = info.get("head_tokens", 128)
        self.clean = info.get("clean", True)
        # Labels in data may be names or the values used in training; for a model finetune-bert did not
        # train, integer labels are taken as ids.
        raw = info.get("raw_labels", list(range(len(self.label_names))))
        self._to_id = {**{str(n): i for i, n in enumerate(self.label_names)}, **{r: i for i, r in enumerate(raw)}}

    def encode(self, texts: list[str], labels: list[int] | None = None) -> Encoded:
        return encode(self.tokenizer, texts, labels, self.max_length, self.truncation, self.head_tokens)

    def predict_proba(self, texts: str | list[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities, columns in `label_names` order: shape (n, k), or (k,) for one string."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        if not all(isinstance(t, str) for t in items):
            raise UserError("predict_proba takes a string or a list of strings")
        if not items:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        if self.clean:
            items = [clean_text(t) for t in items]
        encoded = self.encode(items)
        probs = np.zeros((len(items), len(self.label_names)), dtype=np.float32)
        for index, logits in batched_logits(self.model, encoded, batch_size, self.device, self.dtype, self.layout):
            probs[index] = torch.softmax(logits, dim=-1).numpy()
        return probs[0] if single else probs

    def predict(self, texts: str | list[str], batch_size: int = 64) -> Prediction | list[Prediction]:
        """The most likely label and its probability, for a string or a list of strings."""
        probs = self.predict_proba(texts, batch_size)
        rows = probs[None] if probs.ndim == 1 else probs
        out = [Prediction(self.label_names[int(p.argmax())], float(p.max())) for p in rows]
        return out[0] if isinstance(texts, str) else out

    def read_labelled(self, data: str, text_column: str | None, label_column: str | None,
                      on_bad_rows: str = "error", skipped: list[SkippedRow] | None = None) -> Split:
        """Data with labels mapped to this model's ids; labels it does not know are bad rows."""
        records, _, _ = read_source(data, "test")
        skipped = [] if skipped is None else skipped
        split = to_split(records, "test", text_column, label_column, self.clean, True, skipped, on_bad_rows)
        kept, bad = self.known_labels(split)
        report_bad_rows(bad, on_bad_rows, skipped)
        return kept

    def labelled_chunks(self, data: str, text_column: str | None, label_column: str | None,
                        on_bad_rows: str = "error", rows_per_chunk: int = EVAL_CHUNK) -> ChunkedSplit:
        """`read_labelled` a chunk of rows at a time: call check() (which raises what read_labelled would),
        then iterate. Rows it skips are in its `skipped`."""
        return ChunkedSplit(source_chunks(data, "test", rows_per_chunk), "test", text_column, label_column,
                            self.clean, True, on_bad_rows, self.known_labels)

    def known_labels(self, split: Split) -> tuple[Split, list[SkippedRow]]:
        """The rows whose label this model knows, with labels as ids; the others as bad rows."""
        ids, keep, bad = [], [], []
        for i, value in enumerate(split.labels):
            label_id = self._to_id.get(value, self._to_id.get(str(value)))
            if label_id is None:
                bad.append(SkippedRow("test", split.source, split.where[i], "label",
                                      f"label {value!r} is not one of the model's labels "
                                      f"({', '.join(self.label_names)})", repr(value)))
            else:
                ids.append(label_id)
                keep.append(i)
        kept = split.subset(keep)
        kept.labels = ids
        return kept, bad


def load(model_dir: str, device: str | None = None) -> Classifier:
    """Load a fine-tuned classifier folder (or hub id) for prediction."""
    info = read_run_info(model_dir)
    tokenizer = load_tokenizer(model_dir)
    model = load_classifier(model_dir)
    target = torch.device(device) if device else pick_device()
    return Classifier(model.to(target).eval(), tokenizer, info, target)


def predict_file(clf: Classifier, input_path: str, output_path: str, text_column: str | None = None,
                 batch_size: int = 64, on_bad_rows: str = "error", rows_per_chunk: int | None = None) -> int:
    """Predict every row of a file; write CSV (or JSONL for .jsonl) with every class probability.

    The input is read, predicted and written a chunk of rows at a time, in the file's order, so memory
    does not grow with its size; bad rows are found (and, unless skipped, reported) before any prediction.
    """
    rows = ChunkedSplit(source_chunks(input_path, "test", chunk_rows(rows_per_chunk, batch_size)), "input", text_column, None, False,
                        False, on_bad_rows)
    rows.check()
    steady_heap(clf.device)
    labelled = rows.picked is not None and rows.picked[1] is not None
    fields = ["row", "text", "predicted", "confidence", *(["true_label"] if labelled else []),
              *(f"prob_{n}" for n in clf.label_names)]
    out = Path(output_path)
    written = 0
    with _row_writer(out, fields) as write:
        for split in rows:
            for i, p in enumerate(clf.predict_proba(split.texts, batch_size)):
                row = {"row": split.where[i], "text": split.texts[i],
                       "predicted": clf.label_names[int(p.argmax())], "confidence": round(float(p.max()), 6)}
                if split.labels is not None:
                    row["true_label"] = split.labels[i]
                row.update({f"prob_{n}": round(float(v), 6) for n, v in zip(clf.label_names, p)})
                write(row)
                written += 1
    if rows.skipped:
        skipped_path = out.with_name(out.stem + ".skipped.csv")
        write_skipped(rows.skipped, skipped_path)
        print(f"{len(rows.skipped)} rows skipped; listed in {skipped_path}")
    return written


@contextmanager
def _row_writer(out: Path, fields: list[str]) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Write rows one by one: JSON Lines for .jsonl/.ndjson, else CSV (tab-separated for .tsv)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        if out.suffix.lower() in (".jsonl", ".ndjson"):
            def write_line(row: dict[str, Any]) -> None:
                handle.write(json.dumps(row) + "\n")
            yield write_line
        else:
            writer = csv.DictWriter(handle, fieldnames=fields, delimiter="\t" if out.suffix == ".tsv" else ",")
            writer.writeheader()
            yield writer.writerow
