"""What a checkpoint costs: seconds to write (fsync included) and bytes on disk, for MiniLM-L6 and bert-base.

    python benchmarks/checkpoint_cost.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import build_model  # noqa: E402

from finetune_bert import checkpoint  # noqa: E402
from finetune_bert.checkpoint import TrainState  # noqa: E402


def cost(name: str) -> tuple[float, float, float]:
    model = build_model(name, "sdpa")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    x = torch.randint(1000, 2000, (2, 16))
    model(input_ids=x, labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()  # AdamW state exists only after a step
    folder = Path(tempfile.mkdtemp())
    times = []
    for step in range(1, 4):
        start = time.perf_counter()
        path = checkpoint.save(folder, model, optimizer, TrainState(step=step), keep=1)
        times.append(time.perf_counter() - start)
    size = sum(p.stat().st_size for p in path.iterdir())
    start = time.perf_counter()
    checkpoint.load(path, model, optimizer, torch.device("cpu"))
    return min(times), size / 2**20, time.perf_counter() - start


if __name__ == "__main__":
    for name in ("minilm", "bert-base-random"):
        save_s, mb, load_s = cost(name)
        print(f"| {name} | {save_s:.2f} s | {load_s:.2f} s | {mb:.0f} MiB |")
