"""The token cache on disk: folders of flat numpy files, each written once, atomically, and checked when opened.

A store is a folder named by a hash of its key (what it was made from: a data file's bytes and the options that
read it, or a tokenizer and its settings), holding raw little-endian arrays (`np.fromfile`/`np.memmap` read them
with the dtypes in meta.json) and meta.json last of all. It is written into a hidden temporary sibling, every
file fsynced, then renamed into place: a killed writer leaves only the temporary folder, which the next build of
the same key removes, never a store that is used. Opening checks that meta.json's key is the one asked for
(a foreign store is not trusted) and that every file has its recorded size and hash (the whole file up to
64 MiB; beyond, 16 blocks spread over it, so that opening ten million rows costs milliseconds, not a read of
every byte): anything else is removed and built again. One process builds a key at a time (a lock file beside
it): the others wait and then open what it wrote (torchrun's ranks, a second run started meanwhile).

Where: `--token-cache DIR`, else $FINETUNE_BERT_TOKEN_CACHE, else $XDG_CACHE_HOME/finetune-bert/tokens
(~/.cache/finetune-bert/tokens); `--token-cache off` keeps the data in memory as before, writing nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from finetune_bert.console import console
from finetune_bert.data.columns import FlatFile, Ragged
from finetune_bert.safefiles import fsync_folder

FORMAT = 1  # raise when what a store holds, or how it is read or tokenized, changes: older stores are rebuilt
ENV = "FINETUNE_BERT_TOKEN_CACHE"
OFF = "off"
META = "meta.json"
WHOLE_CHECK = 64 * 2**20  # files up to this size are hashed whole when opened
SAMPLES, SAMPLE_BYTES = 16, 64 * 2**10


class Unwritable(Exception):
    """The cache folder cannot be written (permissions, a full disk): the caller keeps the data in memory."""


def cache_root(option: str | None) -> Path | None:
    """The folder the stores live in, or None when caching is off."""
    given = option if option is not None else os.environ.get(ENV)
    if given is not None and given.strip().lower() == OFF:
        return None
    if given:
        return Path(given).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "finetune-bert" / "tokens"


def file_digest(path: Path) -> str:
    """blake2b-128 of a file's bytes, read a MiB at a time (as StoreWriter hashes what it writes)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(2**20):
            digest.update(block)
    return digest.hexdigest()


def key_name(prefix: str, key: dict[str, Any]) -> str:
    return f"{prefix}-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _sampled(path: Path, size: int) -> str:
    """A hash of a large file's size and SAMPLES blocks spread evenly over it."""
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as handle:
        for k in range(SAMPLES):
            handle.seek((size - SAMPLE_BYTES) * k // (SAMPLES - 1) if size > SAMPLE_BYTES else 0)
            digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


class Store:
    """An opened, checked store: its meta.json (`meta`) and its files, read as `flat`, `ragged` or `load`ed."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path, self.meta = path, meta

    def flat(self, name: str) -> FlatFile:
        return FlatFile(self.path / name, self.meta["files"][name]["dtype"])

    def ragged(self, name: str) -> Ragged:
        return Ragged(self.flat(name), self.flat(name + ".offsets"))

    def load(self, name: str) -> np.ndarray:
        """A whole file in memory (the small per-row ones: lengths, labels)."""
        entry = self.meta["files"][name]
        return np.fromfile(self.path / name, dtype=entry["dtype"], count=entry["items"])

    def has(self, name: str) -> bool:
        return name in self.meta["files"]


class StoreWriter:
    """A store being written: `append` arrays to its files, then `commit` (or `abort`)."""

    def __init__(self, parent: Path, name: str):
        self.parent, self.name = parent, name
        self.tmp = parent / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.files: dict[str, dict[str, Any]] = {}
        self._handles: dict[str, Any] = {}
        self._hashes: dict[str, Any] = {}
        self._ends: dict[str, int] = {}
        try:
            self.tmp.mkdir(parents=True)
        except OSError as exc:
            raise Unwritable(f"{parent}: cannot make a folder there ({exc.strerror or exc})") from None

    def append(self, name: str, values: np.ndarray) -> None:
        """Add `values` to the end of file `name` (its dtype fixed by its first append)."""
        entry = self.files.get(name)
        if entry is None:
            entry = self.files[name] = {"dtype": np.dtype(values.dtype).newbyteorder("<").str, "items": 0}
            self._handles[name] = self._open(name)
            self._hashes[name] = hashlib.blake2b(digest_size=16)
        raw = np.ascontiguousarray(values, dtype=entry["dtype"]).tobytes()
        try:
            self._handles[name].write(raw)
        except OSError as exc:
            raise Unwritable(f"{self.tmp / name}: cannot be written ({exc.strerror or exc})") from None
        self._hashes[name].update(raw)
        entry["items"] += len(values)

    def append_rows(self, name: str, rows: list[np.ndarray], dtype: Any) -> None:
        """Add rows of varying length to file `name`, and where each ends to `name`.offsets (which starts at 0)."""
        if name not in self._ends:
            self.append(name + ".offsets", np.zeros(1, dtype=np.int64))
            self._ends[name] = 0
        ends = self._ends[name] + np.cumsum(np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows)))
        self.append(name, np.concatenate(rows).astype(dtype, copy=False) if rows else np.zeros(0, dtype=dtype))
        self.append(name + ".offsets", ends)
        self._ends[name] = int(ends[-1]) if len(ends) else self._ends[name]

    def append_strings(self, name: str, strings: list[str]) -> None:
        """Add strings, UTF-8, as rows of file `name`."""
        encoded = [s.encode("utf-8", "surrogatepass") for s in strings]
        self.append_rows(name, [np.frombuffer(b, dtype=np.uint8) for b in encoded], np.uint8)

    def _open(self, name: str):
        try:
            return open(self.tmp / name, "wb")
        except OSError as exc:
            raise Unwritable(f"{self.tmp / name}: cannot be written ({exc.strerror or exc})") from None

    def commit(self, key: dict[str, Any], meta: dict[str, Any]) -> Store:
        """Sync every file, write meta.json last, and rename the folder into place."""
        final = self.parent / self.name
        try:
            for name, handle in self._handles.items():
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
                size = (self.tmp / name).stat().st_size
                self.files[name].update(bytes=size, blake2b=self._hashes[name].hexdigest(),
                                        sampled=_sampled(self.tmp / name, size) if size > WHOLE_CHECK else None)
            full = {"format": FORMAT, "key": key, "files": self.files, **meta}
            with open(self.tmp / META, "w", encoding="utf-8") as handle:
                json.dump(full, handle)
                handle.flush()
                os.fsync(handle.fileno())
            fsync_folder(self.tmp)
            os.rename(self.tmp, final)
            fsync_folder(self.parent)
        except OSError as exc:
            self.abort()
            if final.is_dir() and (found := open_store(final, key)) is not None:
                return found  # another process, unlocked, committed the same store first
            raise Unwritable(f"{final}: cannot be written ({exc.strerror or exc})") from None
        return Store(final, json.loads(json.dumps(full)))

    def abort(self) -> None:
        for handle in self._handles.values():
            handle.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _problem(path: Path, key: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """Why the store at `path` cannot be trusted (None: it can), and its meta."""
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"its {META} cannot be read ({type(exc).__name__})", {}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return "it was written in another format", {}
    if json.dumps(meta.get("key"), sort_keys=True) != json.dumps(key, sort_keys=True):
        return "it was made from other data or settings", {}
    for name, entry in meta.get("files", {}).items():
        file = path / name
        try:
            size = file.stat().st_size
        except OSError:
            return f"{name} is missing", {}
        if size != entry.get("bytes"):
            return f"{name} has {size} bytes, not {entry.get('bytes')}", {}
        if size > WHOLE_CHECK:
            same = _sampled(file, size) == entry.get("sampled")
        else:
            same = file_digest(file) == entry.get("blake2b")
        if not same:
            return f"{name} is not what was written", {}
    return None, meta


def open_store(path: Path, key: dict[str, Any]) -> Store | None:
    """The store at `path` if it holds `key` and is whole; a damaged or foreign one is removed (None)."""
    if not path.exists():
        return None
    why, meta = _problem(path, key)
    if why is None:
        return Store(path, meta)
    console.note(f"token cache {path}: {why}; it is built again")
    remove(path)
    return None


def remove(path: Path) -> None:
    """Out of the way at once (a rename), then deleted: a reader never finds a half-deleted store."""
    aside = path.parent / f".trash-{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def _building(parent: Path, name: str) -> Iterator[None]:
    """Hold the lock on building `name`; within it, temporary folders of `name` are a dead builder's."""
    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): two builders may both build; the first rename wins
        yield
        return
    try:
        parent.mkdir(parents=True, exist_ok=True)
        handle = open(parent / f".{name}.lock", "a+b")
    except OSError as exc:
        raise Unwritable(f"{parent}: cannot be written ({exc.strerror or exc})") from None
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            for stale in parent.glob(f".tmp-{name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def get_or_build(parent: Path, prefix: str, key: dict[str, Any],
                 build: Callable[[StoreWriter], dict[str, Any]]) -> tuple[Store, bool]:
    """The store of `key` under `parent`, built by `build(writer)` (which returns its meta) when there is none
    or it cannot be trusted; and whether it was built now. A build that fails leaves nothing."""
    path = parent / key_name(prefix, key)
    found = open_store(path, key)
    if found is not None:
        return found, False
    with _building(parent, path.name):
        found = open_store(path, key)  # built by the process we waited for
        if found is not None:
            return found, False
        writer = StoreWriter(parent, path.name)
        try:
            meta = build(writer)
        except BaseException:
            writer.abort()
            raise
        return writer.commit(key, meta), True
