"""The console: every line the tool says to its user goes through here."""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Iterator


_QUIET = threading.local()


_SILENT = {"on": False}


def silence() -> None:
    """Nothing is said by this process from now on: a torchrun process of rank > 0, whose every line rank 0
    already says (errors of its own are still printed, by the CLI)."""
    _SILENT["on"] = True


def say(message: str) -> None:
    """A line for the user: warnings on stderr, always; the rest on stdout, unless inside `quietly()`."""
    warning = message.startswith("warning")
    if _SILENT["on"]:
        return
    if warning or not getattr(_QUIET, "depth", 0):
        from tqdm import tqdm

        stream = sys.stderr if warning else sys.stdout
        if getattr(tqdm, "_instances", None):  # a live bar on the terminal: written above it, not through it
            tqdm.write(message, file=stream)
            stream.flush()
        else:
            print(message, file=stream, flush=True)


def is_quiet() -> bool:
    return bool(getattr(_QUIET, "depth", 0)) or _SILENT["on"]


@contextlib.contextmanager
def quietly() -> Iterator[None]:
    """Only warnings are said (tune's trials: one line each, said by tune, not a whole training report)."""
    _QUIET.depth = getattr(_QUIET, "depth", 0) + 1
    try:
        yield
    finally:
        _QUIET.depth -= 1
