"""What a checkpoint costs: seconds to write (fsync included) and to load, and bytes on disk, for MiniLM-L6
and bert-base. The product's own `checkpoint.save` and `checkpoint.load`, of an `engine.Engine` after one
`steps.train_step` (AdamW's state exists only after a step). Prints a markdown table.

    python benchmarks/checkpoint_cost.py
    python benchmarks/checkpoint_cost.py --models bert-tiny-random     # a smoke run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import adamw, build_model
from finetune_bert.training import checkpoint
from finetune_bert.training.checkpoint import TrainState
from finetune_bert.engine.torch_engine import Engine
from finetune_bert.training.steps import train_step
from finetune_bert.data.tokens import Encoded


def cost(name: str) -> tuple[float, float, float]:
    """(best of three saves in s, MiB on disk, load s) on CPU."""
    engine = Engine(build_model(name, "sdpa"), torch.device("cpu"), 0, training=True)
    optimizer = adamw(engine, fused=False, lr=1e-5)
    enc = Encoded([np.arange(1000, 1016, dtype=np.int32)] * 2, np.full(2, 16), np.array([0, 1]))
    train_step(engine, optimizer, enc, np.arange(2), TrainState())
    with tempfile.TemporaryDirectory(prefix="checkpoint_cost-") as scratch:
        folder = Path(scratch)
        times = []
        for step in range(1, 4):
            start = time.perf_counter()
            path = checkpoint.save(folder, engine, optimizer, TrainState(step=step), keep=1)
            times.append(time.perf_counter() - start)
        size = sum(p.stat().st_size for p in path.iterdir())
        start = time.perf_counter()
        checkpoint.load(path, engine, optimizer)
        return min(times), size / 2**20, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm,bert-base-random",
                        help="comma-separated: minilm, bert-{base,small,tiny}-random, or model folders")
    args = parser.parse_args()
    print("| model | save | load | on disk |\n| --- | --- | --- | --- |")
    for name in args.models.split(","):
        save_s, mb, load_s = cost(name)
        print(f"| {name} | {save_s:.2f} s | {load_s:.2f} s | {mb:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
