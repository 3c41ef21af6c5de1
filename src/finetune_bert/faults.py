"""Fault injection for the crash, out-of-memory and NaN tests.

FINETUNE_BERT_FAULTS="kill@checkpoint:4,oom@forward:3" makes the run, at those places and steps:
  kill  send itself SIGKILL (a real, uncatchable kill, as from the OOM killer or a preemption)
  oom   raise the framework's own out-of-memory exception, torch.OutOfMemoryError
  nan   poison the loss with NaN (only at place `loss`)
  int / term  send itself SIGINT / SIGTERM (Ctrl-C, a scheduler's stop)
  slow  sleep one second (a server's batch in flight long enough to be caught by a SIGTERM)
A kind ending in "!" (e.g. "oom!@forward:2") fires every time, not once. A suffix "#R" (e.g. "kill@step:3#1")
keeps the fault to the process of rank R under torchrun (env RANK); without one, every rank fires it.
Places: step (after an optimizer step, between checkpoints), forward (a training forward pass), fold (the start
of an audit's fold K, counted from 0),
eval (inside an evaluation), checkpoint (mid-write), loss, batch (a server batch; its step is always 0).
Unless marked "!", each fault fires once per process. Unset, this module costs one dict lookup per call.
"""

from __future__ import annotations

import os
import signal
import time

import torch


def _parse(spec: str) -> dict[tuple[str, int], str]:
    faults = {}
    rank = os.environ.get("RANK", "0")
    for item in filter(None, (s.strip() for s in spec.split(","))):
        item, _, only = item.partition("#")
        if only and only.strip() != rank:
            continue
        kind, _, where = item.partition("@")
        place, _, step = where.partition(":")
        faults[(place, int(step))] = kind
    return faults


_PENDING = _parse(os.environ.get("FINETUNE_BERT_FAULTS", ""))


def configure(spec: str) -> None:
    """For in-process tests: replace the pending faults."""
    _PENDING.clear()
    _PENDING.update(_parse(spec))


_STEP = {"now": 0}


def at_step(step: int) -> None:
    """The training step now running, for places that cannot know it (the engine's forward, which must fire
    inside the forward, after DDP's own pre-forward work). Step 0: no step, nothing fires."""
    _STEP["now"] = step


def hit(place: str, step: int | None = None) -> bool:
    """Fire the fault planned for (place, step), if any; `step` None: the one `at_step` set. True means:
    poison this value with NaN."""
    if not _PENDING:
        return False
    step = _STEP["now"] if step is None else step
    kind = _PENDING.get((place, step))
    if kind is None:
        return False
    if not kind.endswith("!"):
        del _PENDING[(place, step)]
    kind = kind.rstrip("!")
    if kind in ("int", "term"):
        os.kill(os.getpid(), signal.SIGINT if kind == "int" else signal.SIGTERM)
    if kind == "slow":
        time.sleep(1.0)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "oom":
        raise torch.OutOfMemoryError(f"injected out-of-memory at {place} step {step}")
    return kind == "nan"
