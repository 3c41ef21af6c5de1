"""Typed run configuration. Each field's `help` becomes its `--help` line; `problems()` reports every
conflict at once, before any data or model is loaded."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRUNCATION_STRATEGIES = ("head", "tail", "head+tail")
LONG_TEXTS = ("truncate", "chunks")
DEFAULT_STRIDE = 128
AGGREGATES = ("mean", "max")
METRICS = ("accuracy", "f1_macro", "loss", "roc_auc", "log_loss")
BAD_ROW_POLICIES = ("error", "skip")
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit


def opt(default: Any, help: str, at_least: float | None = None, required: bool = False, *,
        at_most: float | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A config field whose help text, bounds and choices travel with it.

    `at_least`, `at_most` and `choices` are checked by `range_problems` (None values are "not given" and
    pass), so that the Python API and the command line refuse the same values, all at once; `required`
    fields are listed under "required options" in --help and checked by the config's `problems()`.
    """
    meta: dict[str, Any] = {"help": help}
    for key, value in (("at_least", at_least), ("at_most", at_most), ("choices", choices)):
        if value is not None:
            meta[key] = value
    if required:
        meta["required"] = True
    return field(default=default, metadata=meta)


def range_problems(cfg: Any, only: type | None = None, skip: type | None = None) -> list[str]:
    """Every numeric field that is not a finite number or is below its `at_least`, and every missing
    required field, each as one line: all of them at once, so the user fixes them in one go. `only` and
    `skip` limit it to the fields a dataclass declares, or to those it does not."""
    found = []
    skipped = {f.name for f in dataclasses.fields(skip)} if skip else set()
    for f in dataclasses.fields(only or cfg):
        if f.name in skipped:
            continue
        value, flag = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
        if f.metadata.get("required") and (value is None or isinstance(value, str) and not value.strip()):
            found.append(f"{flag} is required")
        if isinstance(value, str) and not value.strip() and not f.metadata.get("required") and f.name != "label_names":
            found.append(f"{flag} must not be empty")  # '' would quietly mean "not given", or the current folder
        if isinstance(value, NotANumber):
            found.append(f"{flag} must be {value.kind}, got {value.text!r}")
        elif "choices" in f.metadata and value is not None and value not in f.metadata["choices"]:
            found.append(f"{flag} must be one of {', '.join(f.metadata['choices'])}, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            found.append(f"{flag} must be a finite number, got {value}")
        elif "at_least" in f.metadata and value < f.metadata["at_least"]:
            found.append(f"{flag} must be at least {f.metadata['at_least']}, got {value}")
        elif "at_most" in f.metadata and value > f.metadata["at_most"]:
            found.append(f"{flag} must be at most {f.metadata['at_most']}, got {value}")
    return found


def _finite(value: Any) -> bool:
    """A number the further checks can compare; anything else range_problems has reported already."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class NotANumber:
    """What the command line gives for a number it could not read, so that the config reports it with every
    other problem, in one line, instead of argparse stopping at the first."""

    text: str
    kind: str  # "a whole number" or "a number"


@dataclass
class DataConfig:
    data: str = opt(None, "Training data: a CSV/TSV/JSON/JSONL/Parquet file (optionally .gz), an "
                          "aclImdb-style folder, or a Hugging Face dataset name such as 'imdb'.", required=True)
    test_data: str | None = opt(None, "Test data, same forms as --data. Folders and hub datasets bring "
                                      "their own test split.")
    val_data: str | None = opt(None, "Validation data. Without it, a stratified split is taken from train.")
    text_column: str | None = opt(None, "Name of the text column (auto-detected: text, review, sentence, content).")
    label_column: str | None = opt(None, "Name of the label column (auto-detected: label, sentiment, target, class).")
    label_names: str | None = opt(None, "Names for integer labels, in id order, e.g. 'negative,positive'. "
                                        "They become id2label in the saved model.")
    val_fraction: float = opt(0.1, "Fraction of train held out for validation when --val-data is not given.")
    max_train_samples: int | None = opt(None, "Use only the first N training rows after a seeded shuffle.", at_least=1)
    max_test_samples: int | None = opt(None, "Use only the first N test rows after a seeded shuffle.", at_least=1)
    clean: bool = opt(True, "Turn '<br />' tags and HTML entities into plain text (--no-clean turns it off).")
    max_length: int = opt(512, "Maximum tokens per text, [CLS] and [SEP] included; clamped to the model's limit.",
                          at_least=8)
    truncation: str = opt("head+tail", "Which tokens to keep from a long text: head, tail, or head+tail "
                                       "(the first 128 tokens plus the last ones; Sun et al. 2019).",
                          choices=TRUNCATION_STRATEGIES)
    on_bad_rows: str = opt("error", "What a bad row (empty text, missing label, unknown class) does: stop "
                                    "the run before training (error), or skip it and list it in "
                                    "DIR/skipped_rows.csv (skip).", choices=BAD_ROW_POLICIES)
    dedupe: bool = opt(False, "Drop train rows whose text repeats an earlier train row or appears in the "
                              "validation or test data; each dropped row is listed in skipped_rows.csv.")
    head_tokens: int = opt(128, "With head+tail: how many tokens come from the head (at most half the budget).",
                           at_least=0)
    fold_labels: bool = opt(False, "Merge labels that differ only in case ('positive', 'Positive') into their most "
                                   "frequent spelling; without it such labels stop the run with a list of them.")

    def warnings(self) -> list[str]:
        """Options given that can have no effect: said, so that nobody believes they changed the run."""
        found = []
        if self.val_data and self.val_fraction != 0.1:
            found.append("--val-fraction has no effect with --val-data")
        if self.truncation != "head+tail" and self.head_tokens != 128:
            found.append(f"--head-tokens has no effect with --truncation {self.truncation}")
        budget = self.max_length - 2  # [CLS] and [SEP]
        # The default 128 meets short budgets all the time ("128 or half"); a value the user chose is said.
        if self.truncation == "head+tail" and self.head_tokens != 128 and self.head_tokens > budget // 2 >= 0:
            found.append(f"--head-tokens {self.head_tokens} is more than half of the {budget}-token budget: "
                         f"the first {budget // 2} tokens and the last {budget - budget // 2} are kept")
        return found

    def problems(self) -> list[str]:
        """The data options' problems (`inspect` has only these; `train` adds its own)."""
        found = range_problems(self, only=DataConfig)
        if self.label_names is not None and not all(n.strip() for n in self.label_names.split(",")):
            found.append(f"--label-names {self.label_names!r}: every name must be non-empty, e.g. 'negative,positive'")
        if _finite(self.val_fraction) and not 0 < self.val_fraction < 1:
            found.append(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        return found


@dataclass
class TrainConfig(DataConfig):
    model: str = opt("bert-base-uncased", "A Hugging Face model id, a local model folder, or 'minilm' "
                                          "for the bundled offline all-MiniLM-L6-v2.")
    output: str = opt(None, "Output folder: becomes a standard Hugging Face model folder.", required=True)
    overwrite: bool = opt(False, "Allow writing into an existing folder this tool did not create, or replacing "
                                 "the trained model in a folder it did.")
    epochs: float = opt(3, "Number of passes over the training data.")
    batch_size: int = opt(16, "Examples per optimizer step, before gradient accumulation.", at_least=1)
    grad_accum: int = opt(1, "Micro-batches accumulated per optimizer step.", at_least=1)
    eval_batch_size: int = opt(64, "Examples per evaluation batch.", at_least=1)
    lr: float = opt(5e-5, "Peak learning rate of AdamW.")
    weight_decay: float = opt(0.01, "AdamW weight decay (never on biases and LayerNorm weights).", at_least=0)
    warmup_ratio: float = opt(0.1, "Fraction of optimizer steps spent warming the learning rate up from 0.")
    max_grad_norm: float = opt(1.0, "Clip the global gradient norm to this value (0 turns clipping off).", at_least=0)
    seed: int = opt(42, "Seed for the split, data order, head initialisation and dropout.", at_least=0,
                    at_most=MAX_SEED)
    eval_every: int = opt(0, "Also evaluate on validation every N optimizer steps (0: only at epoch ends).", at_least=0)
    metric: str = opt("accuracy", "Validation metric that picks the best model and drives early stopping.",
                      choices=METRICS)
    patience: int = opt(0, "Stop after this many evaluations without improvement (0: never stop early).", at_least=0)
    report: bool = opt(True, "Write report.html at the end (its figures take a few seconds; tune's trials skip it and "
                             "only the best model gets one).")
    calibrate: bool = opt(True, "After training, fit a temperature on validation (temperature scaling) and fold it "
                                "into the saved classifier, so its confidences match its accuracy; kept only if it "
                                "lowers validation NLL (--no-calibrate: raw softmax).")
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
    bf16_weights: bool = opt(True, "GPU with bf16: keep the weights themselves in bf16 and let the optimizer step fp32 "
                             "master copies (saved in checkpoints and the model), instead of autocast casting every "
                             "weight each step; 1.27-1.37x per bert-base step on an H200, same losses "
                             "(--no-bf16-weights: autocast).")
    log_every: int = opt(10, "Write a training log record every N optimizer steps.", at_least=1)
    num_threads: int = opt(0, "CPU threads for torch (0: torch's default), at most this machine's CPU count.",
                           at_least=0, at_most=os.cpu_count() or 1)
    trust_remote_code: bool = opt(False, "Allow model code from the hub to run (off: only built-in architectures).")
    resume: bool = opt(False, "Continue from the newest complete checkpoint in --output (starts fresh if none).")
    save_every: int = opt(0, "Also save a checkpoint every N optimizer steps (always at epoch ends).", at_least=0)
    save_minutes: float = opt(10.0, "Also save a checkpoint after this many minutes of wall time since the last.")
    keep_checkpoints: int = opt(2, "Keep the newest K checkpoints (the best model is always kept in --output); 0 "
                                   "keeps one while training and removes it after a successful run.", at_least=0)
    max_bad_steps: int = opt(5, "Stop after this many consecutive steps with a NaN or inf loss or gradient.", at_least=1)
    nproc_per_node: int = opt(1, "Train with this many processes on this machine (one per GPU; DDP under torchrun, "
                              "started for you); --batch-size stays the global batch of a step. For several "
                              "machines, run torchrun yourself (README, 'More than one GPU').", at_least=1)
    dist_timeout: float = opt(600.0, "With several processes: seconds a process waits for the others at a collective "
                              "before the job stops with a message (a process that died or hangs).", at_least=1)
    debug: bool = opt(False, "Show full tracebacks instead of one-line errors.")

    def problems(self) -> list[str]:
        """Every conflicting or impossible option, so the user fixes them in one go."""
        found = DataConfig.problems(self) + range_problems(self, skip=DataConfig)
        if _finite(self.epochs) and self.epochs <= 0:
            found.append(f"--epochs must be positive, got {self.epochs}")
        if _finite(self.lr) and self.lr <= 0:
            found.append(f"--lr must be positive, got {self.lr}")
        if _finite(self.warmup_ratio) and not 0 <= self.warmup_ratio < 1:
            found.append(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if _finite(self.save_minutes) and self.save_minutes <= 0:
            found.append(f"--save-minutes must be positive, got {self.save_minutes}")
        if not str(self.model).strip():
            found.append("--model must not be empty: a hub id, a model folder, or minilm")
        found += output_in_data(self) + self._output_is_model()
        return found

    def _output_is_model(self) -> list[str]:
        """Training into the folder of the model it starts from would replace that model at the first
        evaluation, and a run failing after it would leave neither."""
        out, model = Path(self.output or "").expanduser(), Path(self.model).expanduser()
        try:
            same = bool(self.output) and out.is_dir() and model.is_dir() and out.samefile(model)
        except OSError:
            same = False
        return [f"--output {self.output} is the --model folder; training into it would replace the model it "
                "starts from: choose a new folder"] if same else []

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in payload.items() if k in known})


@dataclass
class TuneConfig(TrainConfig):
    """`tune`: every train option, fixed for all trials except those the search space names; `output` is the
    study's folder (study.db, trials.csv, best/, ...)."""

    trials: int = opt(20, "Completed trials to reach in total, across reruns and processes sharing the study.",
                      at_least=1)
    timeout: float | None = opt(None, "Start no new trial after this many seconds of this process.", at_least=0)
    storage: str | None = opt(None, "An Optuna RDB URL (sqlite:///..., postgresql://..., mysql://...) shared by every "
                              "process of one study; default sqlite:///OUTPUT/study.db.")
    space: str | None = opt(None, "Search space file (JSON or YAML): option -> {low, high[, log]} or {choices}; "
                            "default lr 1e-5-1e-4 (log), batch size 16/32, epochs 2-4, warm-up 0/0.06/0.1, "
                            "weight decay 0/0.01/0.1.")
    prune: bool = opt(True, "Stop a trial whose validation metric is below the median of earlier trials at the same "
                      "evaluation (after 3 trials and its first evaluation); --no-prune runs every trial to the end.")
    confirm_seeds: int = opt(3, "After the search, train the best and the default configuration with this many seeds "
                             "each and report the gain as mean +- std (0: skip).", at_least=0)
    heartbeat: int = opt(30, "Seconds between a trial's heartbeats; a trial silent for twice this is taken as dead "
                         "(another host's; on this host a killed trial is found at once) and retried.", at_least=1)

    def problems(self) -> list[str]:
        found = TrainConfig.problems(self)
        if self.nproc_per_node != 1:
            found.append("--nproc-per-node is for train; to search with several processes, run several tune "
                         "commands on one --storage (each trial runs in one process)")
        return found

    def train_config(self, **changes: Any) -> TrainConfig:
        """The train options alone (what a trial, or best_config.json, is)."""
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{**{k: v for k, v in dataclasses.asdict(self).items() if k in names}, **changes})


@dataclass(frozen=True)
class Reading:
    """How a trained model reads a text at prediction time (see predict.Classifier)."""

    long_texts: str | None = opt(None, "A text longer than the model's max length: read whole as overlapping "
                                       "windows whose logits are aggregated (chunks, the default: on IMDB's "
                                       "reviews over 512 tokens, 85.0% accuracy against 81.6% cut head+tail, at "
                                       "max length 256), or cut as the model was trained (truncate; the default "
                                       "when --truncation is given).", choices=LONG_TEXTS)
    stride: int | None = opt(None, "With --long-texts chunks: tokens of overlap between consecutive windows "
                                   "(default: 128, or half the window for a model with a shorter one).", at_least=0)
    aggregate: str | None = opt(None, "With --long-texts chunks: each class's logit is the mean over the windows "
                                      "(mean, the default) or the largest (max).", choices=AGGREGATES)
    truncation: str | None = opt(None, "With --long-texts truncate: head, tail or head+tail (default: as the "
                                       "model was trained).", choices=TRUNCATION_STRATEGIES)

    @property
    def how(self) -> str:
        return self.aggregate or "mean"

    @property
    def mode(self) -> str:
        """chunks, unless truncate was asked for or a --truncation given."""
        return self.long_texts or ("truncate" if self.truncation else "chunks")

    def overlap(self, window: int) -> int:
        """The stride used with windows of `window` tokens: as given, else 128 (at most half the window)."""
        return self.stride if self.stride is not None else min(DEFAULT_STRIDE, window // 2)

    def problems(self, window: int | None = None, max_length: int | None = None) -> list[str]:
        """What cannot be combined; given the model's `window` (its max length less its special tokens), also
        a stride the windows could not step by."""
        found = range_problems(self)
        if self.mode == "truncate" and self.aggregate is not None:
            found.append("--aggregate is for --long-texts chunks; with truncate each text is read once")
        if self.long_texts == "chunks" and self.truncation is not None:
            found.append("--truncation is for --long-texts truncate; with chunks the whole text is read")
        if window is not None and self.mode == "chunks" and isinstance(self.stride, int) \
                and not isinstance(self.stride, bool) and self.stride >= window:
            found.append(f"--stride {self.stride} must be less than the model's window of {window} tokens (its max "
                         f"length {max_length or window} less the special tokens): windows overlapping by that much "
                         "would never move forward")
        return found


def output_in_data(cfg: DataConfig, output: str | Path | None = None) -> list[str]:
    """--output (default: cfg.output) that is, or lies inside, a data path: a folder inside an aclImdb-style
    folder would be read as a new class by the next run, and an output equal to a data file would replace it."""
    given_output = output if output is not None else getattr(cfg, "output", None)
    if not given_output:
        return []
    out = Path(given_output).expanduser().resolve()
    found = []
    for option in ("data", "val_data", "test_data"):
        given = getattr(cfg, option)
        if not given or not Path(given).expanduser().exists():
            continue  # a hub name, or a missing file reported when the data is read
        data = Path(given).expanduser().resolve()
        if out == data or data in out.parents:
            found.append(f"--output {given_output} must not be {'inside ' if out != data else ''}the data "
                         f"(--{option.replace('_', '-')} {given}); choose a folder outside it")
    return found


def greater_is_better(metric: str) -> bool:
    return metric not in ("loss", "log_loss")
