"""Streaming evaluation: metrics accumulate batch by batch, so memory does not grow with the data.

ROC-AUC usually needs every score kept; here each class's scores go into a fixed histogram over the
log-odds (0.01 wide bins on [-30, 30]), which gives the AUC to well under 1e-3 at constant memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from finetune_bert import fastpath
from finetune_bert.encoding import Encoded, Layout, eval_batches, to_device
from finetune_bert.errors import UserError
from finetune_bert.model import refuse_model_file
from finetune_bert.safefiles import check_output_file, claim_output, write_text_atomic

# Rows read, validated, tokenized and scored at a time by `evaluate` and `predict_file`. Peak memory is
# set by this, not by the data size (benchmarks/eval_memory.py: 25,000 IMDB reviews peak ~23 MiB above
# 1,000); 1024 texts still keep the tokenizer's threads busy and length-sorted batches padding little.
EVAL_CHUNK = 1024
AUC_BINS = 6000
AUC_RANGE = 30.0
M_MMAP_THRESHOLD = -3  # glibc mallopt() parameter (malloc.h)


class StreamingMetrics:
    def __init__(self, label_names: list[str]):
        self.names = label_names
        k = len(label_names)
        self.confusion = np.zeros((k, k), dtype=np.int64)
        self.loss_sum = 0.0
        self.count = 0
        self.pos_hist = np.zeros((k, AUC_BINS), dtype=np.int64)
        self.neg_hist = np.zeros((k, AUC_BINS), dtype=np.int64)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits, labels = logits.float().cpu(), labels.cpu()
        logp = torch.log_softmax(logits, dim=-1)
        self.loss_sum += float(-logp.gather(1, labels[:, None]).sum())
        self.count += len(labels)
        np.add.at(self.confusion, (labels.numpy(), logp.argmax(-1).numpy()), 1)
        k = logits.shape[1]
        for c in range(k):
            others = torch.logsumexp(torch.cat([logp[:, :c], logp[:, c + 1:]], dim=1), dim=1)
            log_odds = (logp[:, c] - others).clamp(-AUC_RANGE, AUC_RANGE - 1e-6)
            bins = ((log_odds + AUC_RANGE) / (2 * AUC_RANGE) * AUC_BINS).long().numpy()
            is_c = (labels == c).numpy()
            np.add.at(self.pos_hist[c], bins[is_c], 1)
            np.add.at(self.neg_hist[c], bins[~is_c], 1)

    def _auc(self, c: int) -> float | None:
        pos, neg = self.pos_hist[c], self.neg_hist[c]
        if pos.sum() == 0 or neg.sum() == 0:
            return None
        neg_below = np.cumsum(neg) - neg
        return float((pos * (neg_below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))

    def compute(self) -> dict[str, Any]:
        cm = self.confusion
        tp = np.diag(cm).astype(float)
        predicted, actual = cm.sum(0).astype(float), cm.sum(1).astype(float)
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                       where=(precision + recall) > 0)
        k = len(self.names)
        aucs = [self._auc(c) for c in (range(k) if k > 2 else [1])]
        aucs = [a for a in aucs if a is not None]
        per_class = {name: {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": int(actual[i])}
                     for i, name in enumerate(self.names)}
        present = actual > 0
        return {
            "n": int(self.count),
            "accuracy": float(tp.sum() / max(self.count, 1)),
            "precision_macro": float(precision[present].mean()) if present.any() else 0.0,
            "recall_macro": float(recall[present].mean()) if present.any() else 0.0,
            "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
            "roc_auc": float(np.mean(aucs)) if aucs else None,
            "log_loss": self.loss_sum / max(self.count, 1),
            "loss": self.loss_sum / max(self.count, 1),
            "per_class": {n: {k2: float(v) if k2 != "support" else v for k2, v in d.items()}
                          for n, d in per_class.items()},
            "confusion_matrix": cm.tolist(),
            "labels": list(self.names),
        }


def batched_logits(model, encoded: Encoded, batch_size: int, device: torch.device, dtype: torch.dtype | None,
                   layout: Layout) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(row indices, fp32 logits on the CPU) per batch, longest first; one batch in flight at a time.

    A batch's logits are read back only after the next batch has been queued, so the GPU never waits
    for the host to collate and launch.
    """
    was_training = model.training
    model.eval()
    pending = None
    try:
        with torch.inference_mode():
            for index in eval_batches(encoded.lengths, batch_size, layout.capped_fit):
                batch = to_device(layout.batch(encoded, index), device)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    logits = fastpath.logits(model, batch, layout.fast).float()
                if pending is not None:
                    yield pending[0], pending[1].cpu()
                pending = (index, logits)
            if pending is not None:
                yield pending[0], pending[1].cpu()
    finally:
        model.train(was_training)


def run_eval(model, encoded: Encoded, label_names: list[str], batch_size: int, device: torch.device,
             dtype: torch.dtype | None, layout: Layout, on_batch=None) -> dict[str, Any]:
    metrics = StreamingMetrics(label_names)
    for i, (index, logits) in enumerate(batched_logits(model, encoded, batch_size, device, dtype, layout)):
        metrics.update(logits, torch.from_numpy(encoded.labels[index]))
        if on_batch is not None:
            on_batch(i + 1)
    return metrics.compute()


def steady_heap(device: torch.device) -> None:
    """On CPU with glibc, stop the heap creeping up chunk after chunk (elsewhere this does nothing).

    glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), so after the first
    batch the model's CPU activations come from the heap; tokenizing the next chunk fills the holes they
    leave, the next activations extend the heap, and peak RSS grew ~25 MiB per chunk although nothing is
    kept (10,000 reviews: 940 MiB against 630). A fixed 1 MiB threshold keeps large blocks in mmap, handed
    back when freed, at the cost of page faults (~15-30% of evaluate time with a tiny CPU model). It holds
    for the rest of the process. Calling `malloc_trim` between chunks instead was measured and does not
    help (10,000 reviews: 778 MiB against 620 for 1,000).
    """
    if device.type != "cpu":
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass  # not glibc


def format_metrics(m: dict[str, Any], title: str = "") -> str:
    names = m["labels"]
    width = max(12, *(len(n) + 2 for n in names))
    lines = [title] if title else []
    lines.append(f"{'':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for name in names:
        c = m["per_class"][name]
        lines.append(f"{name:<{width}}{c['precision']:>10.4f}{c['recall']:>10.4f}{c['f1']:>10.4f}{c['support']:>10}")
    lines.append(f"{'macro avg':<{width}}{m['precision_macro']:>10.4f}{m['recall_macro']:>10.4f}"
                 f"{m['f1_macro']:>10.4f}{m['n']:>10}")
    auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"
    lines.append(f"accuracy {m['accuracy']:.4f}   roc_auc {auc}   log_loss {m['log_loss']:.4f}")
    lines.append("confusion matrix (rows: true, columns: predicted)")
    lines.append(f"{'':<{width}}" + "".join(f"{n:>{width}}" for n in names))
    for name, row in zip(names, m["confusion_matrix"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def evaluate(model: str, data: str, output: str | None = None, batch_size: int = 64,
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
    rows = labelled_rows(data, labels, info.get("clean", True), text_column, label_column, on_bad_rows,
                         chunk_rows(rows_per_chunk, batch_size))
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
        for index, logits in batched_logits(clf.model, encoded, batch_size, clf.device, clf.dtype, clf.layout):
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


def chunk_rows(rows_per_chunk: int | None, batch_size: int) -> int:
    """Rows per chunk: EVAL_CHUNK, or 8 batches when batches are larger (a GPU would otherwise wait for
    each chunk's tokenization every batch or two). Memory follows this, never the size of the data."""
    return rows_per_chunk or max(EVAL_CHUNK, 8 * batch_size)
