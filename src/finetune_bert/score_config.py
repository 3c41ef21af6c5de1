"""The configs of the commands that score with a trained model: evaluate, predict, serve, export. Each
field's `help` becomes its `--help` line, as in config.py."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from finetune_bert.config import BAD_ROW_POLICIES, MAX_SEED, Reading, opt, range_problems

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
class EvaluateConfig(ScoreConfig):
    data: str = opt(None, "Labelled data, any form `train --data` takes.", required=True)
    output: str | None = opt(None, "Where to write the metrics, a .json file (default: MODEL/evaluation.json).")
    label_column: str | None = opt(None, "Name of the label column (auto-detected: label, sentiment, target, class).")
    max_samples: int | None = opt(None, "Score only N rows (a seeded sample).", at_least=1)
    seed: int = opt(42, "Seed of the --max-samples sample.", at_least=0, at_most=MAX_SEED)
    errors: int = opt(0, "Also write the N most confident mistakes (text, true label, prediction, confidence) to "
                         "OUTPUT_NAME.errors.csv beside the metrics.", at_least=0)
    overlap: bool = opt(True, "Read and tokenize the next chunk of rows in a worker thread while this one is "
                              "scored (--no-overlap: one after the other; the same results).")


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


@dataclass
class ServeConfig(ScoreConfig):
    """`serve`: a model behind HTTP, with dynamic batching and a limit on everything a client can send."""

    host: str = opt("127.0.0.1", "Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).")
    port: int = opt(8000, "Port to listen on (0: any free port, printed at start).", at_least=0, at_most=65535)
    max_batch_tokens: int = opt(16384, "Token budget of one engine batch: concurrent requests are grouped up to it.",
                                at_least=1)
    max_wait_ms: float = opt(2.0, "How long the first request of a batch waits for others to join it.", at_least=0)
    max_queue: int = opt(256, "Requests waiting at most; beyond it a request gets 429 with Retry-After.", at_least=1)
    max_client_batch: int = opt(256, "Texts in one request at most (413 beyond); larger ones are cut into several "
                                     "engine batches, not refused.", at_least=1)
    max_payload_bytes: int = opt(2_000_000, "Request body size at most (413 beyond).", at_least=1)
    timeout: float = opt(30.0, "Seconds a request may wait for its answer (503 beyond).", at_least=0.001)
    drain_seconds: float = opt(30.0, "On SIGTERM: seconds to finish requests in flight before exiting.", at_least=0)
    api_key: str | None = opt(None, "Require `Authorization: Bearer KEY` on /predict and /admin/reload (default: "
                                    "the FINETUNE_BERT_API_KEY environment variable, if set).")
    cors_origins: str | None = opt(None, "Comma-separated origins allowed to call the API from a browser (off by "
                                         "default; the server's own page needs none).")



@dataclass
class ExportConfig:
    """`export`: a fine-tuned model folder as ONNX, written beside its files (MODEL/onnx/) and checked."""

    model: str = opt(None, "A fine-tuned model folder (local: the export is written into it).", required=True)
    format: str = opt("onnx", "Export format.", choices=("onnx",))
    quantize: str | None = opt(None, "Also write a dynamic int8 model (per-channel weights): model.int8.onnx.",
                               choices=("int8",))
    data: str | None = opt(None, "Texts to check the export on as predict reads them (labelled: accuracy too); "
                                 "its first --rows rows.")
    rows: int = opt(512, "With --data: rows to check on.", at_least=1)
    debug: bool = opt(False, "Show full tracebacks instead of one-line errors.")

    def problems(self) -> list[str]:
        return range_problems(self)
