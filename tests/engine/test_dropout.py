"""Lane dropout (dropout.py) has dropout's law, and its attention computes PyTorch's own formula.

PyTorch's math attention takes an explicit keep-mask (`_scaled_dot_product_attention_math`), so with the same
mask both must agree to 1e-5 in values and gradients; the mask itself is checked for its probability,
per 16-bit lane, and for following torch's seed."""

import pytest
import torch
import torch.nn.functional as F

from finetune_bert.engine import dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_mask_drops_each_element_with_probability_p_in_every_lane(p):
    torch.manual_seed(0)
    drop, rounded = dropout.drop_mask((1000, 4096), p)
    assert abs(rounded - p) <= 1 / 65536
    # 1M draws per lane: a standard error of 3e-4 at p = 0.1; the four lanes of a word each on their own
    for lane in range(4):
        assert abs(drop.flatten()[lane::4].float().mean().item() - rounded) < 2.5e-3, lane


def test_mask_follows_torch_manual_seed():
    torch.manual_seed(3)
    first, _ = dropout.drop_mask((7, 33), 0.3)  # an odd size: the last word is cut
    torch.manual_seed(3)
    again, _ = dropout.drop_mask((7, 33), 0.3)
    other, _ = dropout.drop_mask((7, 33), 0.3)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_dropout_keeps_the_expectation_and_masks_the_gradient():
    torch.manual_seed(0)
    x = torch.ones(1_000_000, requires_grad=True)
    y = dropout.dropout(x, 0.1)
    kept = y != 0
    assert abs(y.mean().item() - 1.0) < 3e-3
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - round(0.1 * 65536) / 65536)))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(sum)/dx is the same mask and scale


def test_dropout_with_p_zero_is_the_identity():
    x = torch.randn(5, 3)
    assert dropout.dropout(x, 0.0) is x


def _qkv(lq: int = 9, lk: int = 9):
    torch.manual_seed(1)
    return [torch.randn(2, 3, n, 8, dtype=torch.float64, requires_grad=True) for n in (lq, lk, lk)]


def _grads(out: torch.Tensor, tensors) -> list[torch.Tensor]:
    return torch.autograd.grad(out, tensors, torch.ones_like(out))


def test_attention_with_a_given_mask_equals_pytorch_math_attention():
    q, k, v = _qkv()
    keys = torch.ones(2, 9, dtype=torch.long)
    keys[1, 6:] = 0  # padding in the second text
    drop = torch.rand(2, 3, 9, 9) < 0.25
    ours = dropout.attention(q, k, v, dropout.padding_bias(keys, q.dtype), 0.25, 0.3, drop=drop)
    # an additive -inf mask: with a bool mask and a given dropout mask this private op disagrees with its
    # own formula for padded texts (torch 2.13), with a float mask it computes the formula
    additive = torch.zeros(2, 1, 1, 9, dtype=q.dtype).masked_fill(keys[:, None, None, :] == 0, float("-inf"))
    reference = torch.ops.aten._scaled_dot_product_attention_math(
        q, k, v, attn_mask=additive, dropout_p=0.25, scale=0.3, dropout_mask=~drop)[0]
    assert torch.allclose(ours, reference, atol=1e-5)
    for a, b in zip(_grads(ours, (q, k, v)), _grads(reference, (q, k, v))):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("lq, masked", [(9, True), (1, False)])  # full layer with padding; [CLS]-only query
def test_attention_with_dropout_passes_gradcheck(lq, masked):
    q, k, v = _qkv(lq=lq)
    keys = torch.ones(2, 9, dtype=torch.long)
    keys[0, 5:] = 0
    bias = dropout.padding_bias(keys, q.dtype) if masked else None
    drop = torch.rand(2, 3, lq, 9) < 0.3
    assert torch.autograd.gradcheck(lambda *t: dropout.attention(*t, bias, 0.3, 0.4, drop=drop), (q, k, v))


def test_attention_without_dropout_equals_sdpa():
    q, k, v = _qkv(lq=1)  # a [CLS]-only query, as the last layer asks
    assert torch.allclose(dropout.attention(q, k, v, None, 0.0, 0.5),
                          F.scaled_dot_product_attention(q, k, v, scale=0.5), atol=1e-6)


def test_padded_keys_get_exactly_zero_probability():
    q, k, v = _qkv()
    keys = torch.ones(2, 9, dtype=torch.long)
    keys[:, 4:] = 0
    changed = v.detach().clone()
    changed[:, :, 4:] = 1e6  # what padded positions hold must not matter
    bias = dropout.padding_bias(keys, q.dtype)
    assert torch.allclose(dropout.attention(q, k, v, bias, 0.0, 0.3), dropout.attention(q, k, changed, bias, 0.0, 0.3))
