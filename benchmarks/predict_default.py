"""The default `finetune-bert predict` (no --backend: auto, the fastest exact backend here) against
`transformers.pipeline("text-classification", truncation=True)` on the same model folder, whole processes,
start-up included; with `--backend torch-fp32` (the exact reference) and `--backend onnx-int8` beside them.

    python benchmarks/predict_default.py --model runs/imdb-minilm [--limit 1000] [--repeats 1] [--no-record]

MODEL is a fine-tuned folder (a `train` output has the fp32 export auto runs on a CPU without AMX); its int8
export is made here if it has none. `--limit` IMDB test reviews (a seeded sample of /work/shared/data/imdb's
test.csv.gz) are written to one CSV, and each setup runs as a fresh process over it, timed from its start to
its exit; the order rotates between repeats and each setup's best time is kept. Reported: seconds, the speed
as a ratio to the pipeline's, accuracy, and how often each setup's label is torch fp32's; with the CPU's model
and vector extensions, and the backend auto chose (its line on stderr). The default reads long reviews whole
(windows), as predict does by default; the pipeline cuts them at the tokenizer's limit.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import pandas as pd

from bench import (DATA, PIPELINE, accuracy, cpu_isa, cpu_model, csv_head, int8_export, load_reviews, now,
                   predicted_labels, publish, timed_process)

OURS = {"predict (default: auto)": [], "predict --backend torch-fp32": ["--backend", "torch-fp32"],
        "predict --backend onnx-int8": ["--backend", "onnx-int8"]}
PIPELINE_NAME = "transformers.pipeline (truncation=True)"


def _run(name: str, args, data: Path, work: Path) -> tuple[float, list[str], float, str]:
    """One setup as a fresh process: seconds, its labels, its accuracy, and what it said on stderr."""
    labels = work / re.sub(r"\W+", "-", name).strip("-")
    if name == PIPELINE_NAME:
        seconds, out, err = timed_process([sys.executable, "-c", PIPELINE, args.model, str(data), "0",
                                           str(args.pipeline_batch_size), str(labels)])
        return seconds, labels.read_text().splitlines(), float(out.split("ACCURACY")[1]), err
    output = labels.with_suffix(".csv")
    output.unlink(missing_ok=True)
    seconds, _, err = timed_process([sys.executable, "-m", "finetune_bert.cli", "predict", "--model", args.model,
                                     "--input", str(data), "--output", str(output), *OURS[name]])
    return seconds, predicted_labels(output), accuracy(output), err


def _chosen(err: str) -> str:
    """The backend auto chose and why, from the default's own line on stderr."""
    found = re.search(r"note: backend (\S+) \(auto: (.*)\)", err)
    return f"`{found.group(1)}` ({found.group(2)})" if found else "not said"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a fine-tuned model folder")
    parser.add_argument("--data", default=str(DATA / "test.csv.gz"), help="a labelled IMDB CSV (text, label 0/1)")
    parser.add_argument("--limit", type=int, default=1000, help="reviews drawn from --data (seeded)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each setup, alternated; the best is kept")
    parser.add_argument("--pipeline-batch-size", type=int, default=32)
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    int8_export(args.model)
    work = Path(tempfile.mkdtemp(prefix="predict-default-"))
    texts, labels = load_reviews(Path(args.data), args.limit, args.seed)
    data = work / "reviews.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(data, index=False)
    # an untimed pass first: the first process of a run meets a cold page cache (infer_speed.py, 2026-12-03)
    timed_process([sys.executable, "-c", PIPELINE, args.model, csv_head(str(data), work / "warm-up.csv", 64), "0",
                   "8", "-"])
    names = [PIPELINE_NAME, *OURS]
    best: dict[str, tuple[float, list[str], float, str]] = {}
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            result = _run(name, args, data, work)
            print(f"{name}: {result[0]:.1f} s", file=sys.stderr)
            if name not in best or result[0] < best[name][0]:
                best[name] = result
    publish(_table(args, best, len(texts)), record=not args.no_record)


def _table(args, best: dict[str, tuple[float, list[str], float, str]], n: int) -> str:
    base = best[PIPELINE_NAME][0]
    reference = best["predict --backend torch-fp32"][1]
    rows = []
    for name, (seconds, labels, acc, _) in best.items():
        agree = sum(a == b for a, b in zip(labels, reference)) / len(reference)
        rows.append(f"| {name} | {seconds:.1f} | {n / seconds:.1f} | {base / seconds:.2f}x | {acc:.2%} | {agree:.2%} |")
    return "\n".join([
        f"\n### {now()}: the default predict against transformers.pipeline, whole processes ({n} IMDB test reviews)\n",
        f"Hardware: CPU {cpu_model()}; {cpu_isa()}. auto chose {_chosen(best['predict (default: auto)'][3])}.",
        f"Command: `python benchmarks/predict_default.py --model {args.model}"
        + (f" --data {args.data}" if args.data != str(DATA / "test.csv.gz") else "")
        + f" --limit {args.limit} --seed {args.seed} --repeats {args.repeats}`\n",
        "| setup | seconds | reviews/s | vs pipeline | accuracy | label = torch fp32's |",
        "| --- | --- | --- | --- | --- | --- |", *rows,
        f"\nBest of {args.repeats} run(s) each, order rotated; pipeline batch {args.pipeline_batch_size}. predict "
        "reads long reviews whole (windows, its default); the pipeline cuts them at the tokenizer's limit.\n"])


if __name__ == "__main__":
    main()
