"""Evaluation memory does not grow with the number of texts: peak RSS of `finetune-bert evaluate` and of
`predict --input` on 1k vs 25k.

The model is a small random BERT classifier with the bundled (bert-base-uncased) tokenizer: memory behaviour
of the streaming pipeline is what is measured, not accuracy, and a small model keeps 25k reviews quick on a CPU.

    python benchmarks/eval_memory.py [--data ../shared/data/imdb/test.csv.gz]
    python benchmarks/eval_memory.py --sizes 100,200     # a smoke run
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import DATA, save_random_bert


def measure(model: Path, data: Path, n: int, work: Path) -> tuple[float, float, float, float, float]:
    import csv
    import itertools

    subset = work / f"eval_{n}.csv"
    with gzip.open(data, "rt", newline="") as source, subset.open("w", newline="") as handle:
        csv.writer(handle).writerows(itertools.islice(csv.reader(source), n + 1))
    calls = {"evaluate": f"evaluate({str(model)!r},{str(subset)!r},{str(work / 'm.json')!r},batch_size=64,quiet=True)",
             "predict": f"predict_file(load({str(model)!r}),{str(subset)!r},{str(work / 'p.csv')!r},batch_size=64)"}
    # Peak RSS is VmHWM, the high-water mark of the child's own memory: ru_maxrss would also count this
    # parent's, which Linux carries into a child across fork and exec.
    peak = "int(dict(l.split(':',1) for l in open('/proc/self/status'))['VmHWM'].split()[0])/1024"
    results = []
    for call in calls.values():  # each in a fresh process
        code = ("import sys,time;from finetune_bert.evaluation.evaluate import evaluate;"
                f"from finetune_bert.inference.classifier import load;from finetune_bert.inference.files import predict_file;t=time.time();{call};"
                f"print({peak}, time.time()-t)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True).stdout.split()
        results += [float(out[-2]), float(out[-1])]
    return (*results, subset.stat().st_size / 2**20)


def table(work: Path, data: Path, sizes: list[int]) -> None:
    save_random_bert(work / "model", "small")
    print("| texts | input CSV | evaluate peak RSS | evaluate time | predict peak RSS | predict time |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for n in sizes:
        rss, seconds, p_rss, p_seconds, mb = measure(work / "model", data, n, work)
        print(f"| {n:,} | {mb:.1f} MiB | {rss:.0f} MiB | {seconds:.1f} s | {p_rss:.0f} MiB | {p_seconds:.1f} s |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA / "test.csv.gz")
    parser.add_argument("--sizes", default="1000,10000,25000", help="numbers of texts, comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eval_memory-") as scratch:
        table(Path(scratch), args.data, [int(n) for n in args.sizes.split(",")])


if __name__ == "__main__":
    main()
