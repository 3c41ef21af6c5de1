"""Rows left out of a run: each kept with where it stood and why, and the list of them written beside the
output, so that nothing the user gave disappears without a record."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from finetune_bert.errors import UserError
from finetune_bert.safefiles import write_text_atomic

SKIPPED_HEADER = "split,source,row,column,reason,value"


@dataclass
class SkippedRow:
    split: str
    source: str
    where: str
    column: str
    reason: str
    value: str


def skipped_csv(skipped: list[SkippedRow]) -> str:
    """Every skipped row with its reason, as CSV: nothing the user gave disappears without a record."""
    handle = io.StringIO()
    writer = csv.writer(handle)
    writer.writerow(SKIPPED_HEADER.split(","))
    for s in skipped:
        writer.writerow([s.split, s.source, s.where, s.column, s.reason, s.value])
    return handle.getvalue()


def is_skipped_list(path: Path) -> bool:
    """Whether the file at `path` is a list of skipped rows that finetune-bert wrote (by its header)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return handle.readline().strip() == SKIPPED_HEADER
    except OSError:
        return False


def refuse_foreign_skipped_list(path: Path, option: str) -> None:
    """With --on-bad-rows skip the list goes to `path`: a file of the user's there must not be replaced."""
    if path.exists() and not is_skipped_list(path):
        raise UserError(f"{option} {path}: exists and is not a list of skipped rows finetune-bert wrote; "
                        "move it, or choose another --output")


def write_skipped(skipped: list[SkippedRow], path: Path) -> None:
    """The list of skipped rows beside an output; with none, an earlier run's list there is removed, so that
    what lies beside the output always describes the run that wrote it (a file of the user's is left alone)."""
    if skipped:
        write_text_atomic(path, skipped_csv(skipped))
        return
    if is_skipped_list(path):
        try:
            path.unlink()
        except OSError:
            pass  # gone already, or not ours to remove after all
