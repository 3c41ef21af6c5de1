"""How many CUDA graphs an IMDB epoch needs: padding of the planned token buckets (graph_plan.plan) on the
real review lengths, for a few bucket counts. Tokenizing only: runs on a CPU, with no GPU needed.

    python benchmarks/graph_buckets.py --max-length 512 --batch-size 64

Results are printed and appended to benchmarks/RESULTS.md (not with `--no-record`).
"""

from __future__ import annotations

import argparse

import numpy as np

from bench import DATA, cpu_hardware, load_reviews, model_source, now, publish


def main() -> None:
    import graph_plan  # beside this script
    from finetune_bert.engine.model_folder import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n", type=int, default=25000)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    texts, _ = load_reviews(DATA / "train.csv.gz", args.n)
    tokenizer = load_tokenizer(model_source("minilm"))
    ids = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
    lengths = np.minimum(np.fromiter((len(x) for x in ids), dtype=np.int64), args.max_length)
    totals = graph_plan.step_totals(lengths, args.batch_size, seed=42, epochs=1)
    lines = [f"\n### CUDA-graph token buckets on IMDB ({now()})\n",
             f"- {args.n} train reviews, max length {args.max_length}, batch {args.batch_size}: {len(totals)} full "
             f"steps, {totals.min()}-{totals.max()} real tokens a step; planning on {cpu_hardware()}",
             f"- command: `python benchmarks/graph_buckets.py --max-length {args.max_length} --batch-size "
             f"{args.batch_size} --n {args.n}`\n",
             "| buckets | padding (of real tokens) | bucket sizes (tokens) |", "| --- | --- | --- |"]
    for k in (1, 2, 4, 8, 16, 32):
        buckets = graph_plan.plan(totals, k, args.max_length)
        sizes = ", ".join(str(b.tokens) for b in buckets) if k <= 8 else f"{buckets[0].tokens} ... {buckets[-1].tokens}"
        lines.append(f"| {len(buckets)} | {graph_plan.padding(totals, buckets, args.max_length):.1%} | {sizes} |")
    publish("\n".join(lines) + "\n", not args.no_record)


if __name__ == "__main__":
    main()
