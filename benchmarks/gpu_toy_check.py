"""On a GPU: does the toy task of the test suite learn the same under each GPU path? And where a packed
bert-base step spends its time (torch.profiler), for benchmarks/NOTES.md.

Both go through the product: `finetune_bert.training.train` for the toy task, an `engine.Engine` and
`steps.train_step` (bf16 weights with fp32 masters, the CUDA default) for the profile. Without CUDA it is a
smoke run (a tiny BERT, CPU activity only), not a measurement:

    python benchmarks/gpu_toy_check.py
    python benchmarks/gpu_toy_check.py --epochs 1 --batch 4 --max-text 64
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench import adamw, random_bert, sync, tiny_bert_folder, toy_csv
from finetune_bert import train
from finetune_bert.training.checkpoint import TrainState
from finetune_bert.engine.torch_engine import Engine
from finetune_bert.inference.classifier import load
from finetune_bert.training.steps import train_step
from finetune_bert.data.tokens import Encoded

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a smoke run of the script itself


def toy(epochs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="gpu_toy_check-") as scratch:
        toy_runs(Path(scratch), epochs)


def toy_runs(work: Path, epochs: int) -> None:
    model = tiny_bert_folder(work / "tiny")
    data = toy_csv(work / "train.csv", 160, seed=1)
    test = toy_csv(work / "test.csv", 40, seed=2)
    for name, kw in [("packed bf16", {}), ("padded bf16", {"unpadded": False}), ("fp32", {"bf16": False}),
                     ("packed bf16 lr 1e-3", {"lr": 1e-3})]:
        base = dict(data=str(data), test_data=str(test), model=str(model), output=str(work / name.replace(" ", "_")),
                    epochs=epochs, batch_size=16, lr=1e-2, warmup_ratio=0.05, max_length=32, seed=0, log_every=1000)
        result = train(**{**base, **kw})
        clf = load(result.output)
        print(f"TOY {name}: test accuracy {result.metrics['test']['accuracy']:.3f}, "
              f"skipped {result.metrics['train']['skipped_steps']}, layout packed={clf.engine.layout.packed}, "
              f"predict {[p.label for p in clf.predict(['awful dull plot', 'superb music'])]}", flush=True)


def profile(batch: int, max_text: int) -> None:
    """Five steps of the product's training step profiled after five to warm up, on random texts of
    150-`max_text` tokens (IMDB's range at max length 512)."""
    from torch.profiler import ProfilerActivity, profile as prof

    rng = np.random.default_rng(0)
    n = batch * 20
    enc = Encoded([rng.integers(1000, 20000, size=int(k)).astype(np.int32) for k in rng.integers(150, max_text, n)],
                  np.zeros(n, dtype=np.int64), rng.integers(0, 2, n))
    engine = Engine(random_bert("base" if DEV == "cuda" else "tiny"), torch.device(DEV), 0, training=True)
    optimizer = adamw(engine, fused=DEV == "cuda", lr=1e-5)
    state = TrainState()

    def step(i: int) -> None:
        state.step += 1
        train_step(engine, optimizer, enc, np.arange(i * batch, (i + 1) * batch), state)

    for i in range(5):
        step(i)
    sync(DEV)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEV == "cuda" else [])
    with prof(activities=activities) as p:
        for i in range(5, 10):
            step(i)
        sync(DEV)
    print(f"layout packed={engine.layout.packed}, bf16 weights={engine.bf16_weights}")
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=50))
    if DEV == "cuda":
        print(p.key_averages().table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="toy task: epochs of each run")
    parser.add_argument("--batch", type=int, default=32, help="profile: texts per step")
    parser.add_argument("--max-text", type=int, default=512, help="profile: the longest random text, in tokens")
    parser.add_argument("--skip-toy", action="store_true")
    parser.add_argument("--skip-profile", action="store_true")
    args = parser.parse_args()
    if not args.skip_toy:
        toy(args.epochs)
    if not args.skip_profile:
        profile(args.batch, args.max_text)


if __name__ == "__main__":
    main()
