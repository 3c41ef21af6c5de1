"""A training file in the token cache (data.store): read, checked and written once, a chunk at a time, then
tokenized once per tokenizer and settings; a run's train, validation and an audit's folds are views of it.

The rows store is keyed by the file's bytes (a streaming hash, so a file changed in place is read again) and the
options that decide its rows (columns, cleaning, bad rows, task, label separator); it holds each usable row's text
(and second text), location, label and two hashes (data.hashing), plus the rows skipped and the notes the reading
left. It is built before any model file is opened, by data.chunks.ChunkedSplit's two passes, so a bad row stops
the run with the message and at the moment it always did. Its tokens store, inside it, is keyed by the tokenizer
(tokens.tokenizer_digest) and max length, truncation and head tokens; it is built from the stored texts (no
reparsing) the first time those settings ask for it. What a run then holds per row: a few numbers (lengths,
labels, the rows a view shows), never a text or a token list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetune_bert.console import Progress, console
from finetune_bert.data.chunks import ChunkedSplit, ahead
from finetune_bert.data.columns import CodedLabels, Ragged, SetLabels, StringColumn, TokenColumn
from finetune_bert.data.hashing import row_hashes
from finetune_bert.data.labels import LabelSpec
from finetune_bert.data.rows import Columns
from finetune_bert.data.skipped import SkippedRow
from finetune_bert.data.sources import local_file, source_chunks
from finetune_bert.data.splits import Split
from finetune_bert.data.store import Store, StoreWriter, Unwritable, cache_root, file_digest, get_or_build
from finetune_bert.data.tokens import TOKENIZE_CHUNK, Encoded, TokenSettings
from finetune_bert.tasks import MULTI_LABEL, REGRESSION

ROWS_CHUNK = 4096  # rows read, checked and written at a time
PROGRESS_ROWS = 20_000  # passes over fewer rows say nothing as they go
# The options that decide which rows a file gives and what they hold: a change reads the file again.
READING = ("text_column", "label_column", "text_pair_column", "clean", "on_bad_rows", "task", "label_separator")


class NotStorable(Exception):
    """A label the store cannot keep as it is (not text or a number, e.g. a date from Parquet)."""


@dataclass
class StoredTrain:
    """--data's rows from the store, with the rows skipped and the notes of reading it."""

    split: Split
    skipped: list[SkippedRow]
    notes: list[str]


def stored_train(cfg: Any) -> StoredTrain | None:
    """--data's usable rows as a stored split, read into the token cache first if they are not there yet. None
    where the cache is off (--token-cache off), --data is not a regular file (a folder, a hub dataset, a pipe:
    read whole, as before), or the cache cannot be written (said): the caller then reads it into memory."""
    root = cache_root(getattr(cfg, "token_cache", None))
    file = local_file(cfg.data)
    if root is None or file is None or not file.is_file():
        return None
    try:
        key = {"kind": "rows", "file": str(file.resolve()), "bytes": file.stat().st_size,
               "blake2b": file_digest(file), **{k: getattr(cfg, k) for k in READING}}
    except OSError:
        return None  # unreadable: the reader says why, in its words
    try:
        store, built = get_or_build(root, "rows", key, lambda writer: _write_rows(cfg, file, writer))
    except Unwritable as exc:
        console.warn(f"token cache: {exc}; the training data is held in memory instead (--token-cache DIR "
                     "puts the cache elsewhere)")
        return None
    except NotStorable as exc:
        console.note(f"token cache: {exc}; the training data is held in memory")
        return None
    rows = store.meta["rows"]
    console.say(f"token cache: {rows} rows of {file} {'checked and written to' if built else 'read from'} "
                f"{store.path}")
    return _view(store, file)


def _write_rows(cfg: Any, file: Path, writer: StoreWriter) -> dict[str, Any]:
    """Every usable row of `file` into `writer`, checked first as data.to_split checks it (the same errors)."""
    chunked = ChunkedSplit(source_chunks(cfg.data, "train", ROWS_CHUNK), "train", cfg.text_column, cfg.label_column,
                           cfg.clean, True, on_bad_rows=cfg.on_bad_rows, pair_column=cfg.text_pair_column,
                           pairs=True, spec=LabelSpec(cfg.task, cfg.label_separator))
    with console.quiet():  # its notes go into the data report, as an in-memory read's do
        total = chunked.check()
    labels = _LabelWriter(cfg.task)
    progress = _progress(total, f"reading {file.name} into the token cache")
    for split in chunked:
        writer.append_strings("texts", split.texts)
        writer.append_strings("where", split.where)
        if split.pairs is not None:
            writer.append_strings("pairs", split.pairs)
        for kind in ("exact", "seen"):
            writer.append(kind, row_hashes(split.texts, split.pairs, kind))
        labels.write(writer, split.labels)
        progress.update(len(split))
    progress.close()
    return {"rows": total, "columns": list(chunked.picked), "values": labels.values, "notes": chunked.notes,
            "skipped": [[s.split, s.where, s.column, s.reason, s.value] for s in chunked.skipped]}


class _LabelWriter:
    """Labels as the store keeps them: codes into the distinct values (classes, label sets' names) or numbers."""

    def __init__(self, task: str):
        self.task, self.codes = task, {}

    @property
    def values(self) -> list[Any]:
        return [value for _, value in self.codes]

    def code(self, value: Any) -> int:
        if type(value) not in (str, int, float):
            raise NotStorable(f"label {value!r} is {type(value).__name__}, not text or a number")
        return self.codes.setdefault((type(value), value), len(self.codes))

    def write(self, writer: StoreWriter, labels: list[Any]) -> None:
        if self.task == REGRESSION:
            writer.append("labels", np.asarray(labels, dtype=np.float64))
        elif self.task == MULTI_LABEL:
            rows = [np.asarray([self.code(x) for x in row], dtype=np.int32) for row in labels]
            writer.append_rows("labels", rows, np.int32)
        else:
            writer.append("labels", np.fromiter((self.code(x) for x in labels), dtype=np.int32, count=len(labels)))


def _view(store: Store, file: Path) -> StoredTrain:
    """The stored rows as a Split whose columns read the store."""
    meta, n, source = store.meta, store.meta["rows"], str(file)
    owner = RowStore(store)
    texts = StringColumn(store.ragged("texts"), n, hashes={k: store.flat(k) for k in ("exact", "seen")}, store=owner)
    pairs = StringColumn(store.ragged("pairs"), n) if store.has("pairs") else None
    values = meta["values"]
    if store.has("labels.offsets"):
        labels: Any = SetLabels(store.load("labels"), store.load("labels.offsets"), values)
    elif np.dtype(meta["files"]["labels"]["dtype"]).kind == "f":
        labels = store.load("labels")
    else:
        labels = CodedLabels(store.load("labels"), values)
    split = Split("train", source, texts, labels, StringColumn(store.ragged("where"), n), pairs,
                  Columns(*meta["columns"]))
    skipped = [SkippedRow(name, source, where, column, reason, value)
               for name, where, column, reason, value in meta["skipped"]]
    return StoredTrain(split, skipped, list(meta["notes"]))


class RowStore:
    """A rows store, and the token ids made from it: `encoded(rows, settings)` tokenizes the stored texts the
    first time those settings ask (into a tokens store inside it), and then only reads."""

    def __init__(self, store: Store):
        self.store = store
        self.name = store.path.name
        self._tokens: dict[str, tuple[Store, np.ndarray]] = {}

    def encoded(self, rows: np.ndarray | None, settings: TokenSettings) -> Encoded | None:
        """The token ids of `rows` (None: all), or None where the cache cannot be written (said)."""
        key = settings.key()
        name = repr(sorted(key.items()))
        if name not in self._tokens:
            try:
                tokens, built = get_or_build(self.store.path, "tokens", key, lambda w: self._tokenize(w, settings))
            except Unwritable as exc:
                console.warn(f"token cache: {exc}; tokenized in memory instead")
                return None
            if not built:
                console.say(f"token cache: token ids of {tokens.meta['rows']} rows read from {tokens.path}")
            self._tokens[name] = (tokens, tokens.load("lengths"))
        tokens, lengths = self._tokens[name]
        full = tokens.load("full")  # what the data report reads: the view's rows kept, the rest let go
        n = self.store.meta["rows"]
        ids = TokenColumn(tokens.ragged("ids"), n, rows, lengths)
        types = TokenColumn(Ragged(tokens.flat("types"), tokens.flat("ids.offsets")), n, rows, lengths) \
            if tokens.has("types") else None
        return Encoded(ids, full if rows is None else full[rows], None, types)

    def _tokenize(self, writer: StoreWriter, settings: TokenSettings) -> dict[str, Any]:
        n = self.store.meta["rows"]
        texts = StringColumn(self.store.ragged("texts"), n)
        pairs = StringColumn(self.store.ragged("pairs"), n) if self.store.has("pairs") else None
        blocks = ((texts[s:s + TOKENIZE_CHUNK], None if pairs is None else pairs[s:s + TOKENIZE_CHUNK])
                  for s in range(0, n, TOKENIZE_CHUNK))
        console.say(f"token cache: tokenizing {n} rows into {writer.parent}")
        progress = _progress(n, "tokenizing")
        # the next block read and tokenized by a worker thread while this one is written
        for block, encoded in ahead(blocks, lambda b: settings.encode(*b)):
            writer.append_rows("ids", encoded.ids, np.int32)
            if encoded.type_ids is not None:
                writer.append("types", np.concatenate(encoded.type_ids).astype(np.int8))
            writer.append("lengths", encoded.lengths.astype(np.int32))
            writer.append("full", encoded.full_lengths.astype(np.int32))
            progress.update(len(block[0]))
        progress.close()
        return {"rows": n}


def _progress(total: int, what: str) -> Progress:
    """A progress line for a long pass only: a small file is done before a line would tell anything."""
    with console.quiet(total < PROGRESS_ROWS):  # a quiet Progress stays silent to the end
        return Progress(total, what)
