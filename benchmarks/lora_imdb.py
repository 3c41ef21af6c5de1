"""LoRA against full fine-tuning on IMDB, side by side in one run (benchmarks/RESULTS.md, "LoRA"):

    python benchmarks/lora_imdb.py [--out DIR] [--train 2000] [--test 1000] [--max-length 256] [--epochs 2]
                                   [--seeds 1,2,3] [--model minilm] [--full-lr 5e-5] [--lora-lr 5e-4]

Each run is a real `finetune-bert train` process on the same seeded sample of IMDB train reviews, scored on the
same seeded sample of test reviews: full fine-tuning and `--lora` (rank 8, alpha 16, query and value), for each
seed. Reported per run: test accuracy, seconds per optimizer step (train_log.jsonl), the process's peak RSS, and
a checkpoint's size (weights and optimizer state). A run whose folder holds metrics.json is read, not run again.
Prints one JSON line with the means and spreads, the date and the CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench import cpu_model, load_reviews, now

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb"
# the training process reports its own peak RSS: a child's ru_maxrss is its own, not a sum over children
RUN = ("import resource, sys; from finetune_bert.cli.main import main; code = main(sys.argv[1:]) or 0; "
       "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)")


def _sample(out: Path, name: str, split: str, n: int, seed: int) -> Path:
    path = out / f"{name}.csv"
    if not path.exists():
        texts, labels = load_reviews(DATA / f"{split}.csv.gz", n, seed)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(zip(texts, labels))
    return path


def _train(folder: Path, args: argparse.Namespace, seed: int, lora: bool) -> dict:
    if not (folder / "metrics.json").exists():
        command = [sys.executable, "-c", RUN, "train", "--model", args.model, "--data", str(args.out / "train.csv"),
                   "--test-data", str(args.out / "test.csv"), "--output", str(folder), "--max-length",
                   str(args.max_length), "--epochs", str(args.epochs), "--seed", str(seed), "--no-report",
                   "--no-export", "--keep-checkpoints", "1", "--overwrite",
                   *(["--lora", "--lr", str(args.lora_lr)] if lora else ["--lr", str(args.full_lr)])]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        peak = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
        (folder / "peak_rss_kb.txt").write_text(peak[-1] + "\n")
    return _measures(folder)


def _measures(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    (checkpoint,) = sorted((folder / "checkpoints").glob("step-*"))[-1:]
    size = sum((checkpoint / name).stat().st_size for name in ("model.safetensors", "optimizer.pt"))
    return {"accuracy": metrics["test"]["accuracy"], "step_s": metrics["train"]["seconds"] / metrics["train"]["steps"],
            "peak_rss_mb": int((folder / "peak_rss_kb.txt").read_text()) / 1024, "checkpoint_mb": size / 2**20,
            "train_s": metrics["train"]["seconds"]}


def _summary(runs: list[dict]) -> dict:
    out = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        out[key] = round(statistics.mean(values), 4)
        if len(values) > 1:
            out[key + "_std"] = round(statistics.stdev(values), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/lora-imdb"))
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--full-lr", type=float, default=5e-5)
    parser.add_argument("--lora-lr", type=float, default=5e-4)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    _sample(args.out, "train", "train", args.train, 0)
    _sample(args.out, "test", "test", args.test, 1)
    seeds = [int(s) for s in args.seeds.split(",")]
    result = {"date": now(), "cpu": cpu_model(), "train": args.train, "test": args.test, "max_length": args.max_length,
              "epochs": args.epochs, "model": args.model, "seeds": seeds}
    for name, lora in (("full", False), ("lora", True)):
        runs = [_train(args.out / f"{name}-seed{seed}", args, seed, lora) for seed in seeds]
        result[name] = {"runs": runs, **_summary(runs)}
    full, lora = result["full"], result["lora"]
    result["accuracy_gap_points"] = round(100 * (full["accuracy"] - lora["accuracy"]), 2)
    result["checkpoint_ratio"] = round(full["checkpoint_mb"] / lora["checkpoint_mb"], 1)
    result["step_ratio"] = round(full["step_s"] / lora["step_s"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
