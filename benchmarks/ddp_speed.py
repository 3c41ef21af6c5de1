"""Training samples/s of one process against N processes (DDP under torchrun, `--nproc-per-node N`).

Both runs are `finetune-bert train` on the same IMDB reviews, model, max length, global batch and seed, in
one invocation, one after the other. On the CPU the cores are shared out: one process gets all of them,
each of N gets 1/N (the launcher sets OMP_NUM_THREADS so). So on a CPU this measures what the split costs
(the gradient all-reduce over gloo, one vote a step, the per-process overhead), not a gain: the same cores
do the same FLOPs. Validation at the epoch end is inside both timings alike (sharded in the N-process run).

    python benchmarks/ddp_speed.py --n 512 --max-length 256 --nproc 2        # CPU, bundled MiniLM
    python benchmarks/ddp_speed.py --model bert-base-random --n 4096 --nproc 8   # a multi-GPU machine

Results are printed and appended to benchmarks/RESULTS.md (not with `--no-record`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import DATA, hardware, load_reviews, model_source, now, publish


def run(args: argparse.Namespace, data: Path, out: Path, nproc: int) -> dict:
    command = [sys.executable, "-m", "finetune_bert", "train", "--data", str(data), "--model", args.model_dir,
               "--output", str(out), "--epochs", "1", "--batch-size", str(args.batch_size), "--max-length",
               str(args.max_length), "--seed", "0", "--no-report", "--no-calibrate", "--val-fraction", "0.05",
               "--log-every", "1000", "--nproc-per-node", str(nproc)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)  # the launcher shares the cores out; one process takes them all
    started = time.time()
    done = subprocess.run(command, text=True, capture_output=True, env=env)
    if done.returncode:
        raise SystemExit(f"nproc {nproc} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    seconds = metrics["train"]["seconds"]
    return {"nproc": nproc, "train_s": seconds, "process_s": time.time() - started,
            "samples_s": metrics["train"]["examples"] / seconds, "val_acc": metrics["validation"]["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--n", type=int, default=512, help="IMDB training reviews")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch per step")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    args.model_dir = model_source(args.model)
    texts, labels = load_reviews(DATA / "train.csv.gz", args.n)
    with tempfile.TemporaryDirectory() as tmp:
        import pandas as pd

        data = Path(tmp) / "reviews.csv"
        pd.DataFrame({"text": texts, "label": labels}).to_csv(data, index=False)
        rows = [run(args, data, Path(tmp) / f"out{n}", n) for n in (1, args.nproc)]
    base = rows[0]["samples_s"]
    lines = [f"\n### DDP: 1 against {args.nproc} processes ({now()})\n",
             f"- hardware: {hardware()}; cores {os.cpu_count()}",
             f"- command: `python benchmarks/ddp_speed.py --model {args.model} --n {args.n} --max-length "
             f"{args.max_length} --batch-size {args.batch_size} --nproc {args.nproc}`",
             "- one epoch of `finetune-bert train`, global batch kept; train time includes the epoch-end validation\n",
             "| processes | train s | whole command s | samples/s | vs 1 process | validation accuracy |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['nproc']} | {r['train_s']:.1f} | {r['process_s']:.1f} | {r['samples_s']:.1f} | "
              f"{r['samples_s'] / base:.2f}x | {r['val_acc']:.4f} |" for r in rows]
    publish("\n".join(lines) + "\n", not args.no_record)


if __name__ == "__main__":
    main()
