"""`evaluate` with the next chunk read and tokenized while this one is scored (the default) against
`--no-overlap`, on the same model and IMDB test reviews, alternated, in one run; whole-command wall time.

    python benchmarks/eval_overlap.py --model DIR --n 2000 --repeats 2     # DIR: a fine-tuned model folder

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

from bench import DATA, hardware, load_reviews, now, publish


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a fine-tuned model folder")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    texts, labels = load_reviews(DATA / "test.csv.gz", args.n)
    times: dict[str, list[float]] = {"overlap": [], "no-overlap": []}
    with tempfile.TemporaryDirectory() as tmp:
        import pandas as pd

        data = Path(tmp) / "reviews.csv"
        pd.DataFrame({"text": texts, "label": labels}).to_csv(data, index=False)
        accuracy = {}
        for _ in range(args.repeats):
            for mode in times:
                out = Path(tmp) / f"{mode}.json"
                command = [sys.executable, "-m", "finetune_bert", "evaluate", "--model", args.model, "--data",
                           str(data), "--output", str(out), *(["--no-overlap"] if mode == "no-overlap" else [])]
                started = time.time()
                subprocess.run(command, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
                times[mode].append(time.time() - started)
                accuracy[mode] = json.loads(out.read_text())["accuracy"]
    best = {m: min(t) for m, t in times.items()}
    lines = [f"\n### evaluate: overlapped chunks against --no-overlap ({now()})\n",
             f"- hardware: {hardware()}; {args.n} IMDB test reviews; model {args.model}",
             f"- command: `python benchmarks/eval_overlap.py --model {args.model} --n {args.n} --repeats {args.repeats}`\n",
             "| mode | runs (s) | best (s) | accuracy |", "| --- | --- | --- | --- |"]
    lines += [f"| {m} | {', '.join(f'{t:.1f}' for t in times[m])} | {best[m]:.1f} | {accuracy[m]:.4f} |" for m in times]
    lines.append(f"\noverlap / no-overlap: {best['no-overlap'] / best['overlap']:.2f}x faster\n")
    publish("\n".join(lines), not args.no_record)


if __name__ == "__main__":
    main()
