"""`finetune-bert evaluate`: score a fine-tuned model on labelled data, a chunk of rows at a time.

Beside the metrics (NAME.json) it writes a report a person reads (NAME.html, see report_page.py) and, with
`errors`, the most confident mistakes in full (NAME.errors.csv). A model calibrated by `train` (a
temperature folded into its weights) is also scored as it was before calibration ("uncalibrated").
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from finetune_bert.console import Progress, console
from finetune_bert.data.chunks import ChunkedSplit, ahead, chunk_rows
from finetune_bert.data.skipped import refuse_foreign_skipped_list, write_skipped
from finetune_bert.data.splits import sample_mask
from finetune_bert.engine import distributed
from finetune_bert.engine.model_folder import EVALUATE_FILES, ModelFolder, pick_device, refuse_model_file
from finetune_bert.errors import Reported, UserError, refuse
from finetune_bert.evaluation.calibration import MEASURES
from finetune_bert.evaluation.config import EvaluateConfig
from finetune_bert.evaluation.explained import explain_rows, metrics_text
from finetune_bert.evaluation.metrics import ConfidentMistakes, StreamingMetrics, metrics_for, snippet
from finetune_bert.evaluation.tables import format_any
from finetune_bert.evaluation.task_metrics import LargestErrors
from finetune_bert.tasks import CLASSIFICATION, MULTI_LABEL, REGRESSION
from finetune_bert.evaluation.report_page import evaluation_report
from finetune_bert.inference.classifier import LabelMap, load
from finetune_bert.inference.files import labelled_rows, read_columns
from finetune_bert.inference import sharded
from finetune_bert.inference.heap import steady_heap
from finetune_bert.inference.reading import Reading
from finetune_bert.ranks import follower, launched
from finetune_bert.safefiles import atomic_output, check_output_file, claim_output, write_text_atomic


def evaluate(cfg: EvaluateConfig | str | None = None, data: str | None = None, output: str | None = None, *,
             quiet: bool = False, rows_per_chunk: int | None = None, reading: Reading | None = None,
             **overrides: Any) -> dict[str, Any]:
    """Score a fine-tuned model on labelled data; print the table and write the metrics as JSON.

    Takes an EvaluateConfig, or its options as keywords (`evaluate(model=..., data=...)`, as `train` does);
    `evaluate(model, data, output)` is the same. Options, then the output's place, then every row are checked
    before the model is loaded: the data is read twice, a chunk of rows at a time (data.chunks.ChunkedSplit),
    once to check it and once to score it. Rows skipped under on_bad_rows="skip" go to NAME.skipped.csv, the
    `errors` most confident mistakes to NAME.errors.csv. `reading` gives the four reading options at once."""
    cfg = _checked(cfg, dict(overrides, **({} if data is None else {"data": data}),
                             **({} if output is None else {"output": output}),
                             **(dataclasses.asdict(reading) if reading is not None else {})))
    with console.quiet(quiet):
        if cfg.nproc_per_node > 1 and not launched():
            return _launched(cfg)
        return _evaluate(cfg, rows_per_chunk)


def _checked(cfg: EvaluateConfig | str | None, overrides: dict[str, Any]) -> EvaluateConfig:
    if isinstance(cfg, str):  # the model, given first as it always could be
        cfg, overrides = None, {"model": cfg, **overrides}
    cfg = dataclasses.replace(cfg or EvaluateConfig(), **overrides)
    try:
        refuse(cfg.problems())
    except UserError as exc:  # under torchrun, every process finds the same problems: rank 0 says them
        if follower():
            raise Reported(exc.exit_code) from None
        raise
    return cfg


class _Opened(NamedTuple):
    """What evaluate checks before the model is loaded: the model folder, where the outputs go, the rows."""

    folder: ModelFolder
    target: Path
    skipped_at: Path
    labels: LabelMap
    rows: ChunkedSplit
    total: int


def _opened(cfg: EvaluateConfig, rows_per_chunk: int | None) -> _Opened:
    folder = ModelFolder.open(cfg.model)
    target, skipped_at = _metrics_path(folder, cfg.data, cfg.output, skipping=cfg.on_bad_rows == "skip")
    labels = LabelMap.of(folder.config(), folder.info)
    if cfg.errors and labels.spec.task == MULTI_LABEL:
        raise UserError(f"--errors lists a classifier's most confident mistakes or a regression's largest errors; "
                        f"{cfg.model} is a multi-label model: drop --errors")
    rows = labelled_rows(cfg.data, labels, clean=folder.info.clean, columns=read_columns(cfg, folder.info, True),
                         on_bad_rows=cfg.on_bad_rows, rows_per_chunk=chunk_rows(rows_per_chunk, cfg.batch_size))
    return _Opened(folder, target, skipped_at, labels, rows, rows.check())


def _launched(cfg: EvaluateConfig) -> dict[str, Any]:
    """`cfg.nproc_per_node` processes started once every row is checked; the metrics rank 0 wrote."""
    with console.quiet():  # rank 0 says again how the data was read
        target = _opened(cfg, None).target
    sharded.launch(cfg, "evaluate", sharded.EVALUATION)
    return json.loads(target.read_text(encoding="utf-8"))


def _evaluate(cfg: EvaluateConfig, rows_per_chunk: int | None) -> dict[str, Any]:
    """Under torchrun, every process reads every row and scores its share of each chunk's batches (sharded.py);
    rank 0 alone explains, writes and says the results."""
    with sharded.joined(pick_device(), sharded.EVALUATE_WAIT_S, sharded.EVALUATION) as world:
        opened = distributed.together(world, lambda: _opened(cfg, rows_per_chunk))
        clf = distributed.together(world, lambda: load(opened.folder, reading=cfg.reading(),  # --errors: explained
                                                       backend=sharded.backend_for(cfg.backend, world),
                                                       explaining=cfg.errors > 0))
        steady_heap(clf.device)
        k = max(cfg.errors, REPORT_MISTAKES)
        mistakes = LargestErrors(k) if clf.task == REGRESSION else ConfidentMistakes(k, clf.label_names)
        # --max-samples picks the rows seeded_sample would pick from the whole data: check() counted them.
        sample = sample_mask(opened.total, cfg.max_samples, cfg.seed)
        progress = Progress(int(sample.sum()) if sample is not None else opened.total, "evaluate")
        with sharded.scoring(clf, world):
            metrics = _score(clf, opened.rows, sample, (cfg.batch_size, cfg.overlap), mistakes, progress=progress,
                             labels=opened.labels)
        progress.close()
    return _written(cfg, clf, opened, metrics, mistakes) if world.main else metrics


def _written(cfg: EvaluateConfig, clf, opened: _Opened, metrics: dict[str, Any], mistakes) -> dict[str, Any]:
    """The mistakes listed (and explained with --errors), the table said, the metrics, report and lists written."""
    rows, target, skipped_at = opened.rows, opened.target, opened.skipped_at
    errors_at, html_at = target.with_name(target.stem + ".errors.csv"), target.with_suffix(".html")
    worst = mistakes.rows()
    metrics.update(data=cfg.data, model=cfg.model, backend=clf.backend, backend_requested=clf.requested,
                   skipped_rows=len(rows.skipped),
                   reading=dataclasses.asdict(cfg.reading()), reading_used=clf.reading_json())
    if clf.task != MULTI_LABEL:  # a classifier's confident mistakes, a regression's largest errors
        key = "largest_errors" if clf.task == REGRESSION else "mistakes"
        listed = worst[:REPORT_MISTAKES]
        metrics[key] = [{**{k: v for k, v in row.items() if k != "pair"}, "text": snippet(row["text"])} for row in listed]
        if cfg.errors:  # asked to look at the mistakes: the page colours the words of those it lists
            explain_rows(clf, metrics[key], [(r["text"], r["pair"]) if "pair" in r else r["text"] for r in listed],
                         metrics)
    console.say(format_any(metrics, f"{cfg.data} ({metrics['n']} texts; {clf.reading_text()})"))
    if "uncalibrated" in metrics:
        u = metrics["uncalibrated"]
        console.say(f"calibrated (temperature {metrics['temperature']:.3f} folded in by train); before calibration: "
                    f"ece {u['ece']:.4f}   log_loss {u['log_loss']:.4f}   brier {u['brier']:.4f}")
    write_text_atomic(target, metrics_text(metrics))
    write_skipped(rows.skipped, skipped_at)
    written = [target, *([skipped_at] if rows.skipped else [])]
    if cfg.errors:
        _write_errors(worst[:cfg.errors], clf.label_names, errors_at)
        written.append(errors_at)
    write_text_atomic(html_at, evaluation_report(metrics, target.name))
    for path in (*written, html_at):
        claim_output(path)
    if rows.skipped:  # asked for with --on-bad-rows skip: said beside the results, not as a warning
        console.say(f"note: {len(rows.skipped)} rows skipped and not scored; listed with their reasons in "
                    f"{skipped_at}", even_quiet=True)
    console.say(f"metrics written to {target}, the report to {html_at}"
                + (f", the {len(worst[:cfg.errors])} {'largest errors' if clf.task == REGRESSION else 'most confident mistakes'}"
                   f" to {errors_at}" if cfg.errors else ""))
    return metrics


REPORT_MISTAKES = 20


def _score(clf, rows, sample: np.ndarray | None, batching: tuple[int, bool], mistakes: ConfidentMistakes, *,
           progress: Progress | None = None, labels: LabelMap) -> dict[str, Any]:
    """Read, tokenize and score a chunk at a time: memory stays flat however many texts there are (but for
    the logits that multi-label and regression metrics rank); the next chunk is read and tokenized while this
    one is scored. A classifier with a folded temperature T is also scored on logits * T: what it gave before
    calibration. `batching`: (batch size, overlap)."""
    batch_size, overlap = batching
    stream = metrics_for(clf.task, clf.label_names, thresholds=clf.thresholds if clf.task == MULTI_LABEL else None,
                         integer_targets=clf.info.integer_targets)
    classes = clf.task == CLASSIFICATION
    raw = StreamingMetrics(clf.label_names) if clf.temperature != 1.0 and classes else None
    for chunk, (prepared, _) in ahead(_sampled(rows, sample), lambda c: clf.prepare(c.texts, cleaned=True,
                                                                                     pairs=c.pairs), overlap=overlap):
        logits = torch.from_numpy(clf.logits_of([prepared], batch_size, progress=progress and progress.update))
        lengths = prepared.full_lengths
        truth = labels.tensor(chunk.labels)
        stream.update(logits, truth, lengths)
        if clf.task == REGRESSION:
            mistakes.update(logits, truth, lambda j, c=chunk: _described(c, j))
        if not classes:
            continue
        if raw is not None:
            raw.update(logits * clf.temperature, truth, lengths)
        mistakes.update(logits, truth, lambda j, c=chunk: _described(c, j))
    metrics = stream.compute()
    if raw is not None:
        before = raw.compute()
        metrics.update(temperature=clf.temperature,
                       uncalibrated={k: before[k] for k in (*MEASURES, "reliability")})
    return metrics


def _described(chunk, j: int) -> dict[str, Any]:
    """A listed row: where it stood and its text (and a pair model's second text, for its explanation)."""
    return {"row": chunk.where[j], "text": chunk.texts[j], **({} if chunk.pairs is None else {"pair": chunk.pairs[j]})}


def _sampled(rows, sample: np.ndarray | None):
    """Each chunk's rows that --max-samples picked (all of them without it); empty chunks left out."""
    seen = 0
    for split in rows:
        chunk = split if sample is None else split.subset(np.flatnonzero(sample[seen:seen + len(split)]))
        seen += len(split)
        if len(chunk):
            yield chunk


def _write_errors(rows: list[dict[str, Any]], label_names: list[str], path: Path) -> None:
    """The most confident mistakes (a regression's largest errors), whole texts, the worst first."""
    fields = ["row", "text", "true", "predicted", "error"] if rows and "error" in rows[0] else \
        ["row", "text", "true_label", "predicted", "confidence", *(f"prob_{n}" for n in label_names)]
    with atomic_output(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")  # a pair's second text
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})


def _metrics_path(model: ModelFolder, data: str, output: str | None, *, skipping: bool = False) -> tuple[Path, Path]:
    """Where the metrics and the skipped rows go (default: MODEL/evaluation.json), checked before any work:
    a JSON name, a writable place, not the data itself, not a file of the model."""
    target = Path(output).expanduser() if output else (
        model.path / "evaluation.json" if model.path is not None else Path("evaluation.json"))
    if target.suffix.lower() != ".json":
        raise UserError(f"--output {target}: the metrics are written as JSON; give a file name ending in .json")
    skipped_at = target.with_name(target.stem + ".skipped.csv")
    beside = [(target.with_name(target.stem + suffix), f"the {what} of --output {target},")
              for suffix, what in ((".skipped.csv", "skipped-rows file"), (".errors.csv", "mistakes file"),
                                   (".html", "report"))]
    for path, option in ((target, "--output"), *beside):
        try:
            check_output_file(path, option, inputs=[data])
            refuse_model_file(path, model, option, allow=EVALUATE_FILES)
        except UserError as exc:
            default = "" if output else "; pass --output FILE.json to write the metrics elsewhere"
            raise UserError(f"{exc}{default}") from None
    if skipping:
        refuse_foreign_skipped_list(skipped_at, f"the skipped-rows file of --output {target},")
    return target, skipped_at
