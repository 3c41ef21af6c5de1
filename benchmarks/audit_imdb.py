"""`finetune-bert audit` on IMDB, two measurements (benchmarks/RESULTS.md, "Label audit"):

    python benchmarks/audit_imdb.py noise [--out DIR] [--rows 2000] [--flip 0.05] [--max-length 128] ...
        2,000 IMDB train reviews with 5% of their labels flipped (seeded); audit --folds 5 with MiniLM, and
        against it in the same run `evaluate --errors K` of one model trained on the same noisy rows. Precision and
        recall of the flagged rows against the flipped ones, and precision at K = the number flipped, for both.
    python benchmarks/audit_imdb.py real [--out DIR] [--train-rows 4000] [--test-rows N] [--max-length 128] ...
        MiniLM fine-tuned on IMDB train audits the IMDB test split; writes the 20 worst issues to read.

A step whose output exists is read, not run again (a long run can be scored after the fact). Prints one JSON
line with the numbers, the seconds, the date and the CPU.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from bench import cpu_model, now

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb"
TOOL = [sys.executable, "-m", "finetune_bert.cli"]


def _run(*args: str) -> float:
    started = time.time()
    subprocess.run([*TOOL, *args], check=True)
    return round(time.time() - started, 1)


def _noisy(out: Path, rows: int, flip: float, seed: int, data: Path = DATA) -> tuple[Path, set[str]]:
    """`rows` train reviews (seeded sample) with `flip` of their labels flipped; the CSV lines flipped."""
    path, record = out / "noisy.csv", out / "flipped.json"
    if path.is_file() and record.is_file():
        return path, set(json.loads(record.read_text()))
    with gzip.open(data / "train.csv.gz", "rt", encoding="utf-8", newline="") as handle:
        reviews = list(csv.DictReader(handle))
    rng = random.Random(seed)
    chosen = rng.sample(reviews, rows)
    flipped = sorted(rng.sample(range(rows), round(rows * flip)))
    for i in flipped:
        chosen[i]["label"] = str(1 - int(chosen[i]["label"]))
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, ["text", "label"])
        writer.writeheader()
        writer.writerows(chosen)
    starts = _record_lines(path)
    lines = [f"line {starts[i]}" for i in flipped]  # as the tool names rows: the line a record starts on
    record.write_text(json.dumps(lines))
    return path, set(lines)


def _record_lines(path: Path) -> list[int]:
    """The line each CSV record starts on (a quoted field may span lines)."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader, starts, last = csv.reader(handle), [], 1
        next(reader)
        for _ in reader:
            starts.append(last + 1)
            last = reader.line_num
    return starts


def _rows_of(path: Path, column: str) -> list[str]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [r[column] for r in csv.DictReader(handle)]


def _scores(found: list[str], flipped: set[str], k: int) -> dict[str, float]:
    hits = len(set(found) & flipped)
    return {"flagged": len(found), "precision": round(hits / max(len(found), 1), 4),
            "recall": round(hits / len(flipped), 4), f"precision_at_{k}": round(len(set(found[:k]) & flipped) / k, 4)}


def noise(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, flipped = _noisy(out, args.rows, args.flip, args.seed, Path(args.data_dir))
    options = ["--model", "minilm", "--max-length", str(args.max_length), "--epochs", str(args.epochs), "--lr",
               str(args.lr), "--batch-size", "32", "--seed", str(args.seed)]
    seconds = {}
    if not (out / "audit" / "summary.json").is_file():
        seconds["audit"] = _run("audit", "--data", str(data), "--output", str(out / "audit"), "--folds", "5", *options)
    if not (out / "single" / "metrics.json").is_file():
        seconds["single_train"] = _run("train", "--data", str(data), "--output", str(out / "single"), "--no-report",
                                       *options)
    errors = out / "single-eval.errors.csv"
    if not errors.is_file():
        seconds["single_evaluate"] = _run("evaluate", "--model", str(out / "single"), "--data", str(data), "--output",
                                          str(out / "single-eval.json"), "--errors", str(len(flipped)))
    k = len(flipped)
    issues = _rows_of(out / "audit" / "label_issues.csv", "row")
    single = [r for r in _rows_of(errors, "row")]
    return {"benchmark": "audit-noise", "rows": args.rows, "flipped": k, "audit_folds_5": _scores(issues, flipped, k),
            "single_model_errors": _scores(single, flipped, k), "options": options, "seconds": seconds,
            "summary": json.loads((out / "audit" / "summary.json").read_text())["noise_rate"]}


def real(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, audit = out / "imdb-model", out / "imdb-test-audit"
    seconds = {}
    if not (model / "metrics.json").is_file():
        seconds["train"] = _run("train", "--data", str(Path(args.data_dir) / "train.csv.gz"), "--max-train-samples", str(args.train_rows),
                                "--model", "minilm", "--max-length", str(args.max_length), "--epochs", str(args.epochs),
                                "--lr", str(args.lr), "--batch-size", "32", "--no-report", "--output", str(model),
                                *(["--num-threads", str(args.threads)] if args.threads else []))
    if not (audit / "summary.json").is_file():
        sample = ["--max-train-samples", str(args.test_rows)] if args.test_rows else []
        seconds["audit"] = _run("audit", "--data", str(Path(args.data_dir) / "test.csv.gz"), "--model", str(model), "--output",
                                str(audit), "--on-bad-rows", "skip", "--top", "20", *sample,
                                *(["--num-threads", str(args.threads)] if args.threads else []))
    summary = json.loads((audit / "summary.json").read_text())
    with (audit / "label_issues.csv").open(encoding="utf-8", newline="") as handle:
        top = [r for _, r in zip(range(20), csv.DictReader(handle))]
    lines = [f"{r['rank']}. {r['row']} given {r['given_label']}, suggested {r['suggested_label']}, quality "
             f"{float(r['label_quality']):.4f}: {r['text'][:600]}" for r in top]
    (out / "top20.md").write_text("\n\n".join(lines) + "\n")
    return {"benchmark": "audit-real", "train_rows": args.train_rows, "audited": summary["rows"],
            "skipped_rows": summary["skipped_rows"], "flagged": summary["flagged"],
            "flagged_share": summary["flagged_share"], "noise_rate": summary["noise_rate"], "seconds": seconds,
            "top20": str(out / "top20.md")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("noise", "real"))
    parser.add_argument("--out", default="/tmp/audit-imdb")
    parser.add_argument("--data-dir", default=str(DATA), help="a folder with IMDB's train.csv.gz and test.csv.gz")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--flip", type=float, default=0.05)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--test-rows", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    started = time.time()
    result = noise(args) if args.what == "noise" else real(args)
    print(json.dumps({**result, "total_seconds": round(time.time() - started, 1), "date": now(), "cpu": cpu_model()}))


if __name__ == "__main__":
    main()
