"""Read a user's file into records, remembering where each record stood in the file (folders and hub
datasets: sources.py).

Every record keeps a location ("line 17", "record 3", "train/pos/0_9.txt") so that any later problem
can be reported at the place the user sees it. Line numbers are 1-based with the header counted.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from finetune_bert.errors import UserError

TABULAR = (".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".parquet", ".txt")
SUPPORTED = ", ".join(TABULAR) + " (each optionally .gz), or an aclImdb-style folder"
WHOLE = sys.maxsize  # rows per chunk when a reader is to return the whole file as one chunk
GZIP_ERRORS = (OSError, EOFError, zlib.error)  # bad header or CRC, truncated, corrupt deflate data
# Lines split as an editor splits them: csv keeps line ends ('') to count quoted multi-line fields; the others
# split on \r, \n, \r\n (None) only, not on U+2028, form feed etc. as splitlines() does: JSON strings hold those.
_NEWLINE = {".csv": "", ".tsv": ""}
T = TypeVar("T")

try:  # long documents are real data: lift csv's cap of 131,072 characters on one field
    csv.field_size_limit(sys.maxsize)
except OverflowError:  # the cap is a C long, 32-bit on some platforms (Windows)
    csv.field_size_limit(2**31 - 1)


@dataclass
class Records:
    """Rows of one file: a list of column -> value dicts with a location for each row."""

    source: str
    columns: list[str]
    rows: list[dict[str, Any]]
    where: list[str]
    notes: list[str] = field(default_factory=list)  # what the user should know about how it was read


def file_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext not in TABULAR:
        raise UserError(f"{path}: unsupported file type '{ext or path.name}'; supported: {SUPPORTED}")
    return ext


def _unreadable(path: Path, exc: OSError) -> UserError:
    if isinstance(exc, FileNotFoundError):
        return UserError(f"{path}: file not found")
    if isinstance(exc, IsADirectoryError):
        return UserError(f"{path}: is a folder without train/ or test/ subfolders")
    return UserError(f"{path}: cannot be read ({exc.strerror or exc})")


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc) from None
    if path.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except GZIP_ERRORS as exc:
            raise UserError(f"{path}: not a valid gzip file ({exc})") from None
    return raw


# What the first bytes of a file that is not UTF-8 text often are: said, so the user knows what to do.
_SIGNATURES = ((b"\xff\xfe", "it starts with a UTF-16 byte-order mark: save it as UTF-8"),
               (b"\xfe\xff", "it starts with a UTF-16 byte-order mark: save it as UTF-8"),
               (b"\x1f\x8b", "it is gzip-compressed: add .gz to its name"),
               (b"PK\x03\x04", "it is a zip archive, as an .xlsx workbook is: export it as CSV"),
               (b"PAR1", "it is a Parquet file: name it .parquet"))


def _not_utf8(path: Path, line: int, bad: bytes, head: bytes = b"") -> UserError:
    """`head`: the file's first bytes, which may say what the file really is."""
    hint = next((what for magic, what in _SIGNATURES if head.startswith(magic)), "save the file as UTF-8")
    return UserError(f"{path}: line {line}: bytes {bad!r} are not valid UTF-8 ({hint})")


def _has_nul(path: Path, line: int) -> UserError:
    # NUL is valid UTF-8, but in a text file it means UTF-16 without a BOM (or not text): every name is garbled.
    return UserError(f"{path}: line {line}: has NUL bytes; is it UTF-16 or not text? (save the file as UTF-8)")


def _decode(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, raw[: exc.start].count(b"\n") + 1, raw[exc.start : exc.start + 4], raw[:4]) from None
    if "\0" in text:
        raise _has_nul(path, text[: text.index("\0")].count("\n") + 1)
    return text.removeprefix("\ufeff")


def read_records(path: Path) -> Records:
    """Read one data file of any supported format."""
    ext = file_format(path)
    if ext == ".parquet":
        return next(_parquet_chunks(path, WHOLE))
    text = _decode(path, _read_bytes(path))
    if not text.strip():
        raise UserError(f"{path}: file is empty")
    if ext == ".json":
        records = _read_json(path, text, ext)
    else:
        records = next(_CHUNKERS[ext](path, io.StringIO(text, newline=_NEWLINE.get(ext)), ext, WHOLE),
                       Records(str(path), [], [], []))
    if not records.rows:
        raise UserError(f"{path}: has no records" if ext == ".json" else f"{path}: has a header but no rows")
    return records


def _delimiter(lines: Iterator[str], ext: str) -> tuple[str, str, Iterator[str]]:
    """(delimiter, hint for a failed row, all the lines). Judged from the header line alone: cheap, the same for
    every chunk. The extension's delimiter wins if there; else the only one there (Excel saves a ';'-delimited
    .csv where ',' is the decimal mark). Others in the header (outside quotes, not a trailing tab) go in the hint."""
    header, lines = _first_line(lines)
    default, unquoted = "\t" if ext == ".tsv" else ",", "".join(header.strip().split('"')[::2])
    found = [d for d in ",\t;|" if d in unquoted]
    if default not in found and len(found) == 1:
        return found[0], "", lines
    others = [d for d in found if d != default]
    return default, f"; the header looks {' or '.join(map(repr, others))}-delimited" if others else "", lines


def _unique(where: str, columns: list[str]) -> list[str]:
    """The columns; a name twice would silently keep only one column's values per row."""
    for number, name in enumerate(columns, start=1):
        if name and name in columns[: number - 1]:
            raise UserError(f"{where}: column name '{name}' appears twice (columns {columns.index(name) + 1} and "
                            f"{number}); rename one")
    return columns


def _delimited_chunks(path: Path, lines: Iterable[str], ext: str, size: int) -> Iterator[Records]:
    """CSV/TSV rows, `size` at a time. `lines` are split the way a newline='' text stream splits them, so
    that csv counts lines (and quoted multi-line fields) as the user's editor does."""
    delimiter, hint, lines = _delimiter(iter(lines), ext)
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    rows, where, start = [], [], 1
    try:
        header = next((values for values in reader if any(v.strip() for v in values)), None)
        if header is None:
            return
        columns = _unique(f"{path}: line {reader.line_num}", [c.strip() for c in header])
        start = reader.line_num + 1
        for values in reader:
            # A blank line between records; a row of empty fields (',' or '"  "') is a row, judged as one.
            if not values or (len(values) == 1 < len(columns) and not values[0].strip()):
                start = reader.line_num + 1
                continue
            if len(values) != len(columns):
                raise UserError(f"{path}: line {start}: {len(values)} fields where the header has "
                                f"{len(columns)} (check for an unquoted {delimiter!r} or a stray quote){hint}")
            rows.append(dict(zip(columns, values)))
            where.append(f"line {start}")
            start = reader.line_num + 1
            if len(rows) == size:
                yield Records(str(path), columns, rows, where)
                rows, where = [], []
    except csv.Error as exc:
        cause = ('a quote inside a quoted field must be doubled ("")' if "expected after" in str(exc)
                 else "an opening quote is probably never closed")
        raise UserError(f"{path}: line {start}: malformed {ext[1:].upper()} ({exc}); {cause}{hint}") from None
    if rows:
        yield Records(str(path), columns, rows, where)


def _read_json(path: Path, text: str, ext: str) -> Records:
    try:
        payload = json.loads(text, object_pairs_hook=_JsonObject.of)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: line {exc.lineno}: malformed JSON ({exc.msg})") from None
    if isinstance(payload, dict):
        if payload.twice is not None:
            raise UserError(f"{path}: key {payload.twice!r} appears twice in the top-level object, and only one of "
                            "its values would be read; rename or remove one")
        lists = {k: v for k, v in payload.items() if isinstance(v, list)}
        scalars = [k for k, v in payload.items() if not isinstance(v, (list, dict))]
        if len(lists) == 1 and scalars and not all(isinstance(x, dict) for x in next(iter(lists.values()))):
            raise UserError(f"{path}: column {scalars[0]!r} is a single value, not a list like column "
                            f"{next(iter(lists))!r}; each column needs one value per record")
        if len(lists) == 1:
            payload = next(iter(lists.values()))  # {"data": [...]}
        elif lists and len({len(v) for v in lists.values()}) == 1:  # columns: {"text": [...], "label": [...]}
            payload = [dict(zip(lists, values)) for values in zip(*lists.values())]
        elif lists:  # zip would silently drop the longer columns' tail
            sizes = ", ".join(f"{k!r} {len(v)}" for k, v in lists.items())
            raise UserError(f"{path}: the columns have different lengths ({sizes}); each needs one value per record")
    if not isinstance(payload, list):
        raise UserError(f"{path}: JSON must be a list of records, e.g. [{{\"text\": ..., \"label\": ...}}]")
    return _from_dicts(path, payload, [f"record {i + 1}" for i in range(len(payload))])


def _jsonl_chunks(path: Path, lines: Iterable[str], ext: str, size: int) -> Iterator[Records]:
    """JSON Lines, `size` records at a time; `lines` as str.splitlines() splits the text."""
    payload, where = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            payload.append(json.loads(line, object_pairs_hook=_JsonObject.of))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {number}: malformed JSON ({exc.msg})") from None
        where.append(f"line {number}")
        if len(payload) == size:
            yield _from_dicts(path, payload, where)
            payload, where = [], []
    if payload:
        yield _from_dicts(path, payload, where)


class _JsonObject(dict):
    """A JSON object that remembers a key it had twice: json.loads would silently keep the last value."""

    twice: str | None = None

    @classmethod
    def of(cls, pairs: list[tuple[str, Any]]) -> "_JsonObject":
        obj = cls(pairs)
        if len(obj) < len(pairs):
            seen: set[str] = set()
            obj.twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        return obj


def _from_dicts(path: Path, payload: list, where: list[str]) -> Records:
    columns: dict[str, None] = {}
    for item, loc in zip(payload, where):
        if not isinstance(item, dict):
            raise UserError(f"{path}: {loc}: expected an object like {{\"text\": ..., \"label\": ...}}, "
                            f"got {type(item).__name__}")
        if getattr(item, "twice", None) is not None:
            raise UserError(f"{path}: {loc}: key {item.twice!r} appears twice in one record, and only one of its "
                            "values would be read; rename or remove one")
        columns.update(dict.fromkeys(item))
    return Records(str(path), list(columns), payload, where, _repair_surrogates(path, payload, where))


LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # half of a UTF-16 pair: no tokenizer or file takes one


def _repair_surrogates(path: Path, payload: list[dict], where: list[str]) -> list[str]:
    """JSON may escape half of an emoji ("\\ud83d" alone): a lone surrogate, which no tokenizer or file
    can take. Each becomes U+FFFD, the replacement character, and the user is told where."""
    repaired = []
    for item, loc in zip(payload, where):
        for key, value in item.items():
            if isinstance(value, str) and LONE_SURROGATE.search(value):
                item[key] = LONE_SURROGATE.sub("\ufffd", value)
                repaired.append(f"{loc}, column {key!r}")
    if not repaired:
        return []
    shown = ", ".join(repaired[:3]) + (f" and {len(repaired) - 3} more" if len(repaired) > 3 else "")
    return [f"{path}: {shown}: a lone surrogate escape (half of an emoji) was replaced by U+FFFD"]


def _line_chunks(path: Path, lines: Iterable[str], ext: str, size: int) -> Iterator[Records]:
    """Plain text: one text per line, no labels (for predict); `size` texts at a time."""
    rows, where = [], []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            rows.append({"text": line.removesuffix("\n")})
            where.append(f"line {number}")
            if len(rows) == size:
                yield Records(str(path), ["text"], rows, where)
                rows, where = [], []
    if rows:
        yield Records(str(path), ["text"], rows, where)


_CHUNKERS: dict[str, Callable[[Path, Iterable[str], str, int], Iterator[Records]]] = {
    ".csv": _delimited_chunks, ".tsv": _delimited_chunks, ".jsonl": _jsonl_chunks, ".ndjson": _jsonl_chunks,
    ".txt": _line_chunks}


# ---------------------------------------------------------------- streaming

def iter_record_chunks(path: Path, rows_per_chunk: int) -> Iterator[Records]:
    """A file's records, at most `rows_per_chunk` rows at a time, without holding the whole file.

    Rows, locations and errors are those of `read_records`, but a problem late in the file is found only when
    its chunk is read; a JSON Lines chunk's columns are its own records' keys. Text formats are parsed a line
    at a time, Parquet a batch at a time; a JSON file (one array or object) comes whole, as one chunk."""
    ext = file_format(path)
    if ext == ".json":
        yield read_records(path)
        return
    if ext == ".parquet":
        yield from _parquet_chunks(path, rows_per_chunk)
        return
    first, pieces = _first_line(_decoded_lines(path))
    if not first:  # a file of blank lines is empty, as for read_records
        raise UserError(f"{path}: file is empty")
    # A piece is one line up to b'\n'; one with a '\r' may be several, split as read_records splits them.
    lines = itertools.chain.from_iterable(io.StringIO(p, newline=_NEWLINE.get(ext)) if "\r" in p else (p,)
                                          for p in pieces)
    chunks = _CHUNKERS[ext](path, lines, ext, rows_per_chunk)
    first = next(chunks, None)
    if first is None:
        raise UserError(f"{path}: has a header but no rows")
    yield first
    yield from chunks


def _guarded(items: Iterator[T], errors: tuple[type[BaseException], ...],
             message: Callable[[BaseException], UserError]) -> Iterator[T]:
    """The items, with a failure while producing one (a file found corrupt midway) as a one-line error."""
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except errors as exc:
            raise message(exc) from None
        yield item


def _decoded_lines(path: Path) -> Iterator[str]:
    """The text a line (up to and with each b'\\n') at a time, checked and decoded as `_decode` does."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise _unreadable(path, exc) from None
    with handle:
        if path.suffix.lower() == ".gz":
            stream = gzip.GzipFile(fileobj=handle)
            raws = _guarded(iter(stream), GZIP_ERRORS, lambda e: UserError(f"{path}: not a valid gzip file ({e})"))
        else:
            raws = _guarded(iter(handle), (OSError,), lambda e: _unreadable(path, e))
        for number, raw in enumerate(raws, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                # The bytes shown may run on into the next lines, as they do when the whole file is decoded.
                bad = raw[exc.start:exc.start + 4]
                for more in itertools.islice(raws, 3):
                    bad = (bad + more)[:4]
                raise _not_utf8(path, number, bad, raw[:4] if number == 1 else b"") from None
            if "\0" in text:
                raise _has_nul(path, number)
            yield text.removeprefix("\ufeff") if number == 1 else text


def _first_line(lines: Iterator[str]) -> tuple[str, Iterator[str]]:
    """The first line that is not blank ('' if none), and all the lines, that one included."""
    head = []
    for line in lines:
        head.append(line)
        if line.strip():
            return line, itertools.chain(head, lines)
    return "", iter(head)


def _parquet_chunks(path: Path, size: int) -> Iterator[Records]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        raise UserError(f"{path}: file not found")

    def unreadable(exc: BaseException) -> UserError:  # pyarrow's messages can run over several lines
        return UserError(f"{path}: not a readable Parquet file ({(str(exc) or type(exc).__name__).splitlines()[0]})")
    # Parquet is read by seeking, so a .parquet.gz is decompressed into memory first.
    source = pa.BufferReader(_read_bytes(path)) if path.suffix.lower() == ".gz" else path
    try:
        handle = pq.ParquetFile(source)
        empty = handle.metadata.num_rows == 0
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise unreadable(exc) from None
    if empty:
        raise UserError(f"{path}: has columns but no rows")
    with handle:
        columns, done = _unique(str(path), handle.schema_arrow.names), 0
        # Whole: one table, as iter_batches is not promised to return one batch however large.
        batches = (handle.read() for _ in "1") if size == WHOLE else handle.iter_batches(batch_size=size)
        for batch in _guarded(batches, (Exception,), unreadable):
            rows = batch.to_pylist()
            yield Records(str(path), columns, rows, [f"row {done + i + 1}" for i in range(len(rows))])
            done += len(rows)
