"""Prediction files: texts read from a file, scored a chunk at a time, and written as CSV, TSV, JSONL or JSON."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable
from finetune_bert.inference.heap import steady_heap
from finetune_bert.data.skipped import refuse_foreign_skipped_list, write_skipped
from finetune_bert.errors import UserError
from finetune_bert.engine.model_folder import refuse_model_file
from finetune_bert.data.sources import source_chunks
from finetune_bert.safefiles import atomic_output, check_output_file, claim_output
from finetune_bert.data.chunks import EVAL_CHUNK, ChunkedSplit, ahead, chunk_rows
from finetune_bert.inference.classifier import Classifier, LabelMap, load
from finetune_bert.inference.config import PredictConfig
from finetune_bert.console import console
from finetune_bert.data.rows import clean_text, visible
from finetune_bert.data.sources import local_file
from finetune_bert.engine.model_folder import ModelFolder


# Output formats of predictions, by the extension of --output.
OUTPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}


def labelled_rows(data: str, labels: LabelMap, *, clean: bool, columns: tuple[str | None, str | None] = (None, None),
                  on_bad_rows: str = "error", rows_per_chunk: int = EVAL_CHUNK) -> ChunkedSplit:
    """Labelled rows for evaluate, a chunk at a time; `columns`: (text, label) column names, None to detect."""
    text_column, label_column = columns
    return ChunkedSplit(source_chunks(data, "test", rows_per_chunk), "test", text_column, label_column, clean, True,
                        on_bad_rows=on_bad_rows, row_filter=labels.known)


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


def input_rows(input_path: str, text_column: str | None = None, label_column: str | None = None,
               ignore_labels: bool = False, on_bad_rows: str = "error", rows_per_chunk: int = EVAL_CHUNK,
               *, cleaned: bool = True) -> ChunkedSplit:
    """The texts to predict, a chunk at a time, as given (the model cleans them if `cleaned`, and a text left
    with nothing visible is a bad row). A label column, if any, is only copied to the output: its empty cells
    are fine, and with `ignore_labels` it is not looked for."""
    return ChunkedSplit(source_chunks(input_path, "test", rows_per_chunk), "input", text_column, label_column, False,
                        None if ignore_labels else False, on_bad_rows=on_bad_rows, judge_cleaned=cleaned)


def predict_file(clf: Classifier, input_path: str, output_path: str, batch_size: int = 64,
                 rows_per_chunk: int | None = None, *, overlap: bool = True, **read: Any) -> int:
    """Predict every row of a file into `output_path` (format by extension: OUTPUT_FORMATS), with every
    class probability; `read` are `input_rows`' options; `overlap`: see write_predictions. Returns the
    number of predictions."""
    out = check_output(output_path, input_path, clf.folder, skipping=read.get("on_bad_rows") == "skip")
    rows = input_rows(input_path, rows_per_chunk=chunk_rows(rows_per_chunk, batch_size), cleaned=clf.clean, **read)
    rows.check()
    return write_predictions(clf, rows, out, batch_size, overlap=overlap)


def predict(cfg: PredictConfig) -> None:
    """`finetune-bert predict`: the texts given, each printed with its label and confidence; or every row of
    `cfg.input` into `cfg.output`. Every problem (options, texts, input, output, each row) is found before the
    model is loaded, and all of them are said at once."""
    folder, cleans = _opened(cfg.model)
    found = cfg.problems() + _empty_texts(cfg.texts, cleans)
    if cfg.input and (file := local_file(cfg.input)) is not None and not file.exists():
        found.append(f"--input {cfg.input}: file not found")
    if cfg.input and cfg.output:
        try:
            check_output(cfg.output, cfg.input, folder or cfg.model, skipping=cfg.on_bad_rows == "skip")
        except UserError as exc:
            found.append(str(exc))
    if found:
        raise UserError("; ".join(found))
    rows = None
    if cfg.input:
        rows = input_rows(cfg.input, cfg.text_column, cfg.label_column, cfg.ignore_labels, cfg.on_bad_rows,
                          chunk_rows(None, cfg.batch_size), cleaned=cleans)
        rows.check()
    clf = load(folder or cfg.model, reading=cfg.reading(), backend=cfg.backend)
    if rows is not None:
        out = Path(cfg.output).expanduser()
        n = write_predictions(clf, rows, out, cfg.batch_size, overlap=cfg.overlap)
        console.say(f"{n} predictions written to {out}")
    for text, pred in zip(cfg.texts, clf.predict(list(cfg.texts), cfg.batch_size)):
        preview = text if len(text) <= 60 else text[:57] + "..."
        console.say(f"{pred.label}\t{pred.confidence:.2f}\t{preview}")


def _opened(model: str) -> tuple[ModelFolder | None, bool]:
    """The model's folder and whether it cleans texts; (None, True) when the model itself is wrong, which
    load() then says, after every other problem has been found."""
    try:
        folder = ModelFolder.open(model)
        return folder, folder.info.clean
    except UserError:
        return None, True


def _empty_texts(texts: tuple[str, ...], cleans: bool) -> list[str]:
    """Texts given as arguments that leave the model nothing but [CLS] [SEP], as the model cleans them."""
    return [f"text {i} ({text!r}) has nothing to classify{' once cleaned' if cleans else ''}; give a text with words "
            "in it" for i, text in enumerate(texts, start=1)
            if not visible(clean_text(text) if cleans else text)]


def write_predictions(clf: Classifier, rows: ChunkedSplit, out: Path, batch_size: int = 64, *,
                      overlap: bool = True) -> int:
    """Read, predict and write a chunk of rows at a time, in the file's order, so memory does not grow with
    its size; the output appears whole, by rename, only when every row is written. `rows.check()` must
    have passed (so bad rows were reported before any prediction). `overlap`: the next chunk read and
    tokenized while this one is scored (chunks.ahead)."""
    steady_heap(clf.device)
    labelled = rows.picked is not None and rows.picked[1] is not None
    fields = ["row", "text", "predicted", "confidence", *(["true_label"] if labelled else []),
              *(f"prob_{n}" for n in clf.label_names)]
    written = 0
    with atomic_output(out, newline="") as handle:
        write = _row_writer(handle, OUTPUT_FORMATS[out.suffix.lower()], fields)
        for split, prepared in ahead(rows, lambda c: clf.prepare(c.texts)[0] if c.texts else None, overlap=overlap):
            for i, p in enumerate(clf.score_prepared([prepared], batch_size)[0] if prepared is not None else []):
                row = {"row": split.where[i], "text": split.texts[i],
                       "predicted": clf.label_names[int(p.argmax())], "confidence": round(float(p.max()), 6)}
                if labelled:
                    row["true_label"] = split.labels[i]
                row.update({f"prob_{n}": round(float(v), 6) for n, v in zip(clf.label_names, p)})
                write(row)
                written += 1
        write(None)
    write_skipped(rows.skipped, skipped_path(out))
    claim_output(out)
    if rows.skipped:
        claim_output(skipped_path(out))
        console.say(f"{len(rows.skipped)} rows skipped; listed in {skipped_path(out)}")
    return written


def _row_writer(handle, fmt: str, fields: list[str]) -> Callable[[dict[str, Any] | None], None]:
    """Write rows one by one in `fmt`; a final call with None closes the format (the JSON array)."""
    if fmt in ("csv", "tsv"):
        writer = csv.DictWriter(handle, fieldnames=fields, delimiter="\t" if fmt == "tsv" else ",")
        writer.writeheader()
        return lambda row: None if row is None else writer.writerow(row)
    if fmt == "jsonl":
        return lambda row: None if row is None else handle.write(json.dumps(row) + "\n")
    first = [True]

    def write_json_array(row: dict[str, Any] | None) -> None:
        if row is None:
            handle.write("[]\n" if first[0] else "\n]\n")
            return
        handle.write(("[\n" if first[0] else ",\n") + json.dumps(row))
        first[0] = False
    return write_json_array
