"""Static shapes for CUDA-graph training steps: token buckets planned from the run's own batches, and packed
batches padded to them.

A CUDA graph replays fixed shapes; a packed batch's shape is its total tokens. Batches are a pure function of
(seed, epoch), so the totals of every step of a run are known before step one (`step_totals`), and a handful
of buckets can be chosen to cover them with the least padding (`plan`: an exact 1-D partition by dynamic
programming, not fixed quantiles). A batch is padded to its bucket by `pad_packed` with pad segments of at
least one token each (a segment of none would attend to no key: a NaN that backward would spread), never
longer than the model's limit, in a number fixed per bucket; their [CLS] rows are dropped from the logits
(batch["texts"]), so no loss reads them and the real texts' logits are unchanged.

This is the CPU-testable half of the CUDA-graph work; capturing and replaying the graphs needs a GPU and is
not built yet (benchmarks/NOTES.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from finetune_bert.engine.batches import train_batches


@dataclass(frozen=True)
class Bucket:
    tokens: int    # the padded batch's total tokens
    segments: int  # pad segments it always carries (so the graph's cu_seqlens has a fixed length)


def step_totals(lengths: np.ndarray, batch_size: int, seed: int, epochs: int, group_by_length: bool = True) -> np.ndarray:
    """Total tokens of every full step batch of `epochs` epochs (a last, smaller batch runs without a graph)."""
    totals = [int(lengths[b].sum()) for e in range(epochs)
              for b in train_batches(lengths, batch_size, seed, e, group_by_length) if len(b) == batch_size]
    return np.asarray(totals, dtype=np.int64)


def plan(totals: np.ndarray, max_buckets: int, max_len: int, multiple: int = 64) -> list[Bucket]:
    """At most `max_buckets` buckets covering every total with the least padding in all. `max_len`: the
    model's longest text (a pad segment's limit); `multiple`: bucket sizes rounded up to it (kernels' tiles)."""
    values, counts = np.unique(np.asarray(totals, dtype=np.int64), return_counts=True)
    groups = _partition(values, counts, max(1, min(max_buckets, len(values))))
    return [_bucket(int(values[lo]), int(values[hi - 1]), max_len, multiple) for lo, hi in groups]


def _partition(values: np.ndarray, counts: np.ndarray, k: int) -> list[tuple[int, int]]:
    """Cut the sorted distinct `values` (with `counts`) into k consecutive groups minimising the padding to
    each group's largest value: O(k n^2), vectorised over the group's start."""
    n = len(values)
    count_sum = np.concatenate([[0], np.cumsum(counts)])
    value_sum = np.concatenate([[0], np.cumsum(counts * values)])
    cost = np.full((k + 1, n + 1), np.inf)
    start = np.zeros((k + 1, n + 1), dtype=np.int64)
    cost[0, 0] = 0.0
    for j in range(1, k + 1):
        for i in range(1, n + 1):
            a = np.arange(i)  # the group values[a:i], padded to values[i - 1]
            pad = (count_sum[i] - count_sum[a]) * values[i - 1] - (value_sum[i] - value_sum[a])
            total = cost[j - 1, :i] + pad
            start[j, i] = int(np.argmin(total))
            cost[j, i] = total[start[j, i]]
    j = int(np.argmin(cost[1:, n])) + 1
    groups, i = [], n
    while i > 0:
        groups.append((int(start[j, i]), i))
        i, j = int(start[j, i]), j - 1
    return groups[::-1]


def _bucket(smallest: int, largest: int, max_len: int, multiple: int) -> Bucket:
    """The bucket for totals in [smallest, largest]: room for its pad segments (one token each, at least)
    above the largest, and enough segments of at most max_len to fill it from the smallest."""
    segments = 1
    while True:
        tokens = -(-(largest + segments) // multiple) * multiple
        needed = math.ceil((tokens - smallest) / max_len)
        if needed <= segments:
            return Bucket(tokens, segments)
        segments = needed


def bucket_for(total: int, buckets: list[Bucket], max_len: int) -> Bucket | None:
    """The smallest bucket a batch of `total` tokens pads into; None: none fits (run it without a graph)."""
    for b in sorted(buckets, key=lambda b: b.tokens):
        if total + b.segments <= b.tokens <= total + b.segments * max_len:
            return b
    return None


def padding(totals: np.ndarray, buckets: list[Bucket], max_len: int) -> float:
    """Padded tokens over real tokens, for the totals that fit a bucket."""
    fitted = [(int(t), bucket_for(int(t), buckets, max_len)) for t in totals]
    real = sum(t for t, b in fitted if b is not None)
    return sum(b.tokens - t for t, b in fitted if b is not None) / max(real, 1)


def pad_packed(batch: dict, bucket: Bucket, max_len: int, pad_id: int) -> dict:
    """A packed batch (batches.collate_packed) padded to `bucket`: pad tokens in `bucket.segments` segments
    of 1 to max_len tokens, positions from 0; "texts" says how many leading logits rows are real. The
    attention's max length becomes max_len, fixed: the flash kernel reads it only for its grid."""
    ids, cu = batch["input_ids"], batch["cu_seqlens"]
    pad = bucket.tokens - len(ids)
    if not bucket.segments <= pad <= bucket.segments * max_len:
        raise ValueError(f"{len(ids)} tokens do not pad into {bucket}")
    sizes = np.full(bucket.segments, pad // bucket.segments)
    sizes[:pad % bucket.segments] += 1  # as even as can be: each at least 1, at most max_len
    ends = int(cu[-1]) + np.cumsum(sizes)
    positions = torch.from_numpy(np.concatenate([np.arange(s) for s in sizes]))
    return {**batch, "input_ids": torch.cat([ids, torch.full((pad,), pad_id, dtype=ids.dtype)]),
            "position_ids": torch.cat([batch["position_ids"], positions.to(batch["position_ids"].dtype)]),
            "cu_seqlens": torch.cat([cu, torch.from_numpy(ends.astype(np.int32))]),
            "max_len": max_len, "texts": len(cu) - 1}
