"""`finetune-bert audit`: which labels are likely wrong. Every row is scored by a model that never saw it (K
models trained by cross-validation, or a fine-tuned model on data it did not train on), then confident
learning (audit.issues, cleanlab) flags the rows whose given label the scores contradict.

The audit's folder is claimed like a study's: a rerun of the same command continues it (done folds kept, the
running one resumed from its checkpoint), and other arguments or data are refused rather than mixed in."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from finetune_bert.auditing.config import DEFAULT_FOLDS, AuditConfig
from finetune_bert.auditing.files import Shown, check_clean_target, issues_csv, outputs_csv, write_clean
from finetune_bert.auditing.issues import Findings, find_issues
from finetune_bert.auditing.report import write_report
from finetune_bert.auditing.scored import Scored, read_for_model, scorer
from finetune_bert.console import console
from finetune_bert.data.skipped import skipped_csv
from finetune_bert.errors import UserError, refuse
from finetune_bert.ranks import launched
from finetune_bert.safefiles import check_output_folder, claim, read_marker, refuse_foreign, write_text_atomic
from finetune_bert.training import checkpoint
from finetune_bert.training.train import process_settings

AUDIT_FILES = ("audit.json", "label_issues.csv", "oof_probabilities.csv", "summary.json", "report.html",
               "skipped_rows.csv", "explanations.json", "folds")
# Options a rerun may change without changing any fold's model or output.
FREE_OPTIONS = {"output", "overwrite", "debug", "num_threads", "keep_checkpoints", "save_every", "save_minutes",
                "log_every", "rank_by", "top", "explain_steps", "write_clean", "relabel", "keep_fold_models",
                "report", "export", "eval_batch_size"}


@dataclass
class AuditResult:
    output: str
    summary: dict[str, Any]
    findings: Findings


def audit(cfg: AuditConfig | None = None, **overrides: Any) -> AuditResult:
    """Audit `cfg.data`'s labels into `cfg.output`: label_issues.csv, oof_probabilities.csv, summary.json and
    report.html (see the module docstring)."""
    if launched():
        raise UserError("audit trains its folds one after the other in one process: start it without torchrun")
    cfg = dataclasses.replace(cfg or AuditConfig(), **overrides).with_defaults()
    refuse(cfg.problems())
    process_settings(cfg)
    started = time.time()
    folder = _check_folder(cfg)
    clean_target = check_clean_target(cfg.write_clean, cfg.data, cfg.overwrite) if cfg.write_clean else None
    if cfg.fine_tuned():
        scored = read_for_model(cfg)
        _claim(folder, _fingerprint(cfg, scored.rows, 0))
        if scored.skipped:
            write_text_atomic(folder / "skipped_rows.csv", skipped_csv(scored.skipped))
    else:
        scored = _cross_validate(cfg, folder)
    found = find_issues(scored.task, scored.labels, scored.outputs, scored.shown.names, rank_by=cfg.rank_by,
                        thresholds=scored.thresholds)
    summary = _summary(cfg, scored, found, time.time() - started)
    if clean_target is not None:  # before summary.json, which records it
        _clean_copy(cfg, clean_target, scored, found, summary)
    _write(folder, scored, found, summary)
    write_report(folder, cfg, scored, found, summary)
    if scored.runner is not None and not cfg.keep_fold_models:
        scored.runner.drop_weights()
    console.say(_said(summary, folder))
    return AuditResult(str(folder), summary, found)


def _check_folder(cfg: AuditConfig) -> Path:
    """The audit's folder: new, empty, or one an audit of ours wrote (its marker lists audit files)."""
    folder = check_output_folder(cfg.output, "--output")
    if folder.is_dir():
        ours = read_marker(folder)["files"]
        if ours and "audit.json" not in ours:
            raise UserError(f"--output {folder} holds a training run or a study, not an audit; choose another folder")
        refuse_foreign(folder, ours, cfg.overwrite, "the audit")
    return folder


def _fingerprint(cfg: AuditConfig, scored_rows, folds: int) -> dict[str, Any]:
    train = cfg.train_config()
    fixed = checkpoint.fingerprint(train, scored_rows.texts, scored_rows.labels, scored_rows.pairs or [])
    options = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in FREE_OPTIONS}
    return {**{k: v for k, v in fixed.items() if k not in FREE_OPTIONS}, **options, "folds": folds}


def _claim(folder: Path, fingerprint: dict[str, Any]) -> None:
    """The audit's record: made at its start, compared at a rerun (the same command continues it)."""
    record = folder / "audit.json"
    if record.is_file():
        saved = json.loads(record.read_text(encoding="utf-8")).get("fingerprint", {})
        if diff := checkpoint.differences(saved, json.loads(json.dumps(fingerprint, default=str))):
            raise UserError(f"--output {folder}: holds an audit made with other arguments or data; differences: "
                            f"{'; '.join(diff[:5])}. Run the original command to continue it, or use a new --output")
        return
    folder.mkdir(parents=True, exist_ok=True)
    claim(folder, AUDIT_FILES)
    write_text_atomic(record, json.dumps({"fingerprint": fingerprint}, indent=2, default=str) + "\n")


def _cross_validate(cfg: AuditConfig, folder: Path) -> Scored:
    from finetune_bert.auditing.folds import FoldRunner, assign_folds
    from finetune_bert.data.dataset import load_dataset
    from finetune_bert.engine.model_folder import ModelFolder
    from finetune_bert.training.job import check_labels

    k = cfg.folds or DEFAULT_FOLDS
    train_cfg = cfg.train_config(report=False, export=False, keep_checkpoints=0, resume=False)
    ds = load_dataset(train_cfg)  # bad rows stop here, naming file, row and column, before any folder is made
    check_labels(train_cfg, ds)
    rows = ds.train_all or ds.train
    fold = assign_folds(rows, ds.task, k, cfg.seed)
    _claim(folder, _fingerprint(cfg, rows, k))
    if ds.skipped:
        write_text_atomic(folder / "skipped_rows.csv", skipped_csv(ds.skipped))
    model = ModelFolder.open(cfg.model)
    tokenizer = model.tokenizer(cfg.trust_remote_code)
    console.say(f"audit: {len(rows)} rows of {rows.source}, {k} folds of about {len(rows) // k} rows; each fold "
                f"trains {cfg.model} on the others")
    runner = FoldRunner(train_cfg, ds, rows, fold, folder, tokenizer=tokenizer, model=model)
    score = scorer(cfg.eval_batch_size)
    outputs = runner.run(lambda run_dir, split: score(run_dir, split)[0])
    reading = {"long_texts": "chunks", "note": "each fold's model reads long texts whole, as predict does"}
    shown = Shown(ds.task, ds.label_names, ds.raw_labels, cfg.label_separator, ds.integer_targets)
    thresholds = _fold_thresholds(runner, k) if ds.task == "multi-label" else None
    return Scored(rows, _ids(ds, rows), outputs, shown, ds.task, fold=fold, runner=runner, skipped=ds.skipped,
                  thresholds=thresholds, split="train", reading=reading)


def _ids(ds, rows) -> list[Any]:
    """Labels as cleanlab takes them: class ids, tuples of label ids, or targets."""
    if ds.task == "regression":
        return [float(x) for x in rows.labels]
    to_id = ds.label_to_id
    if ds.task == "multi-label":
        return [tuple(sorted(to_id[x] for x in labels)) for labels in rows.labels]
    return [to_id[x] for x in rows.labels]


def _fold_thresholds(runner, k: int) -> np.ndarray | None:
    """Multi-label: the mean of the folds' tuned thresholds, what 'suggested' label sets are decided with."""
    from finetune_bert.engine.run_info import RunInfo

    found = [RunInfo.read(runner.path(i)).thresholds for i in range(k)]
    found = [t for t in found if t]
    return np.mean(np.asarray(found, dtype=np.float64), axis=0) if found else None


def _summary(cfg: AuditConfig, scored: Scored, found: Findings, seconds: float) -> dict[str, Any]:
    n = len(scored.rows)
    given = _label_counts(scored)
    return {"data": cfg.data, "model": cfg.model, "rows": n, "task": scored.task,
            "mode": "cross-validation" if scored.fold is not None else "fine-tuned model",
            "folds": int(scored.fold.max()) + 1 if scored.fold is not None else None,
            "flagged": int(len(found.flagged)), "flagged_share": round(len(found.flagged) / max(n, 1), 6),
            "ranked_by": found.ranked_by, "noise_rate": {k: round(v, 6) for k, v in found.noise_rate.items()},
            "rows_per_label": given, "joint": found.joint, "labels": scored.shown.names,
            "skipped_rows": len(scored.skipped), "reading": scored.reading, "seconds": round(seconds, 1)}


def _label_counts(scored: Scored) -> dict[str, int]:
    from collections import Counter

    if scored.task == "regression":
        return {}
    names = scored.shown.names
    if scored.task == "multi-label":
        return dict(Counter(names[i] for row in scored.labels for i in row))
    return dict(Counter(names[i] for i in scored.labels))


def _write(folder: Path, scored: Scored, found: Findings, summary: dict[str, Any]) -> None:
    write_text_atomic(folder / "label_issues.csv", issues_csv(scored.rows, scored.labels, found, scored.shown,
                                                              scored.fold))
    write_text_atomic(folder / "oof_probabilities.csv", outputs_csv(scored.rows, scored.labels, scored.outputs, found,
                                                                    scored.shown, scored.fold))
    write_text_atomic(folder / "summary.json", json.dumps(summary, indent=2) + "\n")


def _clean_copy(cfg: AuditConfig, target: Path, scored: Scored, found: Findings, summary: dict[str, Any]) -> None:
    rows = scored.rows
    changes = {(rows.source, rows.where[i]): scored.shown.spelled(found.suggested[i]) for i in found.flagged}
    column = rows.columns.label if rows.columns else "label"
    written, changed = write_clean(target, cfg.data, scored.split, changes, column, cfg.relabel)
    summary["clean_copy"] = {"file": str(target), "rows": written,
                             ("relabelled" if cfg.relabel else "left_out"): changed}
    console.say(f"clean copy written to {target}: {written} rows, "
                + (f"{changed} relabelled" if cfg.relabel else f"{changed} flagged rows left out"))


def _said(summary: dict[str, Any], folder: Path) -> str:
    lines = [f"audit of {summary['rows']} rows ({summary['mode']}"
             + (f", {summary['folds']} folds" if summary["folds"] else "") + f"): {summary['flagged']} flagged "
             f"({100 * summary['flagged_share']:.1f}%), ranked by {summary['ranked_by']}"]
    if summary["task"] == "classification":
        lines.append("estimated noise rate per class: " + ", ".join(f"{k} {100 * v:.1f}%"
                                                                       for k, v in summary["noise_rate"].items()))
    lines.append(f"written to {folder}: label_issues.csv, oof_probabilities.csv, summary.json, report.html")
    return "\n".join(lines)
