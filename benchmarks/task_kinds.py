"""The three new task kinds on real data (../shared/data), ours against the TF-IDF baseline on the same rows,
in one run: MiniLM fine-tuned by `finetune-bert train`, then benchmarks/baselines.py's model.

    python benchmarks/task_kinds.py {goemotions,imdb-ratings,mrpc,sst2} [--out DIR] [--max-train-samples N]
        [--max-test-samples N] [--epochs E] [--lr LR]

A run folder that already holds metrics.json is read, not trained again (so a long run can be scored after
the fact). Prints one JSON line: the dataset, the rows, our numbers, the baseline's, their differences, the
seconds each took, the date and the CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import baselines
from bench import cpu_model, now

HERE = Path(__file__).resolve().parent
DATA = baselines.DATA

# Our settings per dataset: what the tool is given besides --model minilm (all four splits as the issue names
# them: GoEmotions' own validation; MRPC and SST-2 scored on their dev set, their validation held out of train).
SETTINGS = {
    "goemotions": ["--task", "multi-label", "--val-data", "validation", "--test-data", "test", "--epochs", "3",
                   "--lr", "1e-4", "--batch-size", "32", "--max-length", "64"],
    "imdb-ratings": ["--task", "regression", "--label-column", "rating", "--test-data", "test", "--epochs", "2",
                     "--lr", "1e-4", "--batch-size", "16", "--max-length", "256"],
    "mrpc": ["--test-data", "validation", "--epochs", "5", "--lr", "5e-5", "--batch-size", "16", "--max-length", "128"],
    "sst2": ["--test-data", "validation", "--epochs", "2", "--lr", "5e-5", "--batch-size", "32", "--max-length", "64"],
}


def _args(name: str, out: Path, extra: list[str]) -> list[str]:
    given = set(extra[::2])  # an option given on the command line replaces the setting's
    pairs = zip(SETTINGS[name][::2], SETTINGS[name][1::2])
    settings = [x for option, value in pairs if option not in given
                for x in (option, str(DATA / name / f"{value}.csv.gz") if value in ("validation", "test") else value)]
    return ["train", "--model", "minilm", "--data", str(DATA / name / "train.csv.gz"), "--output", str(out),
            "--no-report", *settings, *extra]


def ours(name: str, out: Path, extra: list[str]) -> tuple[dict, float | None]:
    """Our test metrics (train's metrics.json), training first unless the folder holds a finished run."""
    seconds = None
    if not (out / "metrics.json").is_file():
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "finetune_bert.cli", *_args(name, out, extra)], check=True,
                       stdout=sys.stderr)  # the training log beside the result line, not in it
        seconds = round(time.perf_counter() - started, 1)
    return json.loads((out / "metrics.json").read_text()), seconds


def headline(name: str, metrics: dict) -> dict:
    """The numbers the issue states for each dataset, from our metrics.json."""
    test = metrics["test"]
    if name == "goemotions":
        return {"macro_f1_tuned": test["f1_macro"], "macro_f1_at_0.5": test["at_0.5"]["f1_macro"],
                "micro_f1_tuned": test["f1_micro"]}
    if name == "imdb-ratings":
        return {k: test[k] for k in ("rmse", "mae", "r2", "pearson", "spearman", "within_1")}
    if name == "mrpc":
        return {"accuracy": test["accuracy"], "f1": test["per_class"]["1"]["f1"]}
    return {"accuracy": test["accuracy"]}


def baseline(name: str, n: int | None, test_n: int | None, seed: int) -> dict:
    """The chosen-hyperparameter baseline's numbers on the same train rows (and test rows, if sampled)."""
    if name == "imdb-ratings" and test_n is not None:
        train = baselines.sample_rows(baselines.read(name, "train"), n, seed)
        test = baselines.sample_rows(baselines.read(name, "test"), test_n, seed)
        rows = baselines.imdb_ratings(train, test, seed, (1, 2))["rows"]
    else:
        rows = baselines.run(name, n, seed, (1, 2))
    m = rows[-1]["metrics"]
    keys = {"goemotions": {"macro_f1_tuned": "test_macro_f1_tuned", "macro_f1_at_0.5": "test_macro_f1@0.5",
                           "micro_f1_tuned": "test_micro_f1_tuned"},
            "imdb-ratings": {k: f"test_{k}" for k in ("rmse", "mae", "r2", "pearson", "spearman")}
            | {"within_1": "test_within1_raw"},
            "mrpc": {"accuracy": "val_accuracy", "f1": "val_f1_pos"}, "sst2": {"accuracy": "val_accuracy"}}[name]
    return {ours_key: m.get(theirs) for ours_key, theirs in keys.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=tuple(SETTINGS))
    parser.add_argument("--out", default="/tmp/task-kinds")
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--max-test-samples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-baseline", action="store_true", help="ours only (the baseline measured in another run)")
    args, extra = parser.parse_known_args()
    sampled = [*(["--max-train-samples", str(args.max_train_samples)] if args.max_train_samples else []),
               *(["--max-test-samples", str(args.max_test_samples)] if args.max_test_samples else []),
               "--seed", str(args.seed)]
    metrics, seconds = ours(args.dataset, Path(args.out) / args.dataset, sampled + extra)
    mine = headline(args.dataset, metrics)
    started = time.perf_counter()
    theirs = {} if args.no_baseline else baseline(args.dataset, args.max_train_samples, args.max_test_samples, args.seed)
    print(json.dumps({"dataset": args.dataset, "date": now(), "cpu": cpu_model(), "train_rows": metrics["train"]["examples"],
                      "test_rows": metrics["test"]["n"], "ours": mine, "baseline": theirs,
                      "difference": {k: round(mine[k] - theirs[k], 4) for k in mine if theirs.get(k) is not None},
                      "our_train_seconds": metrics["train"]["seconds"], "our_command_seconds": seconds,
                      "baseline_seconds": round(time.perf_counter() - started, 1), "extra": sampled + extra}))


if __name__ == "__main__":
    main()
