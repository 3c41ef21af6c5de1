"""Lane dropout against PyTorch's dropout on CPU, side by side in one process (issue 5).

Three measurements, each alternating the two paths so that both see the same machine state:
  1. drawing a dropout mask for 16 x 12 x 512 x 512 elements (`bernoulli_` against 16-bit lanes),
  2. attention forward + backward at [16, 12, 512, 32] with p = 0.1 (SDPA against dropout.attention),
  3. a whole MiniLM-L6 training step at 16 x 512 with some padding, the product's (`steps.train_step` through
     an `engine.Engine`, `--no-lane-dropout` against the default; both with the [CLS]-only last layer and
     whole batches, `--no-cpu-micro-batches`, as first measured), AdamW included.
Prints a markdown block; `--record` appends it to RESULTS.md. `--batch` and `--length` shrink every shape
(a smoke run: `--batch 2 --length 64 --reps 1`).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from bench import adamw, cpu_hardware, now, publish


def alternate(fns: dict, reps: int) -> dict[str, float]:
    """Best time of each function, the functions taking turns."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def training_step(batch: int, length: int):
    """{"stock": step, "lanes": step}: the product's training step on one MiniLM, with and without lane dropout."""
    import numpy as np

    from finetune_bert.training.checkpoint import TrainState
    from finetune_bert.engine.torch_engine import Engine, EngineOptions
    from finetune_bert.engine.model_folder import load_classifier
    from finetune_bert.training.steps import train_step
    from finetune_bert.data.tokens import Encoded

    model = load_classifier("minilm", ["negative", "positive"]).train()
    engines = {name: Engine(model, torch.device("cpu"), 0, training=True,
                            options=EngineOptions(lane_dropout=lanes, cpu_micro_batches=False))
               for name, lanes in (("stock", False), ("lanes", True))}
    optimizer = adamw(engines["lanes"], fused=False, lr=1e-5)
    ids = torch.randint(1000, 30000, (batch, length), dtype=torch.int32).numpy()
    # half the batch a quarter shorter, padded, as length-grouped batches are
    rows = [ids[i] if i < batch // 2 else ids[i, :length * 3 // 4] for i in range(batch)]
    enc = Encoded(rows, np.array([len(r) for r in rows]), torch.randint(0, 2, (batch,)).numpy())
    index = np.arange(batch)
    return {name: (lambda e=e: train_step(e, optimizer, enc, index, TrainState())) for name, e in engines.items()}


def main() -> None:
    from finetune_bert.engine import dropout

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="texts in every shape")
    parser.add_argument("--length", type=int, default=512, help="tokens in every shape")
    parser.add_argument("--record", action="store_true", help="append the result to RESULTS.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    b, n = args.batch, args.length

    shape = (b, 12, n, n)
    mask = alternate({"bernoulli": lambda: torch.empty(shape).bernoulli_(0.9),
                      "lanes": lambda: dropout.drop_mask(shape, 0.1)}, args.reps)

    q, k, v = (torch.randn(b, 12, n, 32, requires_grad=True) for _ in range(3))
    grad = torch.randn(b, 12, n, 32)
    attn = alternate({
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, dropout_p=0.1, scale=0.18).backward(grad),
        "lanes": lambda: dropout.attention(q, k, v, None, 0.1, 0.18).backward(grad)}, args.reps)
    steps = alternate(training_step(b, n), args.reps)

    text = (f"\n### {now()}: lane dropout against PyTorch's dropout (CPU)\n\n"
            f"Hardware: {cpu_hardware()}, {torch.get_num_threads()} threads. Command: `python benchmarks/cpu_dropout.py {' '.join(sys.argv[1:])}` "
            f"(best of {args.reps}, the two paths alternated).\n\n"
            "| measurement | PyTorch | lane dropout | ratio |\n| --- | --- | --- | --- |\n"
            f"| mask for {b} × 12 × {n} × {n} | {mask['bernoulli']:.3f} s | {mask['lanes']:.3f} s | "
            f"{mask['bernoulli'] / mask['lanes']:.2f}× |\n"
            f"| attention fwd+bwd [{b}, 12, {n}, 32], p = 0.1 | {attn['sdpa']:.3f} s | {attn['lanes']:.3f} s | "
            f"{attn['sdpa'] / attn['lanes']:.2f}× |\n"
            f"| MiniLM-L6 training step, {b} × {n} | {steps['stock']:.2f} s | {steps['lanes']:.2f} s | "
            f"{steps['stock'] / steps['lanes']:.2f}× |\n")
    publish(text, args.record)


if __name__ == "__main__":
    main()
