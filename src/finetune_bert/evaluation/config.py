"""`evaluate`'s and `report`'s options."""

from __future__ import annotations

from dataclasses import dataclass
from finetune_bert.options import MAX_SEED, debug_option, opt, range_problems
from finetune_bert.inference.config import ScoreConfig


@dataclass
class EvaluateConfig(ScoreConfig):
    data: str = opt(None, "Labelled data, any form `train --data` takes.", required=True)
    output: str | None = opt(None, "Where to write the metrics, a .json file (default: MODEL/evaluation.json).")
    label_column: str | None = opt(None, "Name of the label column (auto-detected: label, sentiment, target, class).")
    max_samples: int | None = opt(None, "Score only N rows (a seeded sample).", at_least=1)
    seed: int = opt(42, "Seed of the --max-samples sample.", at_least=0, at_most=MAX_SEED)
    errors: int = opt(0, "Also write the N most confident mistakes (text, true label, prediction, confidence; for a "
                         "regression, the N largest errors) to OUTPUT_NAME.errors.csv beside the metrics.", at_least=0)

    def problems(self) -> list[str]:
        found = super().problems()
        if self.several() and self.backend.startswith("onnx"):
            found.append(f"--backend {self.backend}: several processes (--nproc-per-node, torchrun) share the "
                         "evaluation's batches through torch; use --backend torch or torch-fp32 (auto picks torch), "
                         "or one process")
        return found


@dataclass
class ReportConfig:
    """`report`: rebuild a training run's report.html, or an evaluation's NAME.html, from the files it wrote."""

    target: str = opt(None, "a training run's output folder, or an evaluation's .json", required=True,
                      positional="?")
    debug: bool = debug_option()

    def problems(self) -> list[str]:
        return range_problems(self)
