"""`audit`'s options: every train option (each fold is a training run), and the audit's own."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_bert.engine.run_info import RUN_FILE
from finetune_bert.options import opt
from finetune_bert.training.config import TrainConfig

RANKINGS = ("self_confidence", "normalized_margin")
DEFAULT_FOLDS = 5
# What a fine-tuned --model leaves to decide: the data, where to write, and the audit's own options. The
# training options would be ignored, and an ignored option is a user misled, so they are refused.
SCORING_OPTIONS = {"data", "model", "output", "overwrite", "text_column", "label_column", "text_pair_column",
                   "on_bad_rows", "max_train_samples", "seed", "eval_batch_size", "num_threads", "debug", "folds",
                   "write_clean", "relabel", "rank_by", "top", "explain_steps", "keep_fold_models"}


@dataclass
class AuditConfig(TrainConfig):
    """`audit`: find rows whose label is likely wrong. With a base --model, K-fold cross-validation (each fold a
    training run with every train option) scores each row with a model that never saw it; with a model
    finetune-bert fine-tuned, that model scores data it did not train on. Confident learning (cleanlab) then
    flags the rows; `output` is the audit's folder."""

    data: str = opt(None, "The labelled data to audit, every row of it: a CSV/TSV/JSON/JSONL/Parquet file (optionally "
                          ".gz), an aclImdb-style folder or a hub dataset (with a fine-tuned --model: its test split).",
                    required=True)
    model: str = opt("bert-base-uncased", "A base model to cross-validate (hub id, folder, or 'minilm'), or a folder "
                                          "finetune-bert fine-tuned, which then scores the data it did not train on.")
    output: str = opt(None, "The audit's folder: label_issues.csv, oof_probabilities.csv, summary.json, report.html, "
                            "folds/. Running the same command again continues it.", required=True)
    folds: int | None = opt(None, f"Cross-validation folds: K models, each trained on the other folds, score the rows "
                                  f"of one (default {DEFAULT_FOLDS}; not with a fine-tuned --model, which scores the "
                                  "data itself).", at_least=2)
    rank_by: str = opt("self_confidence", "How label issues are ranked, worst first: the out-of-fold probability of "
                                          "the given label (self_confidence), or that less the best other label's "
                                          "(normalized_margin).", choices=RANKINGS)
    top: int = opt(20, "Label issues shown in report.html, each with its words coloured by what drove the model "
                       "(label_issues.csv lists them all).", at_least=0)
    explain_steps: int = opt(32, "Integrated Gradients steps for the words coloured in the report.", at_least=2)
    write_clean: str | None = opt(None, "Also write a copy of --data without the flagged rows (with --relabel: with "
                                        "their suggested label instead) to this file: .csv, .tsv, .jsonl, .json or "
                                        ".parquet. Never the input; --data itself is never changed.")
    relabel: bool = opt(False, "With --write-clean: keep the flagged rows, relabelled with the suggested label.")
    keep_fold_models: bool = opt(False, "Keep each fold's model in OUTPUT/folds/ (by default their weights are "
                                        "removed once the audit is written: hundreds of MB each).")

    def problems(self) -> list[str]:
        found = TrainConfig.problems(self)
        if self.val_data or self.test_data:
            found.append("audit reads every row of --data and holds out its own folds: drop --val-data/--test-data "
                         "(to audit a test split, give it as --data)")
        if self.nproc_per_node != 1:
            found.append("--nproc-per-node is for train; audit trains its folds one after the other in one process")
        if self.resume:
            found.append("--resume: an audit always continues where it stopped when the same command is run again")
        if self.relabel and not self.write_clean:
            found.append("--relabel says how --write-clean writes the flagged rows: give --write-clean FILE")
        if self.fine_tuned():
            found += self._scoring_problems()
        return found

    def fine_tuned(self) -> bool:
        """Whether --model is a folder finetune-bert trained (it then scores the data; nothing is trained)."""
        folder = Path(str(self.model)).expanduser()
        return folder.is_dir() and (folder / RUN_FILE).is_file()

    def _scoring_problems(self) -> list[str]:
        defaults = AuditConfig(model=self.model, data=self.data, output=self.output).with_defaults()
        given = sorted(f.name for f in dataclasses.fields(self) if f.name not in SCORING_OPTIONS
                       and getattr(self, f.name) != getattr(defaults, f.name))
        found = []
        if self.folds is not None:
            found.append(f"--folds: {self.model} is a fine-tuned model, which scores the data itself; to "
                         "cross-validate, give the model it started from as --model")
        if given:
            found.append(f"{', '.join('--' + g.replace('_', '-') for g in given)}: training options, and nothing is "
                         f"trained with the fine-tuned model {self.model}; drop them, or cross-validate from a base "
                         "model with --folds")
        return found

    def train_config(self, **changes: Any) -> TrainConfig:
        """The train options alone: what each fold runs."""
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{**{k: v for k, v in dataclasses.asdict(self).items() if k in names}, **changes})
