"""How many operations one bert-base training step dispatches, autocast against bf16 weights with fp32 masters.

On the GPU a packed step is host-bound: the host spends ~37 µs per kernel it issues (benchmarks/NOTES.md,
profile at batch 32), so the number of operations a step dispatches predicts its host time. That number
does not depend on the device or the batch size, so it can be counted here, on CPU, with a small batch:
every ATen call below autograd (forward, backward, gradient clipping, the fused AdamW step and, for the
master variant, the two foreach copies) is counted by a dispatch mode.

    python benchmarks/gpu_op_count.py
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_bert import fastpath  # noqa: E402
from gpu_levers import bf16_with_masters  # noqa: E402


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
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2, attn_implementation="sdpa")).train()
    params = stepped = list(model.parameters())
    if master:
        params, stepped = bf16_with_masters(model)
    opt = torch.optim.AdamW(stepped, lr=5e-5, fused=True)
    rng = np.random.default_rng(0)
    batch = {"input_ids": torch.from_numpy(rng.integers(1000, 2000, (2, 16))),
             "attention_mask": torch.ones(2, 16, dtype=torch.int64)}
    labels = torch.tensor([0, 1])

    def one() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not master):
            logits = fastpath.logits(model, batch, fast=True)
        F.cross_entropy(logits.float(), labels).backward()
        if master:
            torch._foreach_copy_([m.grad for m in stepped], [p.grad for p in params])
        torch.nn.utils.clip_grad_norm_(stepped, 1.0)
        opt.step()
        if master:
            with torch.no_grad():
                torch._foreach_copy_(params, stepped)
        model.zero_grad(set_to_none=True)
        if not master:  # the masters' gradients are buffers the copy overwrites
            opt.zero_grad(set_to_none=True)

    one()  # the first step creates the optimizer state
    with Count() as count:
        one()
    return count.ops


def main() -> None:
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
