"""Typed run configuration. Each field's `help` becomes its `--help` line; `problems()` reports every
conflict at once, before any data or model is loaded."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRUNCATION_STRATEGIES = ("head", "tail", "head+tail")
METRICS = ("accuracy", "f1_macro", "loss", "roc_auc", "log_loss")
BAD_ROW_POLICIES = ("error", "skip")


def opt(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A config field whose help text and argparse extras travel with it."""
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class DataConfig:
    data: str = opt(None, "Training data: a CSV/TSV/JSON/JSONL/Parquet file (optionally .gz), an "
                          "aclImdb-style folder, or a Hugging Face dataset name such as 'imdb'.")
    test_data: str | None = opt(None, "Test data, same forms as --data. Folders and hub datasets bring "
                                      "their own test split.")
    val_data: str | None = opt(None, "Validation data. Without it, a stratified split is taken from train.")
    text_column: str | None = opt(None, "Name of the text column (auto-detected: text, review, sentence, content).")
    label_column: str | None = opt(None, "Name of the label column (auto-detected: label, sentiment, target, class).")
    label_names: str | None = opt(None, "Names for integer labels, in id order, e.g. 'negative,positive'. "
                                        "They become id2label in the saved model.")
    val_fraction: float = opt(0.1, "Fraction of train held out for validation when --val-data is not given.")
    max_train_samples: int | None = opt(None, "Use only the first N training rows after a seeded shuffle.")
    max_test_samples: int | None = opt(None, "Use only the first N test rows after a seeded shuffle.")
    clean: bool = opt(True, "Turn '<br />' tags and HTML entities into plain text (--no-clean turns it off).")
    max_length: int = opt(512, "Maximum tokens per text, [CLS] and [SEP] included; clamped to the model's limit.")
    truncation: str = opt("head+tail", "Which tokens to keep from a long text: head, tail, or head+tail "
                                       "(the first 128 tokens plus the last ones; Sun et al. 2019).",
                          choices=TRUNCATION_STRATEGIES)
    on_bad_rows: str = opt("error", "What a bad row (empty text, missing label, unknown class) does: stop "
                                    "the run before training (error), or skip it and list it in "
                                    "DIR/skipped_rows.csv (skip).", choices=BAD_ROW_POLICIES)
    dedupe: bool = opt(False, "Drop train rows whose text repeats an earlier train row or appears in the "
                              "validation or test data; each dropped row is listed in skipped_rows.csv.")
    head_tokens: int = opt(128, "With head+tail: how many tokens come from the head (at most half the budget).")


@dataclass
class TrainConfig(DataConfig):
    model: str = opt("bert-base-uncased", "A Hugging Face model id, a local model folder, or 'minilm' "
                                          "for the bundled offline all-MiniLM-L6-v2.")
    output: str = opt(None, "Output folder: becomes a standard Hugging Face model folder.")
    overwrite: bool = opt(False, "Allow writing into an existing folder this tool did not create.")
    epochs: float = opt(3, "Number of passes over the training data.")
    batch_size: int = opt(16, "Examples per optimizer step, before gradient accumulation.")
    grad_accum: int = opt(1, "Micro-batches accumulated per optimizer step.")
    eval_batch_size: int = opt(64, "Examples per evaluation batch.")
    lr: float = opt(5e-5, "Peak learning rate of AdamW.")
    weight_decay: float = opt(0.01, "AdamW weight decay (never on biases and LayerNorm weights).")
    warmup_ratio: float = opt(0.1, "Fraction of optimizer steps spent warming the learning rate up from 0.")
    max_grad_norm: float = opt(1.0, "Clip the global gradient norm to this value (0 turns clipping off).")
    seed: int = opt(42, "Seed for the split, data order, head initialisation and dropout.")
    eval_every: int = opt(0, "Also evaluate on validation every N optimizer steps (0: only at epoch ends).")
    metric: str = opt("accuracy", "Validation metric that picks the best model and drives early stopping.",
                      choices=METRICS)
    patience: int = opt(0, "Stop after this many evaluations without improvement (0: never stop early).")
    class_weights: str = opt("none", "Weight the loss by inverse class frequency (auto) or not (none).",
                             choices=("none", "auto"))
    dynamic_padding: bool = opt(True, "Pad each batch to its own longest text (--no-dynamic-padding: every batch "
                                "to --max-length, as the tutorial recipe does, and never packed; same logits).")
    group_by_length: bool = opt(True, "Batch texts of similar length together, so little padding is computed.")
    cls_fast_path: bool = opt(True, "BERT classifiers: run the last layer for [CLS] only, the one position the "
                                    "classifier reads; same logits, ~14% fewer FLOPs for MiniLM-L6 (--no-cls-fast-path: stock forward).")
    lane_dropout: bool = opt(True, "CPU training, BERT classifiers: draw dropout masks from 16-bit lanes of torch's "
                             "generator (3x cheaper than bernoulli; p rounded to a multiple of 1/65536) with attention "
                             "in plain ops; 1.1-1.3x per step (--no-lane-dropout: PyTorch's dropout).")
    unpadded: bool = opt(True, "GPU, BERT classifiers: pack each batch's real tokens with no padding and use "
                         "variable-length FlashAttention (dropout inside the kernel).")
    cpu_micro_batches: bool = opt(True, "CPU: split each step (gradients summed, the same step) and each evaluation "
                                  "batch so that no activation outgrows glibc's 32 MiB heap threshold; larger "
                                  "blocks are page-faulted afresh each time: 1.2x per MiniLM step at 16 x 512 "
                                  "(--no-cpu-micro-batches: whole batches).")
    bf16: bool = opt(True, "bf16 autocast on a GPU that supports it (always fp32 on CPU, where bf16 is slower).")
    log_every: int = opt(10, "Write a training log record every N optimizer steps.")
    num_threads: int = opt(0, "CPU threads for torch (0: torch's default).")
    trust_remote_code: bool = opt(False, "Allow model code from the hub to run (off: only built-in architectures).")
    resume: bool = opt(False, "Continue from the newest complete checkpoint in --output (starts fresh if none).")
    save_every: int = opt(0, "Also save a checkpoint every N optimizer steps (always at epoch ends).")
    save_minutes: float = opt(10.0, "Also save a checkpoint after this many minutes of wall time since the last.")
    keep_checkpoints: int = opt(2, "Keep the newest K checkpoints (the best model is always kept in --output).")
    max_bad_steps: int = opt(5, "Stop after this many consecutive steps with a NaN or inf loss or gradient.")
    debug: bool = opt(False, "Show full tracebacks instead of one-line errors.")

    def problems(self) -> list[str]:
        """Every conflicting or impossible option, so the user fixes them in one go."""
        found = []
        if not self.data:
            found.append("--data is required")
        if not self.output:
            found.append("--output is required")
        if not 0 < self.val_fraction < 1:
            found.append(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        if self.epochs <= 0:
            found.append(f"--epochs must be positive, got {self.epochs}")
        for name in ("batch_size", "grad_accum", "eval_batch_size", "max_length", "log_every", "keep_checkpoints",
                     "max_bad_steps"):
            if getattr(self, name) < 1:
                found.append(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_length < 8:
            found.append(f"--max-length must be at least 8, got {self.max_length}")
        if self.lr <= 0:
            found.append(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            found.append(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        for name in ("patience", "save_every", "eval_every"):
            if getattr(self, name) < 0:
                found.append(f"--{name.replace('_', '-')} cannot be negative")
        if self.save_minutes <= 0:
            found.append(f"--save-minutes must be positive, got {self.save_minutes}")
        if self.truncation not in TRUNCATION_STRATEGIES:
            found.append(f"--truncation must be one of {', '.join(TRUNCATION_STRATEGIES)}")
        if self.metric not in METRICS:
            found.append(f"--metric must be one of {', '.join(METRICS)}")
        if self.output and self.data and Path(self.output).resolve() == Path(self.data).resolve():
            found.append("--output must not be the data path")
        return found

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in payload.items() if k in known})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")


def greater_is_better(metric: str) -> bool:
    return metric not in ("loss", "log_loss")
