"""`finetune-bert evaluate`: score a fine-tuned model on labelled data, a chunk of rows at a time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune_bert.engine import steady_heap
from finetune_bert.errors import UserError
from finetune_bert.metrics import StreamingMetrics, format_metrics
from finetune_bert.model import refuse_model_file
from finetune_bert.safefiles import check_output_file, claim_output, write_text_atomic
from finetune_bert.streaming import chunk_rows


def evaluate(model: str, data: str, output: str | None = None, *, batch_size: int = 64,
             text_column: str | None = None, label_column: str | None = None,
             on_bad_rows: str = "error", max_samples: int | None = None, seed: int = 42,
             quiet: bool = False, rows_per_chunk: int | None = None) -> dict[str, Any]:
    """Score a fine-tuned model on labelled data; print the table and write the metrics as JSON.

    Options, then the output's place, then every row are checked before the model is loaded: the data is
    read twice, a chunk of rows at a time (see streaming.ChunkedSplit), once to check it and once to score
    it. Rows skipped under on_bad_rows="skip" are written beside the metrics (NAME.skipped.csv).
    """
    from finetune_bert.config import EvaluateConfig
    from finetune_bert.data import sample_mask
    from finetune_bert.skipped import write_skipped
    from finetune_bert.model import load_model_config, read_run_info
    from finetune_bert.predict import LabelMap, labelled_rows, load

    cfg = EvaluateConfig(model=model, data=data, output=output, batch_size=batch_size, max_samples=max_samples,
                         seed=seed, on_bad_rows=on_bad_rows)
    if problems := cfg.problems():
        raise UserError("; ".join(problems))
    target, skipped_at = _metrics_path(model, data, output, skipping=on_bad_rows == "skip")
    info = read_run_info(model)
    labels = LabelMap.of(load_model_config(model), info)
    rows = labelled_rows(data, labels, clean=info.get("clean", True), columns=(text_column, label_column),
                         on_bad_rows=on_bad_rows, rows_per_chunk=chunk_rows(rows_per_chunk, batch_size))
    total = rows.check()
    clf = load(model)
    steady_heap(clf.device)
    # --max-samples picks the rows seeded_sample would pick from the whole data: check() counted them.
    metrics = _score(clf, rows, sample_mask(total, max_samples, seed), batch_size)
    metrics.update(data=data, model=model, skipped_rows=len(rows.skipped))
    if not quiet:
        print(format_metrics(metrics, f"{data} ({metrics['n']} texts)"))
    write_text_atomic(target, json.dumps(metrics, indent=2) + "\n")
    write_skipped(rows.skipped, skipped_at)
    for written in (target, skipped_at) if rows.skipped else (target,):
        claim_output(written)
    if rows.skipped:
        print(f"warning: {len(rows.skipped)} rows skipped and not scored; listed with their reasons in {skipped_at}")
    if not quiet:
        print(f"metrics written to {target}")
    return metrics


def _score(clf, rows, sample: np.ndarray | None, batch_size: int) -> dict[str, Any]:
    """Read, tokenize and score a chunk at a time: memory stays flat however many texts there are."""
    stream = StreamingMetrics(clf.label_names)
    seen = 0
    for split in rows:
        chunk = split if sample is None else split.subset(np.flatnonzero(sample[seen:seen + len(split)]))
        seen += len(split)
        if not len(chunk):
            continue
        encoded = clf.encode(chunk.texts, chunk.labels)
        for index, logits in clf.engine.infer(encoded, batch_size):
            stream.update(logits, torch.from_numpy(encoded.labels[index]))
    return stream.compute()


def _metrics_path(model: str, data: str, output: str | None, *, skipping: bool = False) -> tuple[Path, Path]:
    """Where the metrics and the skipped rows go (default: MODEL/evaluation.json), checked before any work:
    a JSON name, a writable place, not the data itself, not a file of the model."""
    target = Path(output).expanduser() if output else (
        Path(model) / "evaluation.json" if Path(model).is_dir() else Path("evaluation.json"))
    if target.suffix.lower() != ".json":
        raise UserError(f"--output {target}: the metrics are written as JSON; give a file name ending in .json")
    skipped_at = target.with_name(target.stem + ".skipped.csv")
    for path, option in ((target, "--output"), (skipped_at, f"the skipped-rows file of --output {target},")):
        try:
            check_output_file(path, option, inputs=[data])
            refuse_model_file(path, model, option, allow=frozenset({"evaluation.json", "evaluation.skipped.csv"}))
        except UserError as exc:
            default = "" if output else "; pass --output FILE.json to write the metrics elsewhere"
            raise UserError(f"{exc}{default}") from None
    if skipping:
        from finetune_bert.skipped import refuse_foreign_skipped_list
        refuse_foreign_skipped_list(skipped_at, f"the skipped-rows file of --output {target},")
    return target, skipped_at
