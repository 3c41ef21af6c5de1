"""`tune`'s options: every train option, plus the study's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any
from finetune_bert.options import opt
from finetune_bert.training.config import TrainConfig


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
