"""`train --nproc-per-node N`: torchrun started for the user, in this process, on this machine.

torchrun's own entry point, run by engine.launcher with `-m finetune_bert train --config FILE`, the FILE
holding the checked options. What this adds is every problem of the user's (options, output folder, data,
model) found here, in one process, before N processes start; the end is one line and one exit code (the
launcher's): 130 when stopped by a signal (all ranks saved the same step), 2 when a process refused the
input (it said why), 1 when one died.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from finetune_bert.engine import distributed, launcher
from finetune_bert.training.config import TrainConfig
from finetune_bert.errors import TrainingFailed  # (the failure's type, for the callers of _failure)
from finetune_bert.console import console
from finetune_bert.training.finish import TrainResult
from finetune_bert.training.train import checked, preflight
from finetune_bert.training.train import train as train_here


def train(cfg: TrainConfig | None = None, **overrides: Any) -> TrainResult:
    """Fine-tune (see training.train.train); with `nproc_per_node` > 1 outside torchrun, in that many processes."""
    cfg = cfg if cfg is not None else TrainConfig()
    wanted = overrides.get("nproc_per_node", cfg.nproc_per_node)
    if wanted <= 1 or distributed.launched():
        return train_here(cfg, **overrides)
    with console.quiet():  # rank 0 says the config again; warnings are said here too, before anything starts
        cfg = checked(cfg, **overrides)
    return launch(cfg)


def launch(cfg: TrainConfig) -> TrainResult:
    """Check everything, then run `cfg` under torchrun with `cfg.nproc_per_node` processes on this machine."""
    distributed.check_gpus(cfg.nproc_per_node, cfg.force)
    with console.quiet():
        preflight(cfg)
    with tempfile.TemporaryDirectory(prefix="finetune-bert-launch-") as tmp:
        options = Path(tmp) / "train_config.json"
        options.write_text(json.dumps(cfg.to_json()) + "\n", encoding="utf-8")
        _run_torchrun(cfg.nproc_per_node, ["train", "--config", str(options), "--output", str(cfg.output)])
    metrics = json.loads((Path(cfg.output).expanduser() / "metrics.json").read_text(encoding="utf-8"))
    return TrainResult(str(Path(cfg.output).expanduser()), metrics, metrics["best_step"])


# what a training job's end leaves: complete checkpoints, every rank at the same step after a signal
TRAINING = launcher.Job("training", "Every checkpoint in OUTPUT/checkpoints is complete or absent: rerun the same "
                        "command with --resume", "all processes stopped at the same step, after its checkpoint (see "
                        "above). Resume with the same command and --resume",
                        "the model, its metrics and its report were saved in OUTPUT")


def _run_torchrun(nproc: int, argv: list[str]) -> None:
    launcher.run_torchrun(nproc, argv, TRAINING)


def _failure(codes: dict[int, int]) -> Exception:
    """One exception for the training processes' exit codes (rank: code; a negative code is a signal)."""
    return launcher.failure(codes, TRAINING)
