"""Read a user's file into records, remembering where each record stood in the file.

Every record keeps a location ("line 17", "record 3", "train/pos/0_9.txt") so that any later problem
can be reported at the place the user sees it. Line numbers are 1-based with the header counted.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_bert.errors import UserError

TABULAR = (".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".parquet", ".txt")
SUPPORTED = ", ".join(TABULAR) + " (each optionally .gz), or an aclImdb-style folder"


@dataclass
class Records:
    """Rows of one file: a list of column -> value dicts with a location for each row."""

    source: str
    columns: list[str]
    rows: list[dict[str, Any]]
    where: list[str]


def file_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext not in TABULAR:
        raise UserError(f"{path}: unsupported file type '{ext or path.name}'; supported: {SUPPORTED}")
    return ext


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder without train/ or test/ subfolders") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if path.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise UserError(f"{path}: not a valid gzip file ({exc})") from None
    return raw


def _decode(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        bad = raw[exc.start : exc.start + 4]
        raise UserError(f"{path}: line {line}: bytes {bad!r} are not valid UTF-8 "
                        "(save the file as UTF-8)") from None
    return text.removeprefix("\ufeff")


def read_records(path: Path) -> Records:
    """Read one data file of any supported format."""
    ext = file_format(path)
    if ext == ".parquet":
        return _read_parquet(path)
    text = _decode(path, _read_bytes(path))
    if not text.strip():
        raise UserError(f"{path}: file is empty")
    reader = {".csv": _read_delimited, ".tsv": _read_delimited, ".json": _read_json,
              ".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".txt": _read_lines}[ext]
    records = reader(path, text, ext)
    if not records.rows:
        raise UserError(f"{path}: has a header but no rows")
    return records


def _read_delimited(path: Path, text: str, ext: str) -> Records:
    delimiter = "\t" if ext == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows, where = [], []
    try:
        header = next(reader)
        columns = [c.strip() for c in header]
        start = reader.line_num + 1
        for values in reader:
            if not any(v.strip() for v in values):
                start = reader.line_num + 1
                continue  # blank line between records
            if len(values) != len(columns):
                raise UserError(f"{path}: line {start}: {len(values)} fields where the header has "
                                f"{len(columns)} (check for an unquoted '{delimiter}' or a stray quote)")
            rows.append(dict(zip(columns, values)))
            where.append(f"line {start}")
            start = reader.line_num + 1
    except csv.Error as exc:
        raise UserError(f"{path}: line {start}: malformed {ext[1:].upper()} ({exc}); "
                        "an opening quote is probably never closed") from None
    return Records(str(path), columns, rows, where)


def _read_json(path: Path, text: str, ext: str) -> Records:
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: line {exc.lineno}: malformed JSON ({exc.msg})") from None
    if isinstance(payload, dict):
        lists = {k: v for k, v in payload.items() if isinstance(v, list)}
        if lists and all(len(v) == len(next(iter(lists.values()))) for v in lists.values()) and len(lists) > 1:
            keys = list(lists)  # column-oriented: {"text": [...], "label": [...]}
            payload = [dict(zip(keys, values)) for values in zip(*lists.values())]
        elif len(lists) == 1:
            payload = next(iter(lists.values()))  # {"data": [...]}
    if not isinstance(payload, list):
        raise UserError(f"{path}: JSON must be a list of records, e.g. [{{\"text\": ..., \"label\": ...}}]")
    return _from_dicts(path, payload, [f"record {i + 1}" for i in range(len(payload))])


def _read_jsonl(path: Path, text: str, ext: str) -> Records:
    payload, where = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            payload.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {number}: malformed JSON ({exc.msg})") from None
        where.append(f"line {number}")
    return _from_dicts(path, payload, where)


def _from_dicts(path: Path, payload: list, where: list[str]) -> Records:
    columns: dict[str, None] = {}
    for item, loc in zip(payload, where):
        if not isinstance(item, dict):
            raise UserError(f"{path}: {loc}: expected an object like {{\"text\": ..., \"label\": ...}}, "
                            f"got {type(item).__name__}")
        columns.update(dict.fromkeys(item))
    return Records(str(path), list(columns), payload, where)


def _read_lines(path: Path, text: str, ext: str) -> Records:
    """Plain text: one text per line, no labels (for predict)."""
    rows, where = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            rows.append({"text": line})
            where.append(f"line {number}")
    return Records(str(path), ["text"], rows, where)


def _read_parquet(path: Path) -> Records:
    import pyarrow.parquet as pq

    if not path.exists():
        raise UserError(f"{path}: file not found")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise UserError(f"{path}: not a readable Parquet file ({exc})") from None
    if table.num_rows == 0:
        raise UserError(f"{path}: has columns but no rows")
    rows = table.to_pylist()
    return Records(str(path), table.column_names, rows, [f"row {i + 1}" for i in range(len(rows))])


_NUMBERED = re.compile(r"(\d+)")


def _natural_key(path: Path) -> list:
    return [int(p) if p.isdigit() else p for p in _NUMBERED.split(path.name)]


FOLDER_LABELS = {"pos": "positive", "neg": "negative"}


def read_folder_split(root: Path, split: str) -> Records | None:
    """aclImdb layout: ROOT/SPLIT/<class>/*.txt. pos/neg become positive/negative; unsup is ignored."""
    base = root / split
    if not base.is_dir():
        return None
    rows, where = [], []
    for class_dir in sorted(p for p in base.iterdir() if p.is_dir() and p.name != "unsup"):
        label = FOLDER_LABELS.get(class_dir.name, class_dir.name)
        for file in sorted(class_dir.glob("*.txt"), key=_natural_key):
            rows.append({"text": _decode(file, file.read_bytes()), "label": label})
            where.append(str(file.relative_to(root)))
    if not rows:
        raise UserError(f"{base}: no <class>/*.txt files found")
    return Records(str(root), ["text", "label"], rows, where)


def read_source(spec: str, split: str) -> tuple[Records | None, dict[str, Records], list[str] | None]:
    """Resolve a data spec. Returns (records for the split asked, other splits it brings, label names)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        found = {s: r for s in ("train", "test", "validation") if (r := read_folder_split(path, s))}
        if not found:
            raise UserError(f"{path}: folder has no train/ or test/ subfolder with <class>/*.txt files")
        return found.get(split) or found.get("train") or found["test"], found, None
    if path.suffix or path.exists() or "/" not in spec and "." in spec:
        return read_records(path), {}, None
    return _read_hub(spec, split)


def _read_hub(name: str, split: str) -> tuple[Records, dict[str, Records], list[str] | None]:
    import datasets

    try:
        loaded = datasets.load_dataset(name)
    except Exception as exc:  # the hub raises many types: connection, not found, offline mode
        raise UserError(f"'{name}' is not a local file or folder, and the Hugging Face dataset '{name}' could "
                        f"not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}). Offline, pass a "
                        "local file or an aclImdb-style folder") from None
    found, label_names = {}, None
    for split_name, ds in loaded.items():
        columns = list(ds.column_names)
        for feature in ds.features.values():
            if getattr(feature, "names", None):
                label_names = list(feature.names)
        rows = ds.to_list()
        found[split_name] = Records(f"{name}[{split_name}]", columns, rows,
                                    [f"row {i + 1}" for i in range(len(rows))])
    found = {k: v for k, v in found.items() if k in ("train", "test", "validation")}
    if "train" not in found:
        raise UserError(f"hub dataset '{name}' has no train split (it has {', '.join(loaded)})")
    return found.get(split, found["train"]), found, label_names
