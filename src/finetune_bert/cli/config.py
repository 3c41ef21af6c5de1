"""The options of the commands that live in the command line alone: `inspect` and `demo`. Kept apart from
their functions so that building the parser imports neither torch nor transformers."""

from __future__ import annotations

from dataclasses import dataclass

from finetune_bert.data.config import DataConfig
from finetune_bert.options import MAX_SEED, debug_option, opt, range_problems


@dataclass
class InspectConfig(DataConfig):
    """`inspect`: the data options, and whose tokenizer measures the lengths."""

    model: str = opt("minilm", "Whose tokenizer measures lengths (default: minilm, whose vocabulary is "
                               "bert-base-uncased's).")
    output: str | None = opt(None, "Folder to save data_report.json/.txt (and skipped_rows.csv) in.")
    seed: int = opt(42, "Seed of the validation split.", at_least=0, at_most=MAX_SEED)
    trust_remote_code: bool = opt(False, "Allow tokenizer code from the hub to run (off: only built-in ones).")
    debug: bool = debug_option()

    def problems(self) -> list[str]:
        return DataConfig.problems(self) + range_problems(self, skip=DataConfig)


@dataclass
class DemoConfig:
    """`demo`: what `make demo` runs."""

    output: str = opt("runs/demo", "Output folder.")
    epochs: float | None = opt(None, "Override the demo's epochs (default: 4).")
    overwrite: bool = opt(False, "Write into a folder holding files finetune-bert did not write (a previous demo's "
                                 "model is replaced without it).")
    debug: bool = debug_option()

    def problems(self) -> list[str]:
        return range_problems(self)
