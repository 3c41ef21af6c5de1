"""Lane dropout against PyTorch's dropout on CPU, side by side in one process (issue 5).

Three measurements, each alternating the two paths so that both see the same machine state:
  1. drawing a dropout mask for 16 x 12 x 512 x 512 elements (`bernoulli_` against 16-bit lanes),
  2. attention forward + backward at [16, 12, 512, 32] with p = 0.1 (SDPA against dropout.attention),
  3. a whole MiniLM-L6 training step at 16 x 512 with some padding (stock layers against lane-dropout layers,
     both with the [CLS]-only last layer), AdamW included.
Prints a markdown block; `--record` appends it to RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from results import cpu_hardware, now, publish


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


def main() -> None:
    from finetune_bert import dropout, fastpath
    from finetune_bert.model import load_classifier, resolve

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="append the result to RESULTS.md")
    args = parser.parse_args()
    torch.manual_seed(0)

    shape = (16, 12, 512, 512)
    mask = alternate({"bernoulli": lambda: torch.empty(shape).bernoulli_(0.9),
                      "lanes": lambda: dropout.drop_mask(shape, 0.1)}, args.reps)

    q, k, v = (torch.randn(16, 12, 512, 32, requires_grad=True) for _ in range(3))
    grad = torch.randn(16, 12, 512, 32)
    attn = alternate({
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, dropout_p=0.1, scale=0.18).backward(grad),
        "lanes": lambda: dropout.attention(q, k, v, None, 0.1, 0.18).backward(grad)}, args.reps)

    model = load_classifier(resolve("minilm"), ["negative", "positive"]).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    ids = torch.randint(1000, 30000, (16, 512))
    keep = torch.ones_like(ids)
    keep[8:, 384:] = 0  # half the batch padded by a quarter, as length-grouped batches are
    labels = torch.randint(0, 2, (16,))

    def step(lanes: bool) -> None:
        logits = fastpath.logits(model, {"input_ids": ids, "attention_mask": keep}, True, lanes)
        F.cross_entropy(logits, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    steps = alternate({"stock": lambda: step(False), "lanes": lambda: step(True)}, args.reps)

    text = (f"\n### {now()}: lane dropout against PyTorch's dropout (CPU)\n\n"
            f"Hardware: {cpu_hardware()}, {torch.get_num_threads()} threads. Command: `python benchmarks/cpu_dropout.py {' '.join(sys.argv[1:])}` "
            f"(best of {args.reps}, the two paths alternated).\n\n"
            "| measurement | PyTorch | lane dropout | ratio |\n| --- | --- | --- | --- |\n"
            f"| mask for 16 × 12 × 512 × 512 | {mask['bernoulli']:.3f} s | {mask['lanes']:.3f} s | "
            f"{mask['bernoulli'] / mask['lanes']:.2f}× |\n"
            f"| attention fwd+bwd [16, 12, 512, 32], p = 0.1 | {attn['sdpa']:.3f} s | {attn['lanes']:.3f} s | "
            f"{attn['sdpa'] / attn['lanes']:.2f}× |\n"
            f"| MiniLM-L6 training step, 16 × 512 | {steps['stock']:.2f} s | {steps['lanes']:.2f} s | "
            f"{steps['stock'] / steps['lanes']:.2f}× |\n")
    publish(text, args.record)


if __name__ == "__main__":
    main()
