"""`train --nproc-per-node N`: torchrun started for the user, in this process, on this machine.

This is not a launcher of our own: it is torchrun's own entry point (torch.distributed.run) given
`--standalone --nproc-per-node N -m finetune_bert train --config FILE`, the FILE holding the checked options.
What it adds is what a user of one command expects: every problem of theirs (options, output folder, data,
model) found here, in one process, before N processes start; CPU threads shared between the processes
instead of torchrun's one each; and the end said in one line with one exit code, instead of torchrun's
report of each process's failure: 130 when stopped by a signal (all ranks saved the same step), 2 when a
process refused the input (it said why), 1 when one died.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

from finetune_bert.engine import distributed
from finetune_bert.training.config import TrainConfig
from finetune_bert.errors import Reported, TrainingFailed, TrainingInterrupted
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


def _run_torchrun(nproc: int, argv: list[str]) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun gives each process one CPU thread when OMP_NUM_THREADS is unset; a share of the cores is
    # what one process per CPU share needs (CPU-only jobs) and costs nothing beside a GPU
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # torchrun's per-process failure report is replaced by one line (each of its modules has its own logger)
    quiet = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
             if name.startswith("torch.distributed")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.CRITICAL)
    try:
        run(parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "finetune_bert", *argv]))
    except SignalException as exc:  # torchrun passed the signal on; every rank saved the same step
        raise TrainingInterrupted(f"stopped by {signal.Signals(exc.sigval).name}: all processes stopped at the "
                                  "same step, after its checkpoint (see above). Resume with the same command and "
                                  "--resume") from None
    except ChildFailedError as exc:
        raise _failure({rank: f.exitcode for rank, f in exc.failures.items()}) from None
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)


def _failure(codes: dict[int, int]) -> Exception:
    """One exception for the training processes' exit codes (rank: code; a negative code is a signal)."""
    # a rank stopped by a signal exits 130 after the shared checkpoint; torchrun may SIGTERM the slower ones
    # while they exit the same way
    if 130 in codes.values() and all(code in (0, 130, -signal.SIGTERM) for code in codes.values()):
        return Reported(130)
    if any(code == 2 for code in codes.values()):
        return Reported(2)
    # torchrun stops the others with SIGTERM once one has failed: the first failure is what to report
    first = {r: c for r, c in codes.items() if c not in (0, 1, -signal.SIGTERM)} or codes
    dead = [f"rank {rank} {_how(code)}" for rank, code in sorted(first.items()) if code not in (0, 1)]
    said = [rank for rank, code in codes.items() if code == 1]
    what = ", ".join(dead) if dead else f"rank {', '.join(map(str, sorted(said)))} failed (see above)"
    return TrainingFailed(f"training stopped: {what}; the other processes stopped with it. Every checkpoint in "
                          "OUTPUT/checkpoints is complete or absent: rerun the same command with --resume")


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
