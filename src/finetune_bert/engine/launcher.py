"""`COMMAND --nproc-per-node N` (train, predict, evaluate): torchrun started for the user, in this process.

This is not a launcher of our own: it is torchrun's own entry point (torch.distributed.run) given
`--standalone --nproc-per-node N -m finetune_bert COMMAND ...`. What it adds is what a user of one command
expects: CPU threads shared between the processes instead of torchrun's one each, and the end said in one line
with one exit code, instead of torchrun's report of each process's failure: 130 when stopped by a signal, 2
when a process refused the input (it said why), 1 when one died. Each command says what its failure leaves
behind and what to do (`Job`); the command checks its input before it calls `run_torchrun`.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from typing import Callable

from finetune_bert.errors import Reported, TrainingFailed, TrainingInterrupted


@dataclass(frozen=True)
class Job:
    """How a command's job ends in words: `what` stopped ("training"), what is left and what to do after a
    process failed (`failed`), after a signal stopped them all (`stopped`), and after a process failed once
    rank 0 had finished (`done`): rank 0 ends well only after the last collective and its own writing, so the
    job's results are whole then, and saying they were not would send the user to redo finished work."""

    what: str
    failed: str
    stopped: str
    done: str


def run_torchrun(nproc: int, argv: list[str], job: Job, *, finally_: Callable[[str], None] | None = None) -> None:
    """`torchrun --standalone --nproc-per-node nproc -m finetune_bert ARGV`, here; a failure becomes one exception
    (see `failure`). `finally_(run_id)`: called at the end however it ended, with the job's run id (each process's
    TORCHELASTIC_RUN_ID), so that files named by it can be removed when a process was killed before it could."""
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
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "finetune_bert", *argv])
    try:
        run(args)  # --standalone: run() draws the run id into args.rdzv_id
    except SignalException as exc:  # torchrun passed the signal on to every process
        raise TrainingInterrupted(f"stopped by {signal.Signals(exc.sigval).name}: {job.stopped}") from None
    except ChildFailedError as exc:
        raise failure({rank: f.exitcode for rank, f in exc.failures.items()}, job) from None
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
        if finally_ is not None and args.rdzv_id:
            finally_(str(args.rdzv_id))


def failure(codes: dict[int, int], job: Job) -> Exception:
    """One exception for the processes' exit codes (rank: code; a negative code is a signal)."""
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
    if codes.get(0) == 0:
        return TrainingFailed(f"{job.what}: {what} after rank 0 had finished; {job.done}")
    return TrainingFailed(f"{job.what} stopped: {what}; the other processes stopped with it. {job.failed}")


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
