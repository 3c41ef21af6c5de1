"""The columns of a stored split (data.store): sequences that read their rows from files as they are asked for.

A `Ragged` column is rows of varying length in one flat file (token ids, token type ids, UTF-8 texts), found
through an offsets file; `TokenColumn` and `StringColumn` give its rows as int arrays or as strings. `rows` says
which of the file's rows a column shows, in which order (None: all of them), so that a subset (train without its
validation rows, an audit's fold) is an index array, never a copy of the data. Labels are small and kept in
memory as codes into their distinct values (`CodedLabels`, `SetLabels`).

Rows are read with positional reads, not through a memory map: a mapped file's pages count in the process's
resident memory once touched, and an epoch touches every row, so a mapped cache would grow a run's RSS to the
size of its data. Read this way the data stays in the page cache, shared and reclaimable, and the process holds
only what it asked for.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from finetune_bert.errors import UserError

_BLOCK = 1024  # rows read at once when a whole column is iterated in order


class Damaged(UserError):
    """A store's file went missing or shorter than its index says while a run read it (the next run checks the
    store and builds it again)."""


class FlatFile:
    """A file of fixed-size items, read a stretch at a time at item offsets; opened at first use."""

    def __init__(self, path: Path, dtype: Any):
        self.path, self.dtype = Path(path), np.dtype(dtype)
        self._fd: int | None = None

    def __getstate__(self) -> dict:  # a copy in another process opens the file again
        return {**self.__dict__, "_fd": None}

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty(max(stop - start, 0), dtype=self.dtype)
        if not len(out):
            return out
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except OSError as exc:
                raise Damaged(f"{self.path}: the token cache changed while it was read ({exc.strerror or exc}); "
                              "run again: it is checked and built again") from None
        offset, want = start * self.dtype.itemsize, out.nbytes
        if hasattr(os, "preadv"):
            got = os.preadv(self._fd, [memoryview(out).cast("B")], offset)
        else:  # no positional reads (Windows): a read of its own
            found = np.fromfile(self.path, dtype=self.dtype, count=len(out), offset=offset)
            got = found.nbytes
            out[:len(found)] = found
        if got != want:
            raise Damaged(f"{self.path}: the token cache changed while it was read ({got} bytes where {want} were "
                          f"expected at byte {offset}); run again: it is checked and built again")
        return out


class Ragged:
    """Rows of varying length: row i is data[offsets[i]:offsets[i + 1]]."""

    def __init__(self, data: FlatFile, offsets: FlatFile):
        self.data, self.offsets = data, offsets

    def row(self, i: int) -> np.ndarray:
        start, stop = self.offsets.read(i, i + 2)
        return self.data.read(int(start), int(stop))

    def block(self, start: int, stop: int) -> list[np.ndarray]:
        """Rows start..stop-1 in one read."""
        bounds = self.offsets.read(start, stop + 1)
        flat = self.data.read(int(bounds[0]), int(bounds[-1]))
        cuts = bounds - bounds[0]
        return [flat[cuts[k]:cuts[k + 1]] for k in range(len(cuts) - 1)]


class _Column(Sequence):
    """A Ragged column's rows, `rows` of them in that order (None: all `size`)."""

    def __init__(self, ragged: Ragged, size: int, rows: np.ndarray | None = None):
        self.ragged, self.size, self.rows = ragged, size, rows

    def __len__(self) -> int:
        return self.size if self.rows is None else len(self.rows)

    def _at(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} of {n}")
        i = i + n if i < 0 else i
        return i if self.rows is None else int(self.rows[i])

    def _decode(self, raw: np.ndarray) -> Any:
        return raw

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if self.rows is None and step == 1:  # a stretch of the file: one read
                return [self._decode(raw) for raw in self.ragged.block(start, max(start, stop))]
            return [self[k] for k in range(start, stop, step)]
        return self._decode(self.ragged.row(self._at(int(i))))

    def __iter__(self) -> Iterator[Any]:
        if self.rows is not None:
            yield from (self._decode(self.ragged.row(int(r))) for r in self.rows)
            return
        for start in range(0, self.size, _BLOCK):
            yield from (self._decode(raw) for raw in self.ragged.block(start, min(start + _BLOCK, self.size)))

    def take(self, index) -> _Column:
        """The rows at `index` (positions in this column), as a column of the same file."""
        index = np.asarray(index, dtype=np.int64)
        return self.with_rows(index if self.rows is None else self.rows[index])

    def with_rows(self, rows: np.ndarray | None) -> _Column:
        """This column showing `rows` of its file (kept as int32 where the file has fewer than 2**31 rows)."""
        shown = copy.copy(self)
        shown.rows = None if rows is None else np.asarray(rows, dtype=np.int32 if self.size < 2**31 else np.int64)
        return shown

    def __eq__(self, other) -> bool:  # as a list compares: item by item (this reads every row)
        return isinstance(other, Sequence) and not isinstance(other, str) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other) -> list:  # as a list's `+`: a list (distill joins its unlabelled texts so)
        return list(self) + list(other)

    def __radd__(self, other) -> list:
        return list(other) + list(self)


class TokenColumn(_Column):
    """Each row's token ids (or token type ids) as an int array; `lengths` of the rows it shows."""

    def __init__(self, ragged: Ragged, size: int, rows: np.ndarray | None = None, lengths: np.ndarray | None = None):
        super().__init__(ragged, size, rows)
        self.all_lengths = lengths

    @property
    def lengths(self) -> np.ndarray:
        return self.all_lengths if self.rows is None else self.all_lengths[self.rows]

    def lengths_at(self, index) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        return self.all_lengths[index if self.rows is None else self.rows[index]].astype(np.int64)


class StringColumn(_Column):
    """Each row as a string (the store keeps them UTF-8). `hashes`: the store's files of per-row hashes of the
    same rows, by kind (data.hashing), read for deduplication and the data report without reading a text;
    `store`: the stored split the column belongs to (data.stored.RowStore), which also holds its tokens."""

    def __init__(self, ragged: Ragged, size: int, rows: np.ndarray | None = None, *, hashes: dict | None = None,
                 store: Any = None):
        super().__init__(ragged, size, rows)
        self.hash_files, self.store = hashes or {}, store

    def _decode(self, raw: np.ndarray) -> str:
        return raw.tobytes().decode("utf-8", "surrogatepass")

    def hashes(self, kind: str) -> np.ndarray | None:
        """This column's rows' `kind` hashes (data.hashing), read from the store; None where it keeps none."""
        found = self.hash_files.get(kind)
        if found is None:
            return None
        every = found.read(0, self.size)
        return every if self.rows is None else every[self.rows]


class CodedLabels(Sequence):
    """One label per row as a code into `values` (its distinct values): memory for a number per row, not an
    object. `map(f)` renames values (--fold-labels), merging those that become equal."""

    def __init__(self, codes: np.ndarray, values: list[Any]):
        self.codes, self.values = codes, values

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.values[c] for c in self.codes[i]]
        return self.values[self.codes[i]]

    def __iter__(self) -> Iterator[Any]:
        values = self.values
        for start in range(0, len(self.codes), 65536):
            yield from (values[c] for c in self.codes[start:start + 65536].tolist())

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and not isinstance(other, str) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def take(self, index) -> CodedLabels:
        return CodedLabels(self.codes[np.asarray(index, dtype=np.int64)], self.values)

    def map(self, rename) -> CodedLabels:
        renamed = [rename(v) for v in self.values]
        distinct = list(dict.fromkeys(renamed))
        where = {v: k for k, v in enumerate(distinct)}
        lookup = np.asarray([where[v] for v in renamed], dtype=self.codes.dtype)
        return CodedLabels(lookup[self.codes] if len(lookup) else self.codes, distinct)


class SetLabels(Sequence):
    """A set of labels per row (multi-label): row i's labels are values[codes[offsets[i]:offsets[i + 1]]], in
    the order the row gave them, as a tuple; `rows` as for a column."""

    def __init__(self, codes: np.ndarray, offsets: np.ndarray, values: list[Any], rows: np.ndarray | None = None):
        self.codes, self.offsets, self.values, self.rows = codes, offsets, values, rows

    def __len__(self) -> int:
        return len(self.offsets) - 1 if self.rows is None else len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        r = int(i) if self.rows is None else int(self.rows[i])
        return tuple(self.values[c] for c in self.codes[self.offsets[r]:self.offsets[r + 1]])

    def __iter__(self) -> Iterator[tuple]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and not isinstance(other, str) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def take(self, index) -> SetLabels:
        index = np.asarray(index, dtype=np.int64)
        return SetLabels(self.codes, self.offsets, self.values, index if self.rows is None else self.rows[index])

    def map(self, rename) -> SetLabels:
        renamed = [rename(v) for v in self.values]
        distinct = list(dict.fromkeys(renamed))
        where = {v: k for k, v in enumerate(distinct)}
        lookup = np.asarray([where[v] for v in renamed], dtype=self.codes.dtype)
        # a row that held two spellings of one label now holds it twice: kept once, as label_set keeps it
        rows = [tuple(dict.fromkeys(distinct[c] for c in lookup[self.codes[s:e]])) for s, e in
                zip(self.offsets[:-1], self.offsets[1:])]
        codes = np.asarray([where[v] for row in rows for v in row], dtype=self.codes.dtype)
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=offsets[1:])
        return SetLabels(codes, offsets, distinct, self.rows)


def take(values, index):
    """`values` at `index`: a column's own `take` (a view of the same file or codes), else a list."""
    if hasattr(values, "take"):
        return values.take(np.asarray(index, dtype=np.int64))
    return [values[i] for i in index]


def identity(values) -> bytes | None:
    """Bytes that name a stored column's rows exactly without reading them (its store, whose name is a hash of
    the data's bytes and reading options, and the rows it shows), or a label column's codes and values; None
    for a list in memory, which must be read to be named."""
    if isinstance(values, _Column) and getattr(values, "store", None) is not None:
        rows = b"all" if values.rows is None else values.rows.astype(np.int64).tobytes()
        return values.store.name.encode() + b"\0" + rows
    if isinstance(values, CodedLabels):
        return values.codes.astype(np.int64).tobytes() + repr(values.values).encode()
    if isinstance(values, SetLabels):
        rows = b"all" if values.rows is None else values.rows.astype(np.int64).tobytes()
        return values.codes.tobytes() + values.offsets.tobytes() + rows + repr(values.values).encode()
    if isinstance(values, np.ndarray):
        return values.tobytes()
    return None
