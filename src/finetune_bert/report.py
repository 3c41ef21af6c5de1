"""The data report: what a user should know about their data before spending compute on it. It only reports:
the texts are tokenized by the tokens stage (tokens.encode_splits) and handed to it."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from finetune_bert.data import Dataset, Split
from finetune_bert.tokens import Encoded

IMBALANCE_WARNING = 3.0  # majority / minority class ratio worth a warning


def _split_report(split: Split, encoded: Encoded | None, names: list[str], to_id: dict, max_length: int) -> dict:
    counts = Counter(split.labels) if split.labels is not None else Counter()
    by_text: dict[str, set] = defaultdict(set)
    for text, label in zip(split.texts, split.labels or [None] * len(split)):
        by_text[text].add(label)
    entry: dict[str, Any] = {
        "source": split.source,
        "rows": len(split),
        "classes": {names[to_id[k]] if k in to_id else str(k): v for k, v in sorted(
            counts.items(), key=lambda kv: to_id.get(kv[0], 1 << 30))},
        "duplicate_rows": len(split) - len(by_text),
        "conflicting_duplicates": sum(1 for labels in by_text.values() if len(labels) > 1),
    }
    if counts:
        entry["imbalance_ratio"] = round(max(counts.values()) / min(counts.values()), 2)
    if encoded is not None:
        full = encoded.full_lengths
        entry["tokens"] = {f"p{q}": int(np.percentile(full, q)) for q in (50, 90, 95, 99)}
        entry["tokens"]["max"] = int(full.max())
        entry["tokens"]["mean"] = round(float(full.mean()), 1)
        entry["truncated"] = int((full > max_length).sum())
    return entry


def build_report(ds: Dataset, encoded: dict[str, Encoded], max_length: int, truncation: str,
                 clean: bool) -> dict[str, Any]:
    to_id = ds.label_to_id
    splits = {"train": ds.train, "validation": ds.val, "test": ds.test}
    report: dict[str, Any] = {
        "labels": {i: n for i, n in enumerate(ds.label_names)},
        "label_values": {n: raw for n, raw in zip(ds.label_names, ds.raw_labels)},
        "cleaning": "on: '<br />' tags and HTML entities turned into text" if clean else "off",
        "max_length": max_length,
        "truncation": truncation,
        "splits": {name: _split_report(s, encoded.get(name), ds.label_names, to_id, max_length)
                   for name, s in splits.items() if s is not None},
        "skipped_rows": len(ds.skipped),
        "notes": list(ds.notes),
        "warnings": [],
    }
    if ds.train_all is not None and ds.train_all is not ds.train:
        whole = _split_report(ds.train_all, None, ds.label_names, to_id, max_length)
        if ds.test is not None:
            whole["shared_with_test"] = len(set(ds.train_all.texts) & set(ds.test.texts))
        report["train_data"] = whole
    train_texts = set(ds.train.texts)
    for name, other in (("validation", ds.val), ("test", ds.test)):
        if other is not None:
            report["splits"][name]["shared_with_train"] = len(train_texts & set(other.texts))
    ratio = report["splits"]["train"].get("imbalance_ratio", 1)
    if ratio >= IMBALANCE_WARNING:
        report["warnings"].append(f"classes are imbalanced {ratio}:1 in train; consider --class-weights auto and --metric f1_macro")
    if ds.test is not None and report["splits"]["test"]["shared_with_train"]:
        n = report["splits"]["test"]["shared_with_train"]
        report["warnings"].append(f"{n} distinct test texts also appear in train (leakage): test scores are "
                                  "optimistic")
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = ["Data report", "  labels: " + ", ".join(f"{i}={n}" for i, n in report["labels"].items()),
             f"  cleaning: {report['cleaning']}",
             f"  max length {report['max_length']} tokens, truncation {report['truncation']}"]
    if "train_data" in report:
        w = report["train_data"]
        classes = ", ".join(f"{k} {v}" for k, v in w["classes"].items())
        lines.append(f"  train data as given: {w['rows']} rows ({classes}); duplicate rows {w['duplicate_rows']}, "
                     f"conflicting duplicates {w['conflicting_duplicates']}"
                     + (f"; distinct texts shared with test {w['shared_with_test']}" if "shared_with_test" in w else ""))
    for name, s in report["splits"].items():
        classes = ", ".join(f"{k} {v}" for k, v in s["classes"].items())
        lines.append(f"  {name}: {s['rows']} rows ({classes}) from {s['source']}")
        if "tokens" in s:
            t = s["tokens"]
            lines.append(f"    tokens: median {t['p50']}, p90 {t['p90']}, p99 {t['p99']}, max {t['max']}; "
                         f"{s['truncated']} truncated ({100 * s['truncated'] / max(s['rows'], 1):.1f}%)")
        lines.append(f"    duplicate rows {s['duplicate_rows']}, conflicting duplicates {s['conflicting_duplicates']}"
                     + (f", distinct texts shared with train {s['shared_with_train']}" if "shared_with_train" in s else ""))
    if report["skipped_rows"]:
        listed = report.get("skipped_list", "skipped_rows.csv")
        lines.append(f"  skipped rows: {report['skipped_rows']} " + (f"(listed in {listed})" if listed else
                                                                    "(pass --output DIR to get their list)"))
    lines.extend(f"  note: {n}" for n in report["notes"])
    lines.extend(f"  WARNING: {w}" for w in report["warnings"])
    return "\n".join(lines)


def report_files(report: dict[str, Any]) -> dict[str, str]:
    """The report's files by name: JSON for programs, text for people."""
    return {"data_report.json": json.dumps(report, indent=2, default=str) + "\n",
            "data_report.txt": format_report(report) + "\n"}


def save_report(report: dict[str, Any], folder: Path) -> None:
    from finetune_bert.safefiles import write_text_atomic

    for name, text in report_files(report).items():
        write_text_atomic(folder / name, text)


def inspect_data(cfg, output: str | None = None) -> dict[str, Any]:
    """`finetune-bert inspect`: the report alone; only the tokenizer is loaded, never the model. The files it
    writes in `output` are recorded in the folder's marker, so a later `train` there may replace them."""
    from finetune_bert.data import load_dataset
    from finetune_bert.skipped import write_skipped
    from finetune_bert.model import load_model_config, load_tokenizer
    from finetune_bert.output import say
    from finetune_bert.tokens import encode_splits

    for warning in cfg.warnings():
        say(f"warning: {warning}")
    if output:
        _check_report_folder(cfg, Path(output))  # before the data is read: a report with nowhere to go is lost work
    ds = load_dataset(cfg)  # data problems surface before any model file is touched
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    tokens = encode_splits(ds, tokenizer, load_model_config(cfg.model, cfg.trust_remote_code),
                           max_length=cfg.max_length, truncation=cfg.truncation, head_tokens=cfg.head_tokens)
    if tokens.warning:
        say(f"warning: {tokens.warning}")
    report = build_report(ds, tokens.splits, tokens.max_length, cfg.truncation, cfg.clean)
    if not output:
        report["skipped_list"] = None  # nowhere to write it: say how to get it
    print(format_report(report))
    if output:
        from finetune_bert.safefiles import claim
        claim(Path(output), REPORT_FILES)  # before they exist, as a run folder owns its files
        save_report(report, Path(output))
        write_skipped(ds.skipped, Path(output) / "skipped_rows.csv")
    return report


REPORT_FILES = ("data_report.json", "data_report.txt", "skipped_rows.csv")


def _check_report_folder(cfg, folder: Path) -> None:
    """inspect --output: a writable folder, outside the data, not a trained model's folder (whose report
    describes that model's run), and none of the files it writes an input."""
    from finetune_bert.config import output_in_data
    from finetune_bert.safefiles import check_output_file, check_output_folder, read_marker

    check_output_folder(str(folder), "--output")
    problems = output_in_data(cfg, folder)
    if "train_log.jsonl" in read_marker(folder)["files"]:  # a training run's folder, finished or not
        problems.append(f"--output {folder} holds a training run, and its data report describes that run; "
                        "choose another folder for this report")
    if problems:
        from finetune_bert.errors import UserError
        raise UserError("; ".join(problems))
    for name in REPORT_FILES:
        check_output_file(folder / name, "--output", inputs=[cfg.data, cfg.val_data, cfg.test_data])
