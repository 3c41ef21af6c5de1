"""The batches stage: which texts go together, and how they are laid out for the model.

Training batches are a pure function of (seed, epoch); evaluation batches are sorted by length (callers get
results back in input order). A batch is padded only to its own longest text, unless `--no-dynamic-padding`
asks for every batch at the max length (`Layout.pad_to`), or packed with no padding at all on GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from finetune_bert.data.tokens import Encoded

if TYPE_CHECKING:
    import torch
# torch is imported where tensors are made, not here: the ONNX engine batches through this module and must
# start without paying torch's import.

CPU_BLOCK_BYTES = 32 * 2**20  # glibc's largest dynamic mmap threshold on 64-bit


def train_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                  group_by_length: bool) -> list[np.ndarray]:
    """The batches of one epoch: a pure function of (seed, epoch), so a resumed run sees the same order.

    With grouping, a shuffled epoch is cut into mega-batches of 50 batches, each sorted by length, so
    batches hold similar lengths but the epoch stays random. The longest batch goes first, so an
    out-of-memory error shows up on the first step rather than hours in.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    mega = batch_size * 50
    batches = []
    for start in range(0, len(order), mega):
        block = order[start:start + mega]
        block = block[np.argsort(-lengths[block], kind="stable")]
        batches.extend(block[i:i + batch_size] for i in range(0, len(block), batch_size))
    longest = max(range(len(batches)), key=lambda b: lengths[batches[b]].max())
    first = batches.pop(longest)
    rest = [batches[i] for i in rng.permutation(len(batches))]
    return [first, *rest]


def eval_batches(lengths: np.ndarray, batch_size: int, fit: Callable[[int], int] | None = None) -> list[np.ndarray]:
    """Longest first, sorted, so each batch pads little; callers restore the original order.
    `fit(length)`: at most that many texts in a batch whose longest text has that length."""
    order = np.argsort(-lengths, kind="stable")
    return _cut(order, lengths[order], batch_size, fit)


def micro_batches(index: np.ndarray, lengths: np.ndarray, splits: int,
                  fit: Callable[[int], int] | None = None) -> list[np.ndarray]:
    """One optimizer step's texts (`index`, their `lengths`) as micro-batches whose gradients are summed:
    at least `splits` of them (gradient accumulation, out-of-memory backoff), none over `fit(length)`
    texts. Sorted longest first, so each pads only to its own longest text."""
    by_length = np.argsort(-lengths, kind="stable")
    order, widths = index[by_length], lengths[by_length]
    splits = min(splits, len(order))
    batches = _cut(order, widths, -(-len(order) // splits), fit)
    return batches if len(batches) >= splits else np.array_split(order, splits)


def _cut(order: np.ndarray, widths: np.ndarray, batch_size: int, fit: Callable[[int], int] | None) -> list[np.ndarray]:
    """`order` (sorted longest first, `widths` its lengths) in consecutive batches of at most `batch_size`."""
    batches, start = [], 0
    while start < len(order):
        size = batch_size if fit is None else max(1, min(batch_size, fit(int(widths[start]))))
        batches.append(order[start:start + size])
        start += size
    return batches


@dataclass(frozen=True)
class Layout:
    """How a batch is laid out for the model: padded to its longest text (rounded up to `multiple`), or
    packed with no padding (`packed`, GPU: what --unpadded gives where it can). `cls_fast_path`: the [CLS]-only
    last layer; `lane_dropout`: CPU training
    draws dropout as dropout.py does (both in fastpath.py)."""
    pad_id: int
    multiple: int = 1
    packed: bool = False
    cls_fast_path: bool = True
    lane_dropout: bool = False
    cpu_cap: tuple[int, int] | None = None  # CPU: (attention heads, feed-forward width); see `fit`
    pad_to: int = 0  # pad every batch to this many tokens (--no-dynamic-padding); 0: to its longest text

    @property
    def capped_fit(self) -> Callable[[int], int] | None:
        return self.fit if self.cpu_cap else None

    def fit(self, length: int) -> int:
        """How many texts of `length` tokens (or `pad_to`, if longer) a CPU batch may hold: as many as keep
        its largest fp32 activation, the (texts, heads, length, length) attention scores or the (texts,
        length, width) feed-forward input, within glibc's 32 MiB mmap threshold.

        Larger blocks are mapped and page-faulted afresh on every allocation: in a MiniLM step at 16 x 512
        the faults cost 5-7 s of system time in a 15-17 s step, against none in micro-batches of 2 texts
        (benchmarks/RESULTS.md). Gradients are summed over micro-batches, so the step is the same.
        """
        if not self.cpu_cap:
            return np.iinfo(np.int64).max  # not capped: whole batches
        heads, width = self.cpu_cap
        length = max(length, self.pad_to)
        return max(1, CPU_BLOCK_BYTES // (4 * length * max(heads * length, width, 1)))

    def batch(self, encoded: Encoded, index: np.ndarray) -> dict:
        if self.packed:
            return collate_packed(encoded, index)
        return collate(encoded, index, self.pad_id, self.multiple, self.pad_to)


def collate_packed(encoded: Encoded, index: np.ndarray) -> dict:
    """The batch's texts end to end with no padding: token ids, positions within each text, int32 offsets
    of each text (cu_seqlens, as variable-length FlashAttention takes them) and the longest length."""
    import torch

    rows = [encoded.ids[i] for i in index]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    positions = np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(offsets[:-1].astype(np.int64), lengths)
    batch = {"input_ids": torch.from_numpy(np.concatenate(rows).astype(np.int64)),
             "position_ids": torch.from_numpy(positions), "cu_seqlens": torch.from_numpy(offsets),
             "max_len": int(lengths.max())}
    if encoded.type_ids is not None:  # text pairs
        batch["token_type_ids"] = torch.from_numpy(np.concatenate([encoded.type_ids[i] for i in index]).astype(np.int64))
    return _targets(batch, encoded, index)


def real_tokens(batch: dict) -> int:
    return len(batch["input_ids"]) if "cu_seqlens" in batch else int(batch["attention_mask"].sum())


def to_device(batch: dict, device: torch.device) -> dict:
    import torch

    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def collate(encoded: Encoded, index: np.ndarray, pad_id: int, pad_to_multiple: int = 1,
            pad_to: int = 0) -> dict[str, torch.Tensor]:
    """`padded` as torch tensors, with the labels where there are some."""
    import torch

    batch = {k: torch.from_numpy(v) for k, v in padded(encoded, index, pad_id, pad_to_multiple, pad_to).items()}
    return _targets(batch, encoded, index)


def _targets(batch: dict, encoded: Encoded, index: np.ndarray) -> dict:
    """The batch with what a training step compares its outputs to: the labels, and a teacher's outputs
    when distilling (training.kinds.distill_loss_sum)."""
    import torch

    if encoded.labels is not None:
        batch["labels"] = torch.from_numpy(encoded.labels[index])
    if encoded.teacher is not None:
        batch["teacher_logits"] = torch.from_numpy(encoded.teacher[index])
    return batch


def padded(encoded: Encoded, index: np.ndarray, pad_id: int, pad_to_multiple: int = 1,
           pad_to: int = 0) -> dict[str, np.ndarray]:
    """input_ids and attention_mask (int64) of a batch padded to its own longest text, or to `pad_to` tokens
    if longer (rounded up to a multiple, for tensor cores on GPU); token_type_ids too for text pairs (padded
    with 0, as transformers pads them)."""
    rows = [encoded.ids[i] for i in index]
    width = max(pad_to, *(len(r) for r in rows))
    width = -(-width // pad_to_multiple) * pad_to_multiple
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        input_ids[r, :len(row)] = row
        mask[r, :len(row)] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if encoded.type_ids is not None:
        types = np.zeros((len(rows), width), dtype=np.int64)
        for r, i in enumerate(index):
            types[r, :len(encoded.type_ids[i])] = encoded.type_ids[i]
        batch["token_type_ids"] = types
    return batch
