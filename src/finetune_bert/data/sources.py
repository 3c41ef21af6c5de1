"""A data spec as the user gives it (a file, an aclImdb-style folder, a Hugging Face dataset name) to records.

File formats are readers.py's. Here: which split of a folder or hub dataset is read (and saying so when it is
not the one asked for), which files of a folder count, and reading a file more than once (evaluate and
predict check every row before they score any).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from finetune_bert.errors import UserError
from finetune_bert.data.readers import Records, _decode, _read_bytes, file_format, iter_record_chunks, read_records

FOLDER_LABELS = {"pos": "positive", "neg": "negative"}
SPLITS = ("train", "test", "validation")
_NUMBERED = re.compile(r"(\d+)")


def _natural_key(path: Path) -> list:
    return [int(p) if p.isdigit() else p for p in _NUMBERED.split(path.name)]


def _class_files(class_dir: Path, ignored: list[Path]) -> list[Path]:
    """The class folder's texts: every *.txt file, whatever the case of its extension; the rest in `ignored`."""
    texts = []
    for entry in class_dir.iterdir():
        (texts if entry.is_file() and entry.suffix.lower() == ".txt" else ignored).append(entry)
    return sorted(texts, key=_natural_key)


def read_folder_split(root: Path, split: str) -> Records | None:
    """aclImdb layout: ROOT/SPLIT/<class>/*.txt. pos/neg become positive/negative; unsup is ignored, and so
    are files beside the class folders (aclImdb keeps its URL lists and bag-of-words files there). Anything
    else inside a class folder that is not a text is counted in a note, never dropped without a word."""
    base = root / split
    if not base.is_dir():
        return None
    rows, where, ignored = [], [], []
    for class_dir in sorted(p for p in base.iterdir() if p.is_dir() and p.name != "unsup"):
        label = FOLDER_LABELS.get(class_dir.name, class_dir.name)
        for file in _class_files(class_dir, ignored):
            rows.append({"text": _decode(file, _read_bytes(file)), "label": label})
            where.append(str(file.relative_to(root)))
    if not rows:
        raise UserError(f"{base}: no <class>/*.txt files found")
    notes = []
    if ignored:
        first = sorted(ignored)[0].relative_to(root)
        what = "1 entry in the class folders is not a .txt file and was" if len(ignored) == 1 else \
            f"{len(ignored)} entries in the class folders are not .txt files and were"
        notes.append(f"{base}: {what} not read (the first: {first})")
    return Records(str(root), ["text", "label"], rows, where, notes)


def read_source(spec: str, split: str) -> tuple[Records | None, dict[str, Records], list[str] | None]:
    """Resolve a data spec. Returns (records for the split asked, other splits it brings, label names)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return _read_folder(path, split)
    if (file := local_file(spec)) is not None:
        return read_records(file), {}, None
    return _read_hub(spec, split)


def _read_folder(path: Path, split: str) -> tuple[Records, dict[str, Records], None]:
    found = {s: r for s in SPLITS if (r := read_folder_split(path, s))}
    if not found:
        raise UserError(f"{path}: folder has no train/ or test/ subfolder with <class>/*.txt files")
    used = split if split in found else "train" if "train" in found else "test"
    records = found[used]
    if used != split:  # evaluating a folder with no test/ scores its train/ split: say so, never silently
        records.notes.append(f"{path} has no {split}/ split: its {used}/ split is used")
    return records, found, None


def local_file(spec: str) -> Path | None:
    """The file a data spec names; None for a folder or a Hugging Face dataset name."""
    path = Path(spec).expanduser()
    if not path.is_dir() and (path.suffix or path.exists() or "/" not in spec and "." in spec):
        return path
    return None


def _read_hub(name: str, split: str) -> tuple[Records, dict[str, Records], list[str] | None]:
    try:
        import datasets
    except ImportError as exc:  # an optional extra for users of local files only
        raise UserError(f"'{name}' is not a local file or folder; reading it as a Hugging Face hub dataset needs "
                        f"the `datasets` package ({exc}): pip install datasets (local files work without it)") from None
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
    found = {k: v for k, v in found.items() if k in SPLITS}
    if "train" not in found:
        raise UserError(f"hub dataset '{name}' has no train split (it has {', '.join(loaded)})")
    records = found.get(split, found["train"])
    if split not in found:
        records.notes.append(f"hub dataset '{name}' has no {split} split: its train split is used")
    return records, found, label_names


@dataclass
class _FileChunks:
    """Chunks of one file that can be iterated again: each pass re-reads the file."""

    path: Path
    rows_per_chunk: int

    def __iter__(self) -> Iterator[Records]:
        return iter_record_chunks(self.path, self.rows_per_chunk)


def source_chunks(spec: str, split: str, rows_per_chunk: int) -> Iterable[Records]:
    """A data spec (as read_source takes it) as chunks of records, iterable more than once: files that stream
    are re-read on each pass; a JSON file, an aclImdb folder or a hub dataset is read once, as one chunk."""
    file = local_file(spec)
    if file is not None and file_format(file) != ".json":
        _refuse_a_stream(file)
        return _FileChunks(file, rows_per_chunk)
    records, _, _ = read_source(spec, split)
    return [records]


def _refuse_a_stream(path: Path) -> None:
    """A pipe or a terminal can be read only once; the second pass would hang or find it empty."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # a missing or unreadable file is reported, with its reason, when it is read
    if not stat.S_ISREG(mode):
        raise UserError(f"{path}: is a pipe or device, not a regular file; evaluate and predict read their input "
                        "twice (every row is checked before any is scored), so save it to a file first")
