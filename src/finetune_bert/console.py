"""The console: every line the tool says to its user goes through here, so one setting decides what is said.

Results and progress go to stdout; warnings and errors to stderr, where a pipe of results does not carry
them. A live progress bar on the terminal gets each line written above it, not through it.

Rank-aware, as accelerate's logger is: under torchrun every process meets the same lines, so rank 0 says them
for the job (`main_process_only=True`, the default); a line only one rank can know, its own error, is said
with `main_process_only=False` and names the rank.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Iterator, TextIO

from finetune_bert.ranks import follower, launched, rank


class Console:
    """What the user is told. `quiet()` keeps a stretch of work to its warnings and errors (tune's trials: one
    line each, said by tune, not a whole training report); it holds for the thread that entered it."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def is_quiet(self) -> bool:
        return bool(getattr(self._local, "quiet", 0))

    @contextlib.contextmanager
    def quiet(self, on: bool = True) -> Iterator[None]:
        """Only warnings and errors are said inside; `on=False` changes nothing (a caller's own option)."""
        self._local.quiet = getattr(self._local, "quiet", 0) + int(on)
        try:
            yield
        finally:
            self._local.quiet -= int(on)

    def say(self, message: str, *, main_process_only: bool = True, even_quiet: bool = False) -> None:
        """A line of results or progress, on stdout, unless quiet (`even_quiet`: a line about the results
        themselves, said with them however quiet, as evaluate's count of rows it did not score)."""
        if even_quiet or not self.is_quiet:
            self._write(message, sys.stdout, main_process_only)

    def note(self, message: str, *, main_process_only: bool = True) -> None:
        """Something worth knowing about the input, beside results: on stderr, so that predictions or metrics
        written to stdout stay clean."""
        if not self.is_quiet:
            self._write(f"note: {message}", sys.stderr, main_process_only)

    def warn(self, message: str, *, main_process_only: bool = True) -> None:
        """Something the user should act on or know before trusting a result; always said, on stderr."""
        self._write(f"warning: {message}", sys.stderr, main_process_only)

    def error(self, message: str, *, name_rank: bool = True) -> None:
        """The one line a failed command ends with; every rank says its own, marked with the rank (rank 0's
        unmarked: the usual case). `name_rank=False`: a line about the job as a whole (a rank that was lost)."""
        where = f"rank {rank()}: " if name_rank and launched() and rank() > 0 else ""
        self._write(f"error: {where}{message}", sys.stderr, main_process_only=False)

    def stopped(self, message: str, *, main_process_only: bool = True) -> None:
        """Why a command stopped short of an error (Ctrl-C, a signal): on stderr, always said."""
        self._write(message, sys.stderr, main_process_only)

    def _write(self, message: str, stream: TextIO, main_process_only: bool) -> None:
        if main_process_only and follower():
            return
        bars = getattr(sys.modules.get("tqdm"), "tqdm", None)
        if bars is not None and getattr(bars, "_instances", None):
            bars.write(message, file=stream)
            stream.flush()
        else:
            print(message, file=stream, flush=True)


console = Console()


class Progress:
    """Rows done of a known total, for a long pass (evaluate, predict --input): on a terminal a live bar with
    rows/s and the time left; elsewhere (a log, CI) a line every `every` seconds and one at the end. Said by rank
    0, on stderr, so results on stdout stay clean; nothing when quiet."""

    def __init__(self, total: int, what: str, *, every: float | None = None):
        self.total, self.what, self.done = total, what, 0.0
        self.started = self.last = time.monotonic()
        self.every = every if every is not None else float(os.environ.get("FINETUNE_BERT_PROGRESS_SECONDS", 10))
        self.silent = console.is_quiet or follower()
        self.bar = None
        if not self.silent and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=what, unit="rows", dynamic_ncols=True, mininterval=0.5,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} rows "
                                       "[{elapsed}<{remaining}, {rate_fmt}]")

    def update(self, rows: float) -> None:
        self.done = min(self.total, self.done + rows)
        if self.bar is not None:
            self.bar.update(rows)
        elif not self.silent and time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            self._line()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not self.silent:
            self._line()

    def _line(self) -> None:
        seconds = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / seconds
        left = f", about {(self.total - self.done) / rate:.0f} s left" if 0 < self.done < self.total else ""
        console._write(f"{self.what}: {self.done:.0f}/{self.total} rows ({self.done / max(self.total, 1):.0%}), "
                       f"{rate:.1f} rows/s, {seconds:.0f} s{left}", sys.stderr, True)
