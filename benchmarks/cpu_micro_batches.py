"""CPU micro-batches against whole batches, side by side in one process (issue 5).

A MiniLM-L6 training step, the product's (`steps.train_step` through an `engine.Engine` with its defaults:
lane dropout, the [CLS]-only last layer; AdamW), on real IMDB batches of 16 reviews at max length 512, once
with `--no-cpu-micro-batches` (whole batches) and once with the default micro-batches (no fp32 activation
over glibc's 32 MiB mmap threshold, see batches.Layout.fit). The two take turns, in alternating order, on
the longest batch of the epoch, a middle one and a short one. For each: wall time, minor page faults and
system time of the step (getrusage). Prints a markdown block; `--record` appends it to RESULTS.md.

    python benchmarks/cpu_micro_batches.py --reps 4 --record
    python benchmarks/cpu_micro_batches.py --n 48 --reps 1 --max-length 64     # a smoke run
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

from bench import DATA, adamw, cpu_hardware, load_reviews, now, publish


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA / "train.csv.gz", help="a CSV with text and label columns")
    parser.add_argument("--n", type=int, default=400, help="reviews to draw the batches from (at least 48)")
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--record", action="store_true", help="append the result to RESULTS.md")
    return parser.parse_args()


def setup(args) -> tuple:
    """(the reviews tokenized, one engine per flag over one MiniLM, their optimizer, the three batches)."""
    import torch

    from finetune_bert.engine.batches import train_batches
    from finetune_bert.engine.torch_engine import Engine, EngineOptions
    from finetune_bert.engine.model_folder import load_classifier, load_tokenizer
    from finetune_bert.data.tokens import encode

    texts, labels = load_reviews(args.data, args.n)
    torch.manual_seed(0)
    tokenizer = load_tokenizer("minilm")
    model = load_classifier("minilm", ["negative", "positive"]).train()
    enc = encode(tokenizer, texts, labels, args.max_length, "head+tail")
    batches = train_batches(enc.lengths, 16, 0, 0, True)
    longest = sorted(batches, key=lambda b: -int(enc.lengths[b].max()))
    picks = [longest[0], longest[len(longest) // 2], longest[-2]]  # [-1] may be a short remainder batch
    # Two engines over the same model, differing only in --no-cpu-micro-batches; one optimizer steps both.
    engines = {flag: Engine(model, torch.device("cpu"), tokenizer.pad_token_id,
                            options=EngineOptions(cpu_micro_batches=flag), training=True) for flag in (False, True)}
    return enc, engines, adamw(engines[True], fused=False, lr=1e-5), picks


def measure(enc, engines: dict, optimizer, picks: list, reps: int) -> dict:
    """(batch number, flag) -> [(wall s, minor page faults, system s)] of each alternated step."""
    from finetune_bert.training.checkpoint import TrainState
    from finetune_bert.training.steps import train_step

    runs = {(i, flag): [] for i in range(len(picks)) for flag in (False, True)}

    def step(batch, flag) -> tuple[float, int, float]:
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        train_step(engines[flag], optimizer, enc, batch, TrainState(total_steps=100))
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        return wall, after.ru_minflt - before.ru_minflt, after.ru_stime - before.ru_stime

    step(picks[-1], True)  # warm-up
    for rep in range(reps):
        for i, batch in enumerate(picks):
            for flag in ((False, True) if rep % 2 == 0 else (True, False)):
                runs[(i, flag)].append(step(batch, flag))
                print(i, flag, runs[(i, flag)][-1], flush=True)
    return runs


def table(enc, fit, picks: list, runs: dict) -> str:
    from finetune_bert.engine.batches import micro_batches

    med = statistics.median
    rows = []
    for i, batch in enumerate(picks):
        whole, micro = runs[(i, False)], runs[(i, True)]
        shape = f"16 x {int(enc.lengths[batch].max())} (mean {enc.lengths[batch].mean():.0f})"
        pieces = len(micro_batches(batch, enc.lengths[batch], 1, fit))
        rows.append(f"| {shape} | {pieces} | {med(w for w, _, _ in whole):.2f} | {med(w for w, _, _ in micro):.2f} | "
                    f"{med(w for w, _, _ in whole) / med(w for w, _, _ in micro):.2f}x | "
                    f"{med(f for _, f, _ in whole):,.0f} / {med(f for _, f, _ in micro):,.0f} | "
                    f"{med(s for _, _, s in whole):.2f} / {med(s for _, _, s in micro):.2f} |")
    return ("| batch | micro-batches | whole s | micro s | speed-up | page faults whole / micro | "
            "system s whole / micro |\n| --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n")


def main() -> None:
    args = parse_args()
    enc, engines, optimizer, picks = setup(args)
    runs = measure(enc, engines, optimizer, picks, args.reps)
    text = (f"\n### {now()}: CPU micro-batches against whole batches, MiniLM-L6 training step\n\n"
            f"Hardware: {cpu_hardware()}. "
            f"{args.reps} alternated reps, medians.\n"
            f"Command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`\n\n"
            + table(enc, engines[True].layout.fit, picks, runs))
    publish(text, args.record)


if __name__ == "__main__":
    main()
