"""How many operations one bert-base training step dispatches, autocast against bf16 weights with fp32 masters.

On the GPU a packed step is host-bound: the host spends ~37 µs per kernel it issues (benchmarks/NOTES.md,
profile at batch 32), so the number of operations a step dispatches predicts its host time. That number
does not depend on the device or the batch size, so it can be counted here, on CPU, with a small batch:
every ATen call below autograd of the product's own training step (forward, backward, gradient clipping,
the fused AdamW step and, with bf16 weights, the two foreach copies to and from the masters) is counted by
a dispatch mode.

    python benchmarks/gpu_op_count.py
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench import adamw, random_bert
from finetune_bert.training.checkpoint import TrainState
from finetune_bert.engine.torch_engine import Engine, EngineOptions
from finetune_bert.training.steps import train_step
from finetune_bert.data.tokens import Encoded


KERNELS = "(ops that compute: not views)"
METADATA_ONLY = {"detach", "_unsafe_view", "alias", "lift_fresh"}  # aliases that launch nothing


class Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket.__name__)] += 1
        if not (func.is_view or func.overloadpacket.__name__ in METADATA_ONLY):
            self.ops[KERNELS] += 1
        return func(*args, **(kwargs or {}))


def step_ops(master: bool) -> Counter:
    """The operations of the product's second training step (`steps.train_step` through an `Engine`), the
    first having made the optimizer's state. bf16 is forced on CPU (`dtype`) so the engine runs the GPU's
    computation: autocast, or (`master`) bf16 weights with fp32 masters; CPU-only levers (lane dropout,
    micro-batches) off, as on the GPU."""
    torch.manual_seed(0)
    options = EngineOptions(bf16_weights=master, lane_dropout=False, cpu_micro_batches=False)
    engine = Engine(random_bert("base").train(), torch.device("cpu"), 0, options=options, training=True,
                    dtype=torch.bfloat16)
    # fused, as on CUDA: the step then defers its finiteness check to the device (steps.defers_checks)
    optimizer = adamw(engine, fused=True)
    rng = np.random.default_rng(0)
    enc = Encoded([rng.integers(1000, 2000, 16).astype(np.int32) for _ in range(2)], np.full(2, 16),
                  np.array([0, 1]))
    batch, state = np.arange(2), TrainState()
    train_step(engine, optimizer, enc, batch, state)  # the first step creates the optimizer state
    with Count() as count:
        train_step(engine, optimizer, enc, batch, state)
    return count.ops


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    autocast, master = step_ops(False), step_ops(True)
    print("| op | autocast | bf16 weights + fp32 masters |\n| --- | --- | --- |")
    names = (set(autocast) | set(master)) - {KERNELS}
    for name in sorted(names, key=lambda k: -(autocast[k] + master[k]))[:12]:
        print(f"| {name} | {autocast[name]} | {master[name]} |")
    total_a, total_m = (sum(c.values()) - c[KERNELS] for c in (autocast, master))
    print(f"| **all** | **{total_a}** | **{total_m}** |")
    print(f"| **{KERNELS}** | **{autocast[KERNELS]}** | **{master[KERNELS]}** |")
    print(f"\nbf16 weights dispatch {total_m / total_a:.2f}x the operations of autocast per step "
          f"({total_a - total_m} fewer), {master[KERNELS] / autocast[KERNELS]:.2f}x of those that compute")


if __name__ == "__main__":
    main()
