"""The configs of the commands that score with a trained model: evaluate, predict, serve, export. Each
field's `help` becomes its `--help` line, as in config.py."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any
from finetune_bert.data.config import BAD_ROW_POLICIES
from finetune_bert.options import opt, range_problems
from finetune_bert.inference.reading import Reading


# torch: the device's fast dtype (engine.inference_dtype: bf16 on GPUs and AMX CPUs), the fastest measured on
# every machine so far; the ONNX backends serve where torch cannot go, and int8 where a CPU lacks AMX.
BACKENDS = ("torch", "torch-fp32", "onnx", "onnx-int8")


def _like(name: str) -> Any:
    """A field of `ScoreConfig` defined as Reading's field of that name (same default, help and checks)."""
    source = next(f for f in dataclasses.fields(Reading) if f.name == name)
    return field(default=source.default, metadata=source.metadata)


@dataclass
class ScoreConfig:
    """What `evaluate` and `predict` share: a trained model and how to read rows."""

    model: str = opt(None, "A fine-tuned model folder (or hub id).", required=True)
    batch_size: int = opt(64, "Texts per batch.", at_least=1)
    text_column: str | None = opt(None, "Name of the text column (auto-detected: text, review, sentence, content).")
    on_bad_rows: str = opt("error", "What a bad row does: stop before any scoring (error), or skip it and list it "
                                    "in OUTPUT_NAME.skipped.csv (skip).", choices=BAD_ROW_POLICIES)
    long_texts: str | None = _like("long_texts")
    stride: int | None = _like("stride")
    aggregate: str | None = _like("aggregate")
    truncation: str | None = _like("truncation")
    backend: str = opt("torch", "What runs the model: torch (bf16 on a GPU or a CPU with AMX, else fp32), "
                                "torch-fp32, or onnx / onnx-int8 on the CPU (made by `finetune-bert export`).",
                       choices=BACKENDS)
    debug: bool = opt(False, "Show full tracebacks instead of one-line errors.")

    def problems(self) -> list[str]:
        return range_problems(self, skip=Reading) + self.reading().problems()

    def reading(self) -> "Reading":
        return Reading(self.long_texts, self.stride, self.aggregate, self.truncation)


@dataclass
class PredictConfig(ScoreConfig):
    input: str | None = opt(None, "A file of texts (any form `train --data` takes, or .txt with one text per line).")
    output: str | None = opt(None, "With --input: where to write the predictions; .csv, .tsv, .jsonl, .ndjson or "
                                   ".json (an array), by its extension.")
    label_column: str | None = opt(None, "A column copied to the output as true_label (auto-detected: label, "
                                         "sentiment, target, class); empty cells are fine, predict needs no labels.")
    ignore_labels: bool = opt(False, "Do not look for a label column: the output has no true_label.")
    overlap: bool = opt(True, "Read and tokenize the next chunk of rows in a worker thread while this one is "
                              "scored (--no-overlap: one after the other; the same results).")
