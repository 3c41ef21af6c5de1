"""`train`'s options: the data options plus the model, the schedule, the speed levers and the run's safety nets."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from finetune_bert.data.config import DataConfig, output_in_data
from finetune_bert.evaluation import named as named_metrics
from finetune_bert.training import class_weights as weights_by_name
from finetune_bert.options import MAX_SEED, debug_option, finite, opt, range_problems
from finetune_bert.tasks import DEFAULT_METRIC, METRICS as KIND_METRICS, MULTI_LABEL, TASKS


# --kd-temperature and --kd-alpha when not given: Hinton et al. (2015) soften with T > 1; 2 and an even mix of the
# teacher and the true labels are the usual starting point (DistilBERT, TinyBERT's task stage). Here, not in
# training.kinds which uses them, so that the command line's configs import no torch.
KD_TEMPERATURE = 2.0
KD_ALPHA = 0.5
# --lora's settings when not given: the LoRA paper's GLUE runs (Hu et al. 2021, rank 8, alpha 16, query and value)
LORA_DEFAULTS = {"lora_rank": 8, "lora_alpha": 16.0, "lora_dropout": 0.1, "lora_targets": "query,value"}
METRICS = tuple(dict.fromkeys(m for kind in TASKS for m in KIND_METRICS[kind]))


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
    lr: float | None = opt(None, "Peak learning rate of AdamW (default 5e-5; 1e-3 with --lora, whose adapters start "
                                 "from zero and need larger steps: MiniLM on 2,000 IMDB reviews, 2 epochs, scored "
                                 "86.2% at 1e-3 against 84.3% at 5e-4; full fine-tuning 87.2%).")
    weight_decay: float = opt(0.01, "AdamW weight decay (never on biases and LayerNorm weights).", at_least=0)
    warmup_ratio: float = opt(0.1, "Fraction of optimizer steps spent warming the learning rate up from 0.")
    max_grad_norm: float = opt(1.0, "Clip the global gradient norm to this value (0 turns clipping off).", at_least=0)
    seed: int = opt(42, "Seed for the split, data order, head initialisation and dropout.", at_least=0,
                    at_most=MAX_SEED)
    eval_every: int = opt(0, "Also evaluate on validation every N optimizer steps (0: only at epoch ends).", at_least=0)
    metric: str | None = opt(None, "Validation metric that picks the best model and drives early stopping (default: "
                                   "accuracy; macro F1 for multi-label; RMSE for regression): one of this tool's "
                                   "(accuracy, f1_macro, loss, roc_auc, log_loss; subset_accuracy, map; rmse, mae, "
                                   "r2, spearman...) or any scikit-learn classification or regression metric by name "
                                   "(matthews_corrcoef, balanced_accuracy, cohen_kappa, neg_mean_absolute_error, "
                                   "median_absolute_error...), which way is better known (docs/metrics.md).")
    threshold: float | None = opt(None, "Multi-label: decide every label at this probability (e.g. 0.5) instead of "
                                        "each label's threshold tuned on validation for its best F1.")
    patience: int = opt(0, "Stop after this many evaluations without improvement (0: never stop early).", at_least=0)
    report: bool = opt(True, "Write report.html at the end (its figures take a few seconds; tune's trials skip it and "
                             "only the best model gets one), with the words of the mistakes it lists coloured: "
                             "explaining those 20 texts is 640 forward and backward passes, about 2 minutes for "
                             "MiniLM at 128 tokens on 2 CPU cores.")
    calibrate: bool = opt(True, "After training, fit a temperature on validation (temperature scaling) and fold it "
                                "into the saved classifier, so its confidences match its accuracy; kept only if it "
                                "lowers validation NLL (--no-calibrate: raw softmax).")
    lora: bool = opt(False, "Train low-rank adapters (LoRA, through peft) on a frozen model, and the classifier head "
                     "in full. The saved model is an ordinary folder with the adapters merged into its weights; "
                     "checkpoints hold only what is trained.")
    lora_rank: int | None = opt(None, "With --lora: the adapters' rank (default 8).", at_least=1)
    lora_alpha: float | None = opt(None, "With --lora: the adapters' scale numerator, alpha / rank (default 16).")
    lora_dropout: float | None = opt(None, "With --lora: dropout on the adapters' input (default 0.1).")
    lora_targets: str | None = opt(None, "With --lora: the linear layers adapted, by name, comma-separated (default "
                                         "query,value; DistilBERT names them q_lin,v_lin).")
    lora_save_adapter: bool = opt(False, "With --lora: also write the adapter alone in peft's format to "
                                         "OUTPUT/adapter (head included), for PeftModel.from_pretrained.")
    class_weights: str = opt("none", "Weight the loss by inverse class frequency (auto), not at all (none), or by "
                                     "label name: negative=1,positive=3 (a label not named weighs 1). Multi-label: "
                                     "each label's pos_weight (auto: its negatives over its positives).")
    dynamic_padding: bool = opt(True, "Pad each batch to its own longest text (--no-dynamic-padding: every batch "
                                "to --max-length, as the tutorial recipe does, and never packed; same logits).")
    group_by_length: bool = opt(True, "Batch texts of similar length together, so little padding is computed.")
    cls_fast_path: bool = opt(True, "BERT classifiers: run the last layer for [CLS] only, the one position the "
                                    "classifier reads: the same logits for less work (--no-cls-fast-path: stock forward).")
    lane_dropout: bool = opt(True, "CPU training, BERT classifiers: draw dropout masks from 16-bit lanes of torch's "
                             "generator, cheaper than bernoulli (p rounded to a multiple of 1/65536), with attention "
                             "in plain ops; the same dropout law (--no-lane-dropout: PyTorch's dropout).")
    unpadded: bool = opt(True, "GPU, BERT classifiers: pack each batch's real tokens with no padding and use "
                         "variable-length FlashAttention (dropout inside the kernel).")
    cpu_micro_batches: bool = opt(True, "CPU: split each step (gradients summed, the same step) and each evaluation "
                                  "batch so that no activation outgrows glibc's 32 MiB heap threshold; larger "
                                  "blocks are page-faulted afresh each time (--no-cpu-micro-batches: whole batches).")
    bf16: bool = opt(True, "bf16 autocast on a GPU that supports it (always fp32 on CPU, where bf16 is slower).")
    bf16_weights: bool = opt(True, "GPU with bf16: keep the weights themselves in bf16 and let the optimizer step fp32 "
                             "master copies (saved in checkpoints and the model), instead of autocast casting every "
                             "weight each step; the same losses (--no-bf16-weights: autocast).")
    cpu_bf16: bool = opt(False, "CPU training in bf16: bf16 weights with fp32 masters (--no-bf16-weights: autocast). "
                                "Worth it on CPUs that compute bf16 themselves (AMX tiles, or AVX-512 BF16): 2.09x "
                                "fp32's step on a 2-core EPYC with AVX-512 BF16, test accuracy within the seed "
                                "spread; elsewhere slower than fp32, and the run says so. Opt-in until measured on "
                                "an AMX CPU (benchmarks/RESULTS.md).")
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
    force: bool = opt(False, "With --nproc-per-node on a machine without a GPU: start more processes than it has CPU "
                             "cores (refused otherwise: they only share the cores, each with its own model).")
    dist_timeout: float = opt(600.0, "With several processes: seconds a process waits for the others at a collective "
                              "before the job stops with a message (a process that died or hangs).", at_least=1)
    export: bool = opt(True, "At the end, write the model's ONNX fp32 export (MODEL/onnx/, checked against torch "
                             "within 1e-4, as `finetune-bert export` does; seconds), which predict, evaluate and "
                             "serve run by default on a CPU without AMX; a failed export is a warning, not a failed "
                             "run (tune's trials and audit's folds never export; tune's best model does).")
    push_to_hub: str | None = opt(None, "At the end of a successful run, upload the model folder to this Hugging Face "
                                        "hub repository (user/name, made if it does not exist) as `finetune-bert "
                                        "push` does: model, tokenizer, card, metrics and reports, never checkpoints. "
                                        "Needs a token (HF_TOKEN, or `hf auth login`), checked before training; a "
                                        "failed upload leaves the model saved and says how to push it later.")
    report_to: str | None = opt(None, "Experiment trackers to log to, comma-separated: tensorboard, mlflow, wandb, or none "
                                "(default: tensorboard where it is installed, else none). Each gets the loss, lr and "
                                "tokens/s of the training log, validation at each evaluation and the final metrics; "
                                "MLflow and W&B also every option, report.html and the model card. A tracker that "
                                "fails is a warning and training goes on. MLflow: a store in OUTPUT/mlruns unless "
                                "--mlflow-uri (or MLFLOW_TRACKING_URI); W&B: online with an API key, or "
                                "WANDB_MODE=offline into OUTPUT/wandb (docs/tracking-and-hub.md).")
    mlflow_uri: str | None = opt(None, "With --report-to mlflow: the tracking server or store to log to "
                                       "(http://host:5000, sqlite:///path/mlflow.db); default a SQLite store in "
                                       "OUTPUT/mlruns.")
    debug: bool = debug_option()

    def with_defaults(self) -> "TrainConfig":
        """The config with what depends on other options filled in: --metric, the kind's own (recorded as
        chosen, so that run_config.json and a resume see it)."""
        filled: dict[str, Any] = {}
        if self.metric is None and self.task in DEFAULT_METRIC:
            filled["metric"] = DEFAULT_METRIC[self.task]
        elif self.metric is not None and named_metrics.canonical(self.metric) != self.metric and \
                not named_metrics.problems(self.metric, self.task):  # a refusal names it as it was typed
            filled["metric"] = named_metrics.canonical(self.metric)  # the key its value has: neg_log_loss is log_loss
        if self.lr is None:
            filled["lr"] = 1e-3 if self.lora else 5e-5
        if self.lora:
            filled.update({k: v for k, v in LORA_DEFAULTS.items() if getattr(self, k) is None})
        return dataclasses.replace(self, **filled) if filled else self

    def problems(self) -> list[str]:
        """Every conflicting or impossible option, so the user fixes them in one go."""
        found = DataConfig.problems(self) + range_problems(self, skip=DataConfig) + self._kind_problems()
        if finite(self.epochs) and self.epochs <= 0:
            found.append(f"--epochs must be positive, got {self.epochs}")
        if self.lr is not None and finite(self.lr) and self.lr <= 0:
            found.append(f"--lr must be positive, got {self.lr}")
        if finite(self.warmup_ratio) and not 0 <= self.warmup_ratio < 1:
            found.append(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if finite(self.save_minutes) and self.save_minutes <= 0:
            found.append(f"--save-minutes must be positive, got {self.save_minutes}")
        if not str(self.model).strip():
            found.append("--model must not be empty: a hub id, a model folder, or minilm")
        found += output_in_data(self) + self._output_is_model() + self._lora_problems() + self._push_problems()
        from finetune_bert.training.tracking import problems as tracking_problems  # a missing library, its extra

        found += tracking_problems(self.report_to, self.mlflow_uri)
        return found

    def _push_problems(self) -> list[str]:
        """--push-to-hub checked before any training: the repository's name, the hub reachable, a token found.
        Only `train` pushes at its end; the commands built on these options (tune, audit, distill, prune) would
        ignore it, so they refuse it instead."""
        if self.push_to_hub is None:
            return []
        if type(self) is not TrainConfig:
            return ["--push-to-hub is train's; push a finished model folder with: finetune-bert push DIR REPO"]
        from finetune_bert.export.hub import push_problems

        return push_problems(self.push_to_hub, "--push-to-hub")

    def _lora_problems(self) -> list[str]:
        """LoRA's options without --lora would be silently ignored; with it, each must make sense."""
        given = [k for k in (*LORA_DEFAULTS, "lora_save_adapter") if getattr(self, k) not in (None, False)]
        if not self.lora:
            return [f"--{k.replace('_', '-')} sets up LoRA; add --lora or drop it" for k in given]
        found = []
        if self.lora_alpha is not None and finite(self.lora_alpha) and self.lora_alpha <= 0:
            found.append(f"--lora-alpha must be positive, got {self.lora_alpha}")
        if self.lora_dropout is not None and finite(self.lora_dropout) and not 0 <= self.lora_dropout < 1:
            found.append(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_targets is not None and not [t for t in self.lora_targets.split(",") if t.strip()]:
            found.append("--lora-targets names no layer; e.g. query,value")
        return found

    def lora_settings(self):
        """The engine's LoRA settings, or None without --lora."""
        from finetune_bert.engine.lora import LoraSettings

        if not self.lora:
            return None
        cfg = self.with_defaults()
        return LoraSettings(cfg.lora_rank, float(cfg.lora_alpha), float(cfg.lora_dropout),
                            tuple(t.strip() for t in cfg.lora_targets.split(",") if t.strip()))

    def _kind_problems(self) -> list[str]:
        """Options that mean nothing for the task kind asked (--metric and --class-weights: what can be told
        before the data is read)."""
        found = named_metrics.problems(self.metric, self.task) + \
            weights_by_name.spec_problems(self.class_weights, self.task)
        if self.threshold is not None and self.task != MULTI_LABEL:
            found.append("--threshold decides labels of a multi-label model; pass --task multi-label or drop it")
        if self.threshold is not None and finite(self.threshold) and not 0 < self.threshold < 1:
            found.append(f"--threshold is a probability between 0 and 1, got {self.threshold}")
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
