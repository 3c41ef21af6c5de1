"""Dropout for CPU training with masks a third as costly to draw, and attention that uses them.

On CPU, PyTorch draws every dropout keep/drop decision with `bernoulli_`: 11 ns per element on this
project's 2-core machine. In a MiniLM-L6 step at 16 x 512 that is 3.9 of 21 s, most of it the attention
probabilities (16 x 12 x 512 x 512 per layer), and SDPA with dropout falls back to its math path, which
adds safe-softmax passes (-inf checks) over the same tensor. Here each 64-bit word from torch's own
generator (`random_` over the full int64 range) is cut into four 16-bit uniform lanes: 3.5 ns per element
with the comparison. The generator is still torch's default one, so `torch.manual_seed` and the RNG state
saved in checkpoints govern it exactly as before.

The law is dropout's: each element is dropped independently with probability p rounded to a multiple of
1/65536 (0.1 becomes 0.1000061), and kept elements are scaled by 1 / (1 - that rounded p), so the
expectation is unchanged. Attention fwd+bwd at [16, 12, 512, 32] with p = 0.1: 1.60 s with SDPA, 1.19 s
with these masks in autograd ops, 0.88 s with them in _ScoresSoftmaxDropout (benchmarks/NOTES.md).
"""

from __future__ import annotations

import math

import torch

_LANES = 65536  # a 16-bit lane takes this many values


def drop_mask(shape: tuple[int, ...], p: float) -> tuple[torch.Tensor, float]:
    """A bool mask, True where an element is dropped, and the probability it was drawn with."""
    cut = round(p * _LANES)
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2**63, None)  # all 64 bits random
    lanes = words.view(torch.int16)[:n]
    return (lanes < cut - _LANES // 2).view(shape), cut / _LANES


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of `x` (differentiable: the gradient is masked and scaled the same way)."""
    if p <= 0:
        return x
    drop, rounded = drop_mask(tuple(x.shape), p)
    return x.masked_fill(drop, 0.0) * (1.0 / (1.0 - rounded))


class _ScoresSoftmaxDropout(torch.autograd.Function):
    """softmax(q kᵀ + bias) with the dropped elements zeroed, in the fewest passes over the (Lq, Lk) tensors:
    the scores are this function's own, so the bias add and the softmax overwrite them, and the masking and
    the softmax backward overwrite the incoming gradient, where autograd ops would allocate and write a new
    (Lq, Lk) tensor at each step; identical values (measured: benchmarks/NOTES.md)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None,
                drop: torch.Tensor) -> torch.Tensor:
        scores = torch.matmul(q, k.transpose(-1, -2))
        if bias is not None:
            scores.add_(bias)
        probs = torch.ops.aten._softmax.out(scores, -1, False, out=scores)
        ctx.save_for_backward(q, k, probs, drop)
        return torch.where(drop, 0.0, probs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        q, k, probs, drop = ctx.saved_tensors
        # attention() keeps the probabilities to itself and hands them only to a matmul, so `grad` is that
        # matmul's fresh output, free to overwrite (1.04x over torch.where, NOTES.md)
        grad = grad.contiguous().masked_fill_(drop, 0.0)
        grad = torch.ops.aten._softmax_backward_data.out(grad, probs, -1, probs.dtype, grad_input=grad)
        return torch.matmul(grad, k), torch.matmul(grad.transpose(-1, -2), q), None, None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, p: float,
              scale: float, *, drop: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale + bias) with dropout p on the probabilities, times v. q (B, H, Lq, D), k and v
    (B, H, Lk, D); bias broadcasts to (B, H, Lq, Lk) (0 where attended, a large negative where masked) and
    gets no gradient.

    The scale goes on q and the dropout's 1 / (1 - p) on v, the small tensors, and _ScoresSoftmaxDropout
    does the rest. `drop` (True where dropped) replaces the random mask when given, with exactly p (tests)."""
    rounded = p
    if drop is None and p > 0:
        drop, rounded = drop_mask((q.shape[0], q.shape[1], q.shape[2], k.shape[2]), p)
    if drop is None:
        scores = torch.matmul(q * scale, k.transpose(-1, -2))
        return torch.matmul(torch.softmax(scores if bias is None else scores + bias, dim=-1), v)
    probs = _ScoresSoftmaxDropout.apply(q * scale, k, bias, drop)
    return torch.matmul(probs, v * (1.0 / (1.0 - rounded)))


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) 1/0 mask to an additive (B, 1, 1, L) bias: masked keys get exactly zero probability."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
