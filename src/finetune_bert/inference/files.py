"""Prediction files: texts read from a file, scored a chunk at a time, and written as CSV, TSV, JSONL or JSON."""

from __future__ import annotations

import contextlib
import csv
import sys
import json
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
from finetune_bert.inference.heap import steady_heap
from finetune_bert.data.skipped import SkippedRow, refuse_foreign_skipped_list, write_skipped
from finetune_bert.errors import UserError
from finetune_bert.engine.model_folder import refuse_model_file
from finetune_bert.data.sources import source_chunks
from finetune_bert.safefiles import atomic_output, check_output_file, claim_output
from finetune_bert.data.chunks import EVAL_CHUNK, ChunkedSplit, ahead, chunk_rows
from finetune_bert.inference.classifier import Classifier, LabelMap
from finetune_bert.console import Progress, console
from finetune_bert.data.rows import TEXT_COLUMNS
from finetune_bert.data.labels import LabelSpec
from finetune_bert.tasks import MULTI_LABEL, REGRESSION
from finetune_bert.engine.model_folder import ModelFolder


# Output formats of predictions, by the extension of --output.
OUTPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}


def labelled_rows(data: str, labels: LabelMap, *, clean: bool, columns: tuple[str | None, ...] = (None, None),
                  on_bad_rows: str = "error", rows_per_chunk: int = EVAL_CHUNK) -> ChunkedSplit:
    """Labelled rows for evaluate, a chunk at a time; `columns`: (text, label[, pair]) column names, None to
    detect (a pair column given: the rows are text pairs)."""
    text_column, label_column = columns[:2]
    pair_column = columns[2] if len(columns) > 2 else None
    return ChunkedSplit(source_chunks(data, "test", rows_per_chunk), "test", text_column, label_column, clean, True,
                        on_bad_rows=on_bad_rows, row_filter=labels.known, pair_column=pair_column,
                        pairs=pair_column is not None, spec=labels.spec)


def check_output(output_path: str, input_path: str, model: ModelFolder | str | None = None, *,
                 skipping: bool = False) -> Path:
    """Before any row is read or the model loaded: a known extension, a writable place, not the input, not
    a file of the model. The file of skipped rows beside it is checked as well (`skipping`: it will be written,
    so a file of the user's there is refused)."""
    out = Path(output_path).expanduser()
    ext = "".join(out.suffixes[-1:]).lower()
    if ext not in OUTPUT_FORMATS:
        raise UserError(f"--output {output_path}: unknown extension {ext or '(none)'!r}; predictions are written "
                        f"as {', '.join(OUTPUT_FORMATS)}, by the extension")
    for path, option in ((out, "--output"), (skipped_path(out), f"the skipped-rows file of --output {output_path},")):
        check_output_file(path, option, inputs=[input_path])
        if model is not None:
            refuse_model_file(path, model, option)
    if skipping:
        refuse_foreign_skipped_list(skipped_path(out), f"the skipped-rows file of --output {output_path},")
    return out


def skipped_path(out: Path) -> Path:
    return out.with_name(out.stem + ".skipped.csv")


def read_columns(cfg, info, labelled: bool) -> tuple[str | None, ...]:
    """(text, label, pair) columns to read for a model: a pair model's columns default to training's, and
    its rows are pairs; the others' are found as usual. `cfg`: a ScoreConfig (label_column where it has one)."""
    label = getattr(cfg, "label_column", None) if labelled or getattr(cfg, "label_column", None) else None
    if info.pair_column is None:
        return cfg.text_column, label
    return cfg.text_column or info.text_column, label, cfg.text_pair_column or info.pair_column


def input_rows(input_path: str, columns: tuple[str | None, ...] = (None, None), ignore_labels: bool = False,
               on_bad_rows: str = "error", rows_per_chunk: int = EVAL_CHUNK, *, cleaned: bool = True,
               spec: LabelSpec = LabelSpec(), share: Callable[[Any], Any] | None = None) -> ChunkedSplit:
    """The texts to predict, a chunk at a time, as given (the model cleans them if `cleaned`, and a text left
    with nothing visible is a bad row); `columns`: (text, label[, pair]), None to detect. A label column, if
    any, is only copied to the output: its empty cells are fine, and with `ignore_labels` it is not looked
    for. `share`: the file's chunks to this process's share of them (several processes: sharded.Share)."""
    pair = columns[2] if len(columns) > 2 else None
    chunks = source_chunks(input_path, "test", rows_per_chunk)
    return ChunkedSplit(share(chunks) if share is not None else chunks, "input", columns[0], columns[1], False,
                        None if ignore_labels else False, on_bad_rows=on_bad_rows, judge_cleaned=cleaned,
                        pair_column=pair, pairs=pair is not None, spec=spec)


def predict_file(clf: Classifier, input_path: str, output_path: str, batch_size: int = 64,
                 rows_per_chunk: int | None = None, *, overlap: bool = True, **read: Any) -> int:
    """Predict every row of a file into `output_path` (format by extension: OUTPUT_FORMATS), with every
    class probability; `read` are `input_rows`' options; `overlap`: see write_predictions. Returns the
    number of predictions."""
    out = check_output(output_path, input_path, clf.folder, skipping=read.get("on_bad_rows") == "skip")
    columns = read_columns(_Columns(read.pop("text_column", None), read.pop("label_column", None),
                                    read.pop("text_pair_column", None)), clf.info, False)
    rows = input_rows(input_path, columns, rows_per_chunk=chunk_rows(rows_per_chunk, batch_size), cleaned=clf.clean,
                      spec=LabelSpec(clf.task, clf.info.label_separator), **read)
    total = rows.check()
    return write_predictions(clf, rows, out, batch_size, overlap=overlap, total=total)


class Explaining(NamedTuple):
    """predict --explain: the words shown in a CSV/TSV cell, and the steps of the integral (None: the default)."""

    top_words: int = 10
    steps: int | None = None


def write_predictions(clf: Classifier, rows: ChunkedSplit, out: Path | None, batch_size: int = 64, *,
                      overlap: bool = True, total: int | None = None, fmt: str | None = None,
                      explain: Explaining | None = None) -> int:
    """Read, predict and write a chunk of rows at a time, in the file's order, so memory does not grow with
    its size; the output appears whole, by rename, only when every row is written. `rows.check()` must
    have passed (so bad rows were reported before any prediction). `overlap`: the next chunk read and
    tokenized while this one is scored (chunks.ahead). `out` None: standard output, in `fmt` (default csv).
    `total`: the rows to come (rows.check()'s count), for the progress shown on stderr. `explain`: each row's
    explanation of its answer in an `explanation` field (the top words in CSV/TSV, all of them in JSON)."""
    fmt = fmt or (OUTPUT_FORMATS[out.suffix.lower()] if out is not None else "csv")
    with _opened_output(out) as handle:
        write = row_writer(handle, fmt, prediction_fields(clf, rows, explain))
        written, unsettled = predict_rows(clf, rows, write, batch_size, overlap=overlap, total=total, fmt=fmt,
                                          explain=explain)
        write(None)
    note_unsettled(unsettled, written)
    report_skipped(rows.skipped, out)
    return written


def prediction_fields(clf: Classifier, rows: ChunkedSplit, explain: Explaining | None) -> list[str]:
    """The columns of the predictions of `rows` (checked): true_label where they have labels, explanation."""
    labelled = rows.picked is not None and rows.picked.label is not None
    return output_fields(clf, labelled) + (["explanation"] if explain else [])


def predict_rows(clf: Classifier, rows: ChunkedSplit, write: Callable[[dict[str, Any]], None], batch_size: int, *,
                 overlap: bool, total: int | None, fmt: str, explain: Explaining | None,
                 what: str = "predict") -> tuple[int, int]:
    """Each row of `rows` scored and handed to `write` in order (see write_predictions); returns the rows
    written and the explanations among them that did not converge. `what`: the progress line's name."""
    steady_heap(clf.device)
    labelled = rows.picked is not None and rows.picked.label is not None
    progress = Progress(total, what) if total is not None else None
    update = progress and progress.update
    written, unsettled = 0, 0
    with clf.reporting(None if explain else update):
        for split, prepared in ahead(rows, lambda c: clf.prepare(c.texts, pairs=c.pairs)[0] if c.texts else None,
                                     overlap=overlap):
            probs = clf.score_prepared([prepared], batch_size)[0] if prepared is not None else []
            explained = _explained(clf, split, probs, explain) if explain and len(probs) else None
            for i, p in enumerate(probs):
                row = _prediction(clf, split, i, p, labelled)
                if explained is not None:
                    row["explanation"] = explained[i].compact(explain.top_words) if fmt in ("csv", "tsv") \
                        else explained[i].to_json()
                    unsettled += not explained[i].converged
                write(row)
                written += 1
            if explained is not None and update is not None:
                update(len(probs))  # explaining is most of the time: progress counts rows explained
    if progress is not None:
        progress.close()
    return written, unsettled


def note_unsettled(unsettled: int, written: int) -> None:
    if unsettled:
        console.note(f"{unsettled} of {written} explanations did not converge: their weights add up to the change "
                     "in the answer only within more than 5% (their delta); --explain-steps with more steps may help")


def _explained(clf: Classifier, split, probs: np.ndarray, explain: Explaining) -> list:
    """A chunk's explanations, each of the answer written beside it: the predicted class, the most probable label,
    or the value."""
    items = list(zip(split.texts, split.pairs)) if clf.pairs else list(split.texts)
    targets = None if clf.task == REGRESSION else [int(np.argmax(p)) for p in probs]
    return clf.explain(items, target=targets, steps=explain.steps)


class _Columns(NamedTuple):
    text_column: str | None
    label_column: str | None
    text_pair_column: str | None


def output_fields(clf: Classifier, labelled: bool) -> list[str]:
    """The columns of a predictions file, per kind: the predicted class and its confidence; the labels that
    reach their thresholds; or the value. Every class's or label's probability follows."""
    head = ["row", "text", *(["text_pair"] if clf.pairs else []), "predicted"]
    if clf.task == REGRESSION:
        return [*head, *(["true_label"] if labelled else [])]
    if clf.task == MULTI_LABEL:
        return [*head, *(["true_label"] if labelled else []), *(f"prob_{n}" for n in clf.label_names)]
    return [*head, "confidence", *(["true_label"] if labelled else []), *(f"prob_{n}" for n in clf.label_names)]


def _prediction(clf: Classifier, split, i: int, p: np.ndarray, labelled: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"row": split.where[i], "text": split.texts[i]}
    if clf.pairs:
        row["text_pair"] = split.pairs[i]
    answer = clf.answer(p)
    if clf.task == REGRESSION:
        row["predicted"] = round(answer.value, 6)
    elif clf.task == MULTI_LABEL:  # the labels joined as the training data wrote them
        row["predicted"] = clf.info.label_separator.join(answer.labels)
    else:
        row.update(predicted=answer.label, confidence=round(answer.confidence, 6))
    if labelled:
        label = split.labels[i]
        row["true_label"] = clf.info.label_separator.join(map(str, label)) if isinstance(label, tuple) else label
    if clf.task != REGRESSION:
        row.update({f"prob_{n}": round(float(v), 6) for n, v in zip(clf.label_names, p)})
    return row


@contextlib.contextmanager
def _opened_output(out: Path | None) -> Iterator[Any]:
    """The output file, written whole or not at all; or standard output, written as rows come."""
    if out is not None:
        with atomic_output(out, newline="") as handle:
            yield handle
        claim_output(out)
        return
    yield sys.stdout
    sys.stdout.flush()


def report_skipped(skipped: list[SkippedRow], out: Path | None) -> None:
    """Skipped rows beside the output file, or, when the predictions went to standard output, on stderr."""
    if out is not None:
        write_skipped(skipped, skipped_path(out))
        if skipped:
            claim_output(skipped_path(out))
            console.say(f"{len(skipped)} rows skipped; listed in {skipped_path(out)}")
        return
    for row in skipped:  # a spooled standard input is named as the user gave it
        source = "<stdin>" if Path(row.source).parent.name.startswith(STDIN_SPOOL) else row.source
        console.note(f"skipped: {source}: {row.where}, column {row.column!r}: {row.reason}")


STDIN_SPOOL = "finetune-bert-stdin-"  # the prefix of the folder standard input is saved in


def stdin_file(folder: Path) -> Path:
    """Standard input (`--input -`) saved in `folder` under the name its first line suggests: JSON Lines when
    it opens with an object, CSV/TSV when its first line names a text column, else one text per line."""
    data = sys.stdin.buffer.read()
    first = next((line for line in data.splitlines() if line.strip()), b"").decode("utf-8", "replace")
    name = "stdin.txt"
    if first.lstrip().startswith("{"):
        name = "stdin.jsonl"
    else:
        for ext, sep in ((".tsv", "\t"), (".csv", ",")):
            header = {c.strip().strip('"').lower() for c in first.split(sep)}
            if sep in first and header & set(TEXT_COLUMNS):
                name = "stdin" + ext
                break
    path = folder / name
    path.write_bytes(data)
    return path


def row_writer(handle, fmt: str, fields: list[str], *, part: bool = False) -> Callable[[dict[str, Any] | None], None]:
    """Write rows one by one in `fmt` (csv, tsv, jsonl, json); a final call with None closes the format (the JSON
    array). A value JSON has no form for (a Parquet timestamp) is written as its text. `part`: the rows alone,
    a piece of a file that sharded.merge completes (no header; JSON rows each after ",\n", no brackets)."""
    if fmt in ("csv", "tsv"):
        writer = csv.DictWriter(handle, fieldnames=fields, delimiter="\t" if fmt == "tsv" else ",",
                                extrasaction="ignore")
        if not part:
            writer.writeheader()
        return lambda row: None if row is None else writer.writerow(row)
    if fmt == "jsonl":
        return lambda row: None if row is None else handle.write(json.dumps(row, default=str) + "\n")
    if part:
        return lambda row: None if row is None else handle.write(",\n" + json.dumps(row, default=str))
    first = [True]

    def write_json_array(row: dict[str, Any] | None) -> None:
        if row is None:
            handle.write("[]\n" if first[0] else "\n]\n")
            return
        handle.write(("[\n" if first[0] else ",\n") + json.dumps(row, default=str))
        first[0] = False
    return write_json_array
