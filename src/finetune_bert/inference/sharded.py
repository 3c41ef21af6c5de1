"""`predict --input` and `evaluate` on several processes: `--nproc-per-node N` (torchrun started for the user,
engine.launcher) or the user's own torchrun.

predict: each process scores a contiguous run of the input's chunks (the chunks one process reads: data.chunks),
so every row is scored in the batch it would be alone and the output is byte for byte one process's. Each writes
its rows to a part file beside --output; rank 0 writes --output whole from the parts, in rank order, through
one atomic rename, then removes them. Memory stays one process's: no row crosses between processes, only counts
and skipped rows do. The parts' folder must be one that every process sees (on several machines, shared storage).

evaluate: every process reads every chunk and scores every N-th of its batches; the engine gathers the logits
(torch_engine.Engine._infer_shared), so the metrics are computed from one process's numbers in its order, bit
for bit. That sharing lives in torch's engine: the ONNX backends are refused there (auto picks torch), while
predict runs one ONNX session per process, each on its share of the cores.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from finetune_bert.console import console
from finetune_bert.data.readers import Records
from finetune_bert.engine import distributed, launcher
from finetune_bert.engine.distributed import ALONE, World
from finetune_bert.errors import UserError
from finetune_bert.inference.backends import AUTO
from finetune_bert.inference.classifier import Classifier
from finetune_bert.inference.files import (OUTPUT_FORMATS, Explaining, note_unsettled, prediction_fields,
                                           predict_rows, report_skipped, row_writer)
from finetune_bert.options import command_line
from finetune_bert.ranks import launched
from finetune_bert.safefiles import atomic_output, claim_output

PREDICTION = launcher.Job("prediction", "--output was not written (it appears whole or not at all): run the same "
                          "command again", "--output was not written", "--output was written whole")
EVALUATION = launcher.Job("evaluation", "the metrics were not written: run the same command again",
                          "the metrics were not written", "the metrics were written")
# predict's processes meet once, at the end, where the first to finish waits for the last however long its share
# takes (shares of equal rows can differ in tokens): a process that dies is seen at once (its connection closes,
# and torchrun stops the others); only one that hangs is waited for this long
PREDICT_WAIT_S = 7 * 24 * 3600.0
# evaluate's processes meet at every chunk, so none waits for long
EVALUATE_WAIT_S = 600.0


def launch(cfg: Any, command: str, job: launcher.Job, *, parts_of: Path | None = None) -> None:
    """`command` with `cfg` (checked) run by `cfg.nproc_per_node` processes under torchrun on this machine;
    `parts_of`: predict's output, whose part files a killed process leaves are removed at the end."""
    distributed.check_gpus(cfg.nproc_per_node, forceable=False)
    argv = [command, *command_line(cfg, leave_out=("nproc_per_node",))]
    launcher.run_torchrun(cfg.nproc_per_node, argv, job,
                          finally_=None if parts_of is None else lambda run_id: remove_parts(parts_of, run_id))


@contextlib.contextmanager
def joined(device: torch.device, wait_s: float, job: launcher.Job) -> Iterator[World]:
    """This process in its job's process group (ALONE when not launched with several), left at the end; a lost
    process is one line saying what `job` leaves."""
    if not launched():
        yield ALONE
        return
    world = distributed.start(device, wait_s, left=f"{job.failed[0].lower()}{job.failed[1:]}")
    try:
        with distributed.talking(world):
            yield world
    finally:
        distributed.stop(world)


class Share:
    """A file's chunks for one of several processes, as `files.input_rows(share=...)` takes it: every chunk while
    the rows are checked (each process checks the whole file, so a bad row is named alike by all, rank 0 saying
    it), then, after `take`, only this process's contiguous run of them: the chunks before it are read past
    (parsed, not checked, tokenized or scored), those after it not read at all."""

    def __init__(self) -> None:
        self.chunks: Iterable[Records] = ()
        self.sizes: list[int] = []  # rows of each chunk, counted by the last whole pass
        self.run: range | None = None

    def __call__(self, chunks: Iterable[Records]) -> "Share":
        self.chunks = chunks
        return self

    def __iter__(self) -> Iterator[Records]:
        if self.run is None:
            sizes = []
            for records in self.chunks:
                sizes.append(len(records.rows))
                yield records
            self.sizes = sizes
            return
        for i, records in enumerate(self.chunks):
            if i >= self.run.stop:
                return
            if i >= self.run.start:
                yield records

    def take(self, world: World) -> int:
        """This process's run of chunks (runs differ by one chunk at most, the earlier ranks' the longer: rank 0
        shows the progress); returns the rows in it."""
        each, extra = divmod(len(self.sizes), world.size)
        start = world.rank * each + min(world.rank, extra)
        self.run = range(start, start + each + (world.rank < extra))
        return sum(self.sizes[i] for i in self.run)


def predict_share(cfg: Any, rows_of: Callable[[Share], Any], load: Callable[[], Classifier]) -> int:
    """This process's share of `predict --input` (see the module's docstring); rank 0 writes --output. `rows_of(share)`:
    the input's rows (files.input_rows); `load()`: the classifier. Returns the rows written (rank 0: all of them)."""
    out = Path(cfg.output).expanduser()
    with joined(torch.device("cpu"), PREDICT_WAIT_S, PREDICTION) as world:  # gloo: only counts travel
        share = Share()
        rows = rows_of(share)
        distributed.together(world, rows.check)
        total = share.take(world)
        clf = distributed.together(world, load)
        fields = prediction_fields(clf, rows, _explaining(cfg))
        run_id = distributed.from_main(os.environ.get("TORCHELASTIC_RUN_ID") or uuid.uuid4().hex, world)
        part = part_path(out, run_id, world.rank)
        try:
            written, unsettled = _write_part(cfg, clf, rows, part, fields, total=total, world=world)
            ends = distributed.gather_objects((written, unsettled, rows.skipped), world)
            if world.main:
                written = sum(n for n, _, _ in ends)
                merge(out, fields, [part_path(out, run_id, r) for r in range(world.size)], rows=written)
                note_unsettled(sum(u for _, u, _ in ends), written)
                report_skipped([row for _, _, skipped in ends for row in skipped], out)
            distributed.barrier(world)  # the parts are read before any process removes its own
        finally:
            part.unlink(missing_ok=True)
    return written


def _write_part(cfg: Any, clf: Classifier, rows: Any, part: Path, fields: list[str], *, total: int,
                world: World) -> tuple[int, int]:
    """This process's rows, scored into its part file; the rows written and the explanations that did not
    converge."""
    fmt = OUTPUT_FORMATS[Path(cfg.output).suffix.lower()]
    with part.open("w", encoding="utf-8", newline="") as handle:
        return predict_rows(clf, rows, row_writer(handle, fmt, fields, part=True), cfg.batch_size,
                            overlap=cfg.overlap, total=total, fmt=fmt, explain=_explaining(cfg),
                            what=f"predict, rank 0's share of {world.size} processes")


def _explaining(cfg: Any) -> Explaining | None:
    return Explaining(cfg.top_words or 10, cfg.explain_steps) if cfg.explain else None


def part_path(out: Path, run_id: str, rank: int) -> Path:
    """Where process `rank` of job `run_id` writes its rows: hidden, beside --output (the same file system, so
    that a folder the user can write holds it)."""
    return out.with_name(f".{out.name}.part-{run_id}-{rank}.tmp")


def remove_parts(out: Path, run_id: str) -> None:
    """The parts of job `run_id` left by processes killed before they could remove them."""
    for part in out.parent.glob(f".{glob.escape(out.name)}.part-{glob.escape(run_id)}-*.tmp"):
        part.unlink(missing_ok=True)


def merge(out: Path, fields: list[str], parts: list[Path], *, rows: int) -> None:
    """--output whole from the processes' parts, in rank order, through one rename: what one process writes (the
    header; a JSON array's brackets, its first row without the separator each part row starts with). Copied a
    block at a time, never held in memory."""
    if missing := [p for p in parts if not p.is_file()]:
        raise UserError(f"--output {out}: the predictions of {len(missing)} process(es) are not in {out.parent} "
                        f"(looked for {missing[0].name}): with processes on several machines, --output must be on "
                        "storage that every machine sees")
    fmt = OUTPUT_FORMATS[out.suffix.lower()]
    skip = 1 if fmt == "json" else 0
    with atomic_output(out, "wb") as handle:
        handle.write(_head(fmt, fields).encode("utf-8"))
        for part in parts:
            with part.open("rb") as piece:
                if skip and piece.read(skip):
                    skip = 0
                shutil.copyfileobj(piece, handle, 1 << 20)
        handle.write(("\n]\n" if rows else "]\n").encode("utf-8") if fmt == "json" else b"")
    claim_output(out)


def _head(fmt: str, fields: list[str]) -> str:
    if fmt in ("csv", "tsv"):
        buffer = io.StringIO(newline="")
        csv.DictWriter(buffer, fieldnames=fields, delimiter="\t" if fmt == "tsv" else ",").writeheader()
        return buffer.getvalue()
    return "[" if fmt == "json" else ""


def backend_for(backend: str, world: World) -> str:
    """evaluate's backend among several processes: the batches are shared through torch's engine, so auto is torch
    (said), and an ONNX backend was refused with the options (EvaluateConfig.problems)."""
    if world.several and backend == AUTO:
        console.note("backend torch (auto: several processes share the evaluation's batches through torch)")
        return "torch"
    return backend


@contextlib.contextmanager
def scoring(clf: Classifier, world: World) -> Iterator[None]:
    """Inside, `clf`'s torch engine shares each scoring between the processes (every N-th batch each, the logits
    gathered); outside (explanations of a few rows on rank 0 alone), it scores alone."""
    if not world.several:
        yield
        return
    clf.engine.world = world
    try:
        yield
    finally:
        clf.engine.world = ALONE
