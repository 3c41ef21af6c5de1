"""The data report: what a user should know about their data before spending compute on it. It only reports:
the texts are tokenized by the tokens stage (tokens.encode_splits) and handed to it."""

from __future__ import annotations

import json
from collections import Counter
from itertools import combinations
from typing import Any
import numpy as np
from finetune_bert.data.dataset import Dataset
from finetune_bert.data.hashing import split_hashes
from finetune_bert.data.splits import Split, factorized
from finetune_bert.data.tokens import Encoded
from finetune_bert.tasks import CLASSIFICATION, MULTI_LABEL, REGRESSION


IMBALANCE_WARNING = 3.0  # majority / minority class ratio worth a warning
SHOWN_CLASSES = 20  # classes named in the printed report; data_report.json holds every one


def _label_counts(split: Split, task: str) -> Counter:
    """Rows per class; for label sets, rows holding each label (a row counts once per label it has)."""
    if split.labels is None or task == REGRESSION:
        return Counter()
    if task == MULTI_LABEL:
        return Counter(x for labels in split.labels for x in labels)
    return Counter(split.labels)


def _kind_report(split: Split, task: str) -> dict[str, Any]:
    """Multi-label: labels per text and the most frequent pairs of labels; regression: the targets."""
    if task == MULTI_LABEL:
        sizes = np.fromiter((len(x) for x in split.labels), dtype=np.int64, count=len(split))
        pairs = Counter(tuple(sorted(map(str, c))) for labels in split.labels for c in combinations(labels, 2))
        return {"labels_per_text": {"mean": round(float(sizes.mean()), 3), "none": int((sizes == 0).sum()),
                                    "one": int((sizes == 1).sum()), "several": int((sizes > 1).sum())},
                "co_occurring": [{"labels": list(k), "rows": v} for k, v in pairs.most_common(10)]}
    if task == REGRESSION:
        values = np.asarray(split.labels, dtype=np.float64)
        counts, edges = np.histogram(values, bins=min(20, max(1, len(np.unique(values)))))
        return {"target": {"mean": round(float(values.mean()), 4), "std": round(float(values.std()), 4),
                           **{f"p{q}": float(np.percentile(values, q)) for q in (0, 10, 50, 90, 100)},
                           "histogram": {"counts": counts.tolist(), "edges": [float(e) for e in edges]}}}
    return {}


def _duplicates(split: Split, hashes: np.ndarray) -> tuple[int, int]:
    """(rows whose text repeats an earlier row's, distinct texts that carry different labels), from the texts'
    hashes (data.hashing) and the labels' codes, sorted together: never a set of the texts."""
    if not len(hashes):
        return 0, 0
    codes = np.zeros(len(split), dtype=np.int64) if split.labels is None else factorized(split.labels)[1]
    order = np.lexsort((codes, hashes))
    ordered = hashes[order]
    new_text = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    text_of = np.cumsum(new_text)
    codes = codes[order]
    relabelled = np.concatenate([[False], (codes[1:] != codes[:-1]) & ~new_text[1:]])
    return int(len(hashes) - text_of[-1]), len(np.unique(text_of[relabelled]))


def _split_report(split: Split, encoded: Encoded | None, names: list[str], to_id: dict, max_length: int,
                  task: str = CLASSIFICATION, *, hashes: np.ndarray | None = None) -> dict:
    counts = _label_counts(split, task)
    duplicates, conflicting = _duplicates(split, hashes if hashes is not None else split_hashes(split, "exact"))
    entry: dict[str, Any] = {
        "source": split.source,
        "rows": len(split),
        "classes": {names[to_id[k]] if k in to_id else str(k): v for k, v in sorted(
            counts.items(), key=lambda kv: to_id.get(kv[0], 1 << 30))},
        "duplicate_rows": duplicates,
        "conflicting_duplicates": conflicting,
    }
    if counts:
        entry["imbalance_ratio"] = round(max(counts.values()) / min(counts.values()), 2)
    if split.labels is not None:
        entry.update(_kind_report(split, task))
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
    known: dict[int, np.ndarray] = {}

    def hashed(split: Split) -> np.ndarray:  # each split's texts hashed once
        if id(split) not in known:
            known[id(split)] = split_hashes(split, "exact")
        return known[id(split)]

    report: dict[str, Any] = {
        "labels": {i: n for i, n in enumerate(ds.label_names)},
        "label_values": {n: raw for n, raw in zip(ds.label_names, ds.raw_labels)},
        **({"pairs": list(ds.train.columns[::2])} if ds.train.pairs is not None and ds.train.columns else {}),
        "cleaning": "on: '<br />' tags and HTML entities turned into text" if clean else "off",
        "max_length": max_length,
        "truncation": truncation,
        "task": ds.task,
        "splits": {name: _split_report(s, encoded.get(name), ds.label_names, to_id, max_length, ds.task,
                                         hashes=hashed(s))
                   for name, s in splits.items() if s is not None},
        "skipped_rows": len(ds.skipped),
        "notes": list(ds.notes),
        "warnings": [],
    }
    if ds.train_all is not None and ds.train_all is not ds.train:
        whole = _split_report(ds.train_all, None, ds.label_names, to_id, max_length, ds.task,
                              hashes=hashed(ds.train_all))
        if ds.test is not None:
            whole["shared_with_test"] = len(np.intersect1d(hashed(ds.train_all), hashed(ds.test)))
        report["train_data"] = whole
    for name, other in (("validation", ds.val), ("test", ds.test)):
        if other is not None:  # distinct texts in both
            report["splits"][name]["shared_with_train"] = len(np.intersect1d(hashed(ds.train), hashed(other)))
    ratio = report["splits"]["train"].get("imbalance_ratio", 1)
    if ratio >= IMBALANCE_WARNING:
        report["warnings"].append(f"labels are imbalanced {ratio}:1 in train; consider --class-weights auto"
                                  if ds.task == MULTI_LABEL else f"classes are imbalanced {ratio}:1 in train; consider "
                                  "--class-weights auto and --metric f1_macro")
    if ds.test is not None and report["splits"]["test"]["shared_with_train"]:
        n = report["splits"]["test"]["shared_with_train"]
        report["warnings"].append(f"{n} distinct test texts also appear in train (leakage): test scores are "
                                  "optimistic")
    return report


def format_report(report: dict[str, Any]) -> str:
    labels = list(report["labels"].items())
    shown = ", ".join(f"{i}={n}" for i, n in labels[:SHOWN_CLASSES])
    if len(labels) > SHOWN_CLASSES:
        shown += f", and {len(labels) - SHOWN_CLASSES} more (all of them in data_report.json)"
    lines = ["Data report", "  labels: " + shown,
             f"  cleaning: {report['cleaning']}",
             f"  max length {report['max_length']} tokens, truncation {report['truncation']}"]
    if "train_data" in report:
        w = report["train_data"]
        classes = _classes_text(w["classes"])
        lines.append(f"  train data as given: {w['rows']} rows{f' ({classes})' if classes else ''}; duplicate rows {w['duplicate_rows']}, "
                     f"conflicting duplicates {w['conflicting_duplicates']}"
                     + (f"; distinct texts shared with test {w['shared_with_test']}" if "shared_with_test" in w else ""))
    if "pairs" in report:
        lines.append(f"  text pairs: {report['pairs'][0]!r} and {report['pairs'][1]!r}, read as one sequence")
    for name, s in report["splits"].items():
        classes = _classes_text(s["classes"])
        lines.append(f"  {name}: {s['rows']} rows{f' ({classes})' if classes else ''} from {s['source']}")
        lines.extend(_kind_lines(s))
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


def _kind_lines(s: dict[str, Any]) -> list[str]:
    if "labels_per_text" in s:
        k = s["labels_per_text"]
        pairs = ", ".join(f"{'+'.join(c['labels'])} {c['rows']}" for c in s["co_occurring"][:5])
        return [f"    labels per text: mean {k['mean']}; {k['none']} with none, {k['one']} with one, {k['several']} "
                f"with several" + (f"; most frequent together: {pairs}" if pairs else "")]
    if "target" in s:
        t = s["target"]
        return [f"    target: mean {t['mean']:g}, std {t['std']:g}, min {t['p0']:g}, median {t['p50']:g}, "
                f"max {t['p100']:g}"]
    return []


def _classes_text(classes: dict[str, int]) -> str:
    """Each class with its rows, in id order; with many classes, the largest SHOWN_CLASSES and a count of the
    rest, so that the report stays one screen (the JSON keeps them all)."""
    if len(classes) <= SHOWN_CLASSES:
        return ", ".join(f"{k} {v}" for k, v in classes.items())
    largest = sorted(classes.items(), key=lambda kv: -kv[1])
    rest = largest[SHOWN_CLASSES:]
    return (", ".join(f"{k} {v}" for k, v in largest[:SHOWN_CLASSES])
            + f", and {len(rest)} smaller classes with {sum(v for _, v in rest)} rows")


def report_files(report: dict[str, Any]) -> dict[str, str]:
    """The report's files by name: JSON for programs, text for people."""
    return {"data_report.json": json.dumps(report, indent=2, default=str) + "\n",
            "data_report.txt": format_report(report) + "\n"}
