"""What an audit writes: label_issues.csv (the flagged rows, worst first), oof_probabilities.csv (every row),
summary.json, and on request a clean copy of the data. The user's data is never changed: the copy goes to a
file of its own, refused when it is the input or a file that exists (unless --overwrite)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from finetune_bert.auditing.issues import Findings
from finetune_bert.data.readers import Records
from finetune_bert.data.sources import read_source
from finetune_bert.data.splits import Split
from finetune_bert.errors import UserError
from finetune_bert.inference.files import row_writer
from finetune_bert.safefiles import atomic_output, check_output_file
from finetune_bert.tasks import MULTI_LABEL, REGRESSION

CLEAN_FORMATS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


class Shown:
    """How a label of this data reads to a person (a class name, label names joined, a value) and how the data
    spells it (for a relabelled copy): `names` in id order, `raw` the data's own values, `separator` for sets."""

    def __init__(self, task: str, names: list[str], raw: list[Any] | None, separator: str = ";",
                 integer_targets: bool = False):
        self.task, self.names, self.raw, self.separator = task, names, raw or names, separator
        self.integer_targets = integer_targets

    def name(self, label: Any) -> str:
        if self.task == MULTI_LABEL:
            return self.separator.join(self.names[i] for i in label)
        if self.task == REGRESSION:
            return f"{float(label):.4g}"
        return self.names[int(label)]

    def spelled(self, label: Any) -> Any:
        """The suggested label as the data would spell it."""
        if self.task == MULTI_LABEL:
            return self.separator.join(str(self.raw[i]) for i in label)
        if self.task == REGRESSION:
            return int(round(label)) if self.integer_targets else round(float(label), 4)
        return self.raw[int(label)]


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    handle = io.StringIO()
    writer = csv.writer(handle)
    writer.writerow(header)
    writer.writerows(rows)
    return handle.getvalue()


def issues_csv(rows: Split, labels: list[Any], found: Findings, shown: Shown, fold: np.ndarray | None) -> str:
    """The flagged rows, worst first: where each stood, its given and suggested label, its label quality, and
    its text (and second text, for pairs)."""
    header = ["rank", "file", "row", "given_label", "suggested_label", "label_quality", "text"]
    header += ["text_pair"] * (rows.pairs is not None) + ["fold"] * (fold is not None)
    out = []
    for rank, i in enumerate(found.flagged.tolist(), 1):
        line = [rank, rows.source, rows.where[i], shown.name(labels[i]), shown.name(found.suggested[i]),
                f"{found.quality[i]:.6f}", rows.texts[i]]
        if rows.pairs is not None:
            line.append(rows.pairs[i])
        if fold is not None:
            line.append(int(fold[i]) + 1)
        out.append(line)
    return _csv(header, out)


def outputs_csv(rows: Split, labels: list[Any], outputs: np.ndarray, found: Findings, shown: Shown,
                fold: np.ndarray | None) -> str:
    """Every row's out-of-sample outputs (a probability per class or label, or the value), its label quality and
    whether it was flagged, in the data's order."""
    columns = ["value"] if shown.task == REGRESSION else [f"p_{n}" for n in shown.names]
    header = ["file", "row", "given_label", *columns, "label_quality", "flagged"] + ["fold"] * (fold is not None)
    flagged = np.zeros(len(rows), dtype=bool)
    flagged[found.flagged] = True
    out = []
    for i in range(len(rows)):
        line = [rows.source, rows.where[i], shown.name(labels[i]), *(f"{x:.6f}" for x in outputs[i]),
                f"{found.quality[i]:.6f}", int(flagged[i])]
        out.append(line + ([int(fold[i]) + 1] if fold is not None else []))
    return _csv(header, out)


def check_clean_target(path: str, data: str, overwrite: bool) -> Path:
    """Before any work: a known format, not the input, and not a file of the user's that exists."""
    target = Path(path).expanduser()
    if target.suffix.lower() not in CLEAN_FORMATS:
        raise UserError(f"--write-clean {path}: unknown extension {target.suffix or '(none)'!r}; the copy is written as "
                        f"{', '.join(CLEAN_FORMATS)}, by the extension")
    check_output_file(target, "--write-clean", inputs=[data])
    if target.exists() and not overwrite:
        raise UserError(f"--write-clean {path}: the file exists; choose a new name, or pass --overwrite to replace it")
    return target


def write_clean(target: Path, data: str, split: str, changes: dict[tuple[str, str], Any], label_column: str,
                relabel: bool) -> tuple[int, int]:
    """The data's rows as read, every column kept, with the flagged rows (`changes`: (file, row) -> suggested
    label as the data spells it) left out or relabelled. Returns (rows written, rows changed)."""
    records, _, _ = read_source(data, split)
    if records is None:
        raise UserError(f"{data}: has no {split} rows to copy")
    kept, changed = [], 0
    for row, where in zip(records.rows, records.where):
        key = (records.source, where)
        if key not in changes:
            kept.append(row)
        elif relabel:
            kept.append({**row, label_column: changes[key]})
            changed += 1
        else:
            changed += 1
    _write_rows(target, Records(records.source, records.columns, kept, []))
    return len(kept), changed


def _write_rows(target: Path, records: Records) -> None:
    ext = target.suffix.lower()
    if ext == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(records.rows) if records.rows else pa.table({c: [] for c in records.columns})
        with atomic_output(target, "wb") as handle:
            pq.write_table(table, handle)
        return
    with atomic_output(target, "w", newline="") as handle:
        write = row_writer(handle, {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}.get(ext, "json"), records.columns)
        for row in records.rows:
            write(row)
        write(None)
