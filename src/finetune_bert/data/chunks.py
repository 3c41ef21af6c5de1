"""A data source as validated splits a chunk of rows at a time, so memory does not grow with its size.

`data.to_split` validates a whole source at once: an error names the first bad row and says how many
more there are, and texts and integers mixed in one label column are refused. `ChunkedSplit` keeps those
messages and that precedence exactly, with two passes over the source: `check()` reads every row and keeps
only counts and first occurrences (so an error comes before any model work, and the number of usable rows
is known for seeded samples); iterating then yields each chunk's usable rows, recording skipped ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from finetune_bert.data.splits import Split
from finetune_bert.data.labels import LabelSpec
from finetune_bert.data.rows import Columns, all_skipped, bad_rows_error, check_rows, first_label_kinds, mixed_labels_error, report_bad_rows, split_columns
from finetune_bert.console import console
from finetune_bert.errors import UserError
from finetune_bert.data.readers import Records
from finetune_bert.data.skipped import SkippedRow

# Rows read, validated, tokenized and scored at a time by `evaluate` and `predict_file`. Peak memory is
# set by this, not by the data size (benchmarks/eval_memory.py: 25,000 IMDB reviews peak ~23 MiB above
# 1,000); 1024 texts still keep the tokenizer's threads busy and length-sorted batches padding little.
EVAL_CHUNK = 1024

# A split's rows that pass a further check (for evaluate: labels the model knows), and the bad rest.
RowFilter = Callable[[Split], tuple[Split, list[SkippedRow]]]


@dataclass
class _Tally:
    """What the first pass keeps of the rows: counts and first occurrences, never the rows."""

    columns: dict[str, None] = field(default_factory=dict)  # every column seen, in order of appearance
    picked: Columns | None = None                           # the columns the rows were checked against
    bad: int = 0
    first_bad: SkippedRow | None = None
    kinds: dict[type, tuple[str, Any]] = field(default_factory=dict)
    usable: int = 0
    filtered: int = 0
    first_filtered: SkippedRow | None = None
    source: str = ""


class ChunkedSplit:
    """Validated splits of `chunks` (e.g. sources.source_chunks: iterable more than once), one per chunk.

    Bad rows are reported as `to_split` reports them: with on_bad_rows="error", `check()` raises for the
    first one with the count of all; with "skip", iterating appends them to `skipped`, chunk by chunk.
    """

    def __init__(self, chunks: Iterable[Records], name: str, text_column: str | None, label_column: str | None,
                 clean: bool, need_labels: bool | None, *, on_bad_rows: str, row_filter: RowFilter | None = None,
                 judge_cleaned: bool | None = None, pair_column: str | None = None, pairs: bool = False,
                 spec: LabelSpec = LabelSpec()):
        self.chunks, self.name, self.clean, self.on_bad_rows = chunks, name, clean, on_bad_rows
        self.judged = clean if judge_cleaned is None else judge_cleaned  # see data.check_rows
        self.wanted = (text_column, label_column, need_labels)
        self.row_filter = row_filter
        self.skipped: list[SkippedRow] = []
        self.notes: list[str] = []  # how the source was read (a folder's split, files not read): for the user
        self.picked: Columns | None = None  # set by check()
        self.pairs, self.spec = (pair_column, pairs), spec  # a pair's second text looked for; how labels read

    def _pick(self, source: str, columns: Iterable[str]) -> tuple[str, str | None]:
        return split_columns(Records(source, list(columns), [], []), *self.wanted, pair_column=self.pairs[0],
                             pairs=self.pairs[1], task=self.spec.task)

    def _check(self, records: Records, picked: Columns, clean: bool):
        return check_rows(records, self.name, picked.text, picked.label, clean, not self.wanted[2],
                          judge_cleaned=self.judged, pcol=picked.pair, spec=self.spec)

    def _tally(self, picked: Columns | None) -> _Tally:
        tally = _Tally(picked=picked)
        for records in self.chunks:
            tally.source = records.source
            self.notes.extend(n for n in records.notes if n not in self.notes)
            tally.columns.update(dict.fromkeys(records.columns))
            if tally.picked is None:
                try:
                    tally.picked = self._pick(records.source, records.columns)
                except UserError:
                    tally.picked = Columns("")  # no columns to check yet; check() picks from all and re-reads
            if not tally.picked.text:
                continue
            split, bad = self._check(records, tally.picked, False)
            tally.bad += len(bad)
            tally.first_bad = tally.first_bad or (bad[0] if bad else None)
            first_label_kinds(split, tally.kinds)
            tally.usable += len(split)
            if self.row_filter is not None:
                split, bad = self.row_filter(split)
                tally.filtered += len(bad)
                tally.first_filtered = tally.first_filtered or (bad[0] if bad else None)
        return tally

    def check(self) -> int:
        """Read every row once; raise what `to_split` (then the row filter) would; print the source's notes;
        return the usable rows."""
        tally = self._tally(None)
        # Columns come from the first chunk; only JSON Lines whose later records bring other keys re-read.
        picked = self._pick(tally.source, tally.columns)
        if picked != tally.picked:
            tally = self._tally(picked)
        if len(tally.kinds) > 1 and self.wanted[2]:  # predict only copies its labels: any mix is fine
            raise mixed_labels_error(tally.source, picked.label, tally.kinds)
        if tally.first_bad is not None and self.on_bad_rows != "skip":
            raise bad_rows_error(tally.first_bad, tally.bad)
        if tally.usable == 0:  # worded as data.to_split words it
            raise UserError(f"{tally.source}: no usable rows" + all_skipped(tally.first_bad, tally.bad))
        if tally.first_filtered is not None and self.on_bad_rows != "skip":
            raise bad_rows_error(tally.first_filtered, tally.filtered)
        if tally.usable == tally.filtered:  # scoring nothing is never a result
            first = tally.first_bad or tally.first_filtered
            raise UserError(f"{tally.source}: no usable rows" + all_skipped(first, tally.bad + tally.filtered, "score"))
        self.picked = picked
        for note in self.notes:
            console.note(note)
        return tally.usable - tally.filtered

    def __iter__(self) -> Iterator[Split]:
        """Each chunk's usable rows (chunks left with none are left out); `check()` must have passed."""
        if self.picked is None:
            raise RuntimeError("ChunkedSplit: call check() before iterating")
        for records in self.chunks:
            split, bad = self._check(records, self.picked, self.clean)
            report_bad_rows(bad, self.on_bad_rows, self.skipped)
            if self.row_filter is not None:
                split, bad = self.row_filter(split)
                report_bad_rows(bad, self.on_bad_rows, self.skipped)
            if len(split):
                yield split


def chunk_rows(rows_per_chunk: int | None, batch_size: int) -> int:
    """Rows per chunk: EVAL_CHUNK, or 8 batches when batches are larger (a GPU would otherwise wait for
    each chunk's tokenization every batch or two). Memory follows this, never the size of the data."""
    return rows_per_chunk or max(EVAL_CHUNK, 8 * batch_size)


def ahead(items: Iterable[Any], work: Callable[[Any], Any], *, overlap: bool = True) -> Iterator[tuple[Any, Any]]:
    """(item, work(item)) in order, with the next item read and worked on by a worker thread while the caller
    uses this one: chunk i + 1 read and tokenized while chunk i is scored (the tokenizer and the file reader
    release the GIL as torch does, so the two overlap). At most one item waits ahead, so memory holds two
    chunks, not the file; the worker's exception is raised here, in its place; a caller that stops early (an
    error, Ctrl-C) stops the worker before returning. `overlap=False`: all in the caller's thread."""
    if not overlap:
        yield from ((item, work(item)) for item in items)
        return
    import queue
    import threading

    results: queue.Queue = queue.Queue()
    slot, stop = threading.Semaphore(1), threading.Event()  # one item in work or waiting at a time

    def run() -> None:
        try:
            for item in _while(items, slot, stop):
                results.put(("item", (item, work(item))))
            results.put(("end", None))
        except BaseException as exc:  # handed to the caller, which raises it
            results.put(("error", exc))

    worker = threading.Thread(target=run, name="finetune-bert-ahead", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = results.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            slot.release()  # the worker may start on the next item while the caller uses this one
            yield value
    finally:
        stop.set()
        slot.release()
        worker.join()


def _while(items: Iterable[Any], slot, stop) -> Iterator[Any]:
    """`items`, each read only once `slot` is free (so no chunk is read before there is room for it), until
    `stop`."""
    iterator = iter(items)
    while True:
        while not slot.acquire(timeout=0.1):
            if stop.is_set():
                return
        if stop.is_set():
            return
        try:
            item = next(iterator)
        except StopIteration:
            return
        yield item
