"""Classifier logits without the last layer's wasted work.

BertForSequenceClassification classifies from the pooler, which reads only the [CLS] position of the last
layer. In that layer every other position still needs its key and value (they are what [CLS] attends to),
but its query, attention output, feed-forward block and LayerNorms are computed and thrown away. Here the
last layer runs for [CLS] alone: for MiniLM-L6 that skips ~14% of the model's FLOPs, more at long lengths
where attention dominates. The function is the same: in evaluation the logits equal the stock forward's
(tested to 1e-5); in training only which random numbers dropout draws differs (a smaller mask), not its law.
Other architectures go through their stock forward.

Packed batches (GPU): the batch's real tokens are laid end to end with no padding at all, every dense layer
runs on real tokens only, and attention is FlashAttention's variable-length kernel, which also draws the
attention-probability dropout inside the kernel. A padded batch with a mask cannot use FlashAttention, and
PyTorch's masked kernels with dropout measured 2-3x slower per step on an H200 (benchmarks/NOTES.md).
Where that kernel is missing (CPU, fp32) the packed layout falls back to SDPA one text at a time.

CPU training with dropout (`lane_dropout`): every layer but the last runs here too, with dropout masks cut
from 16-bit lanes of torch's generator and attention in plain ops (dropout.py); 1.1-1.3x per MiniLM step at
16 x 512 (benchmarks/cpu_dropout.py), same dropout law.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from finetune_bert.dropout import attention as dropout_attention
from finetune_bert.dropout import dropout, padding_bias
from finetune_bert.encoding import Layout


def layout(model, device: torch.device, dtype: torch.dtype | None, pad_id: int, fast: bool = True,
           unpadded: bool = True, lane_dropout: bool = True, cpu_micro_batches: bool = True,
           pad_to: int = 0) -> Layout:
    """Packed batches where variable-length FlashAttention runs (CUDA, bf16/fp16, a supported BERT);
    otherwise padded batches, to a multiple of 8 on GPU (tensor-core shapes). On CPU, lane dropout and
    batches cut so that no activation outgrows the allocator's heap (Layout.fit). `pad_to` > 0: every
    batch padded to that many tokens, never packed (--no-dynamic-padding)."""
    packed = fast and unpadded and not pad_to and device.type == "cuda" and dtype is not None and supported(model)
    lanes = fast and lane_dropout and device.type == "cpu" and supported(model)
    cap = _activation_shape(model.config) if cpu_micro_batches and device.type == "cpu" else None
    return Layout(pad_id, 8 if device.type == "cuda" else 1, packed, fast, lanes, cap, pad_to)


def _activation_shape(config) -> tuple[int, int]:
    """(attention heads, feed-forward width), under the names BERT-family configs use."""
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None) or 12
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None) or 768
    width = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None) or 4 * hidden
    return int(heads), int(max(width, hidden))


def supported(model) -> bool:
    bert = getattr(model, "bert", None)
    return (type(model).__name__ == "BertForSequenceClassification" and bert is not None
            and bert.pooler is not None and not model.config.is_decoder
            and getattr(model.config, "position_embedding_type", "absolute") == "absolute"
            and model.config._attn_implementation in ("sdpa", "eager"))


def logits(model, batch: dict, fast: bool = True, lane_dropout: bool = False) -> torch.Tensor:
    """Logits for a padded batch (input_ids, attention_mask) or a packed one (see encoding.collate_packed).
    `lane_dropout`: in training, layers draw dropout as dropout.py does (CPU tensors only)."""
    if "cu_seqlens" in batch:
        return _packed_logits(model, batch)
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    if not (fast and supported(model)):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    from transformers.masking_utils import create_bidirectional_mask

    bert = model.bert
    hidden = bert.embeddings(input_ids=input_ids)
    mask = create_bidirectional_mask(config=bert.config, inputs_embeds=hidden, attention_mask=attention_mask)
    *layers, last = bert.encoder.layer
    lanes = lane_dropout and model.training and not hidden.is_cuda and _has_dropout(bert)
    bias = padding_bias(attention_mask, hidden.dtype) if lanes and not bool(attention_mask.all()) else None
    for layer in layers:
        hidden = _lane_dropout_layer(layer, hidden, bias) if lanes else layer(hidden, mask)
    cls = _cls_only_layer(last, hidden, mask)
    pooled = bert.pooler(cls)
    return model.classifier(model.dropout(pooled))


def _has_dropout(bert) -> bool:
    return any(m.p > 0 for m in bert.encoder.modules() if isinstance(m, torch.nn.Dropout))


def _lane_dropout_layer(layer, hidden: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The stock BertLayer in training, with dropout.py's masks (its SelfOutput and Output: dense, dropout,
    LayerNorm of the sum with the input)."""
    attn = layer.attention.self
    batch, length, _ = hidden.shape
    heads, size = attn.num_attention_heads, attn.attention_head_size
    q, k, v = (proj(hidden).view(batch, length, heads, size).transpose(1, 2)
               for proj in (attn.query, attn.key, attn.value))
    context = dropout_attention(q, k, v, bias, attn.dropout.p, attn.scaling)
    context = context.transpose(1, 2).reshape(batch, length, heads * size)
    out = layer.attention.output
    attended = out.LayerNorm(dropout(out.dense(context), out.dropout.p) + hidden)
    ffn = layer.output
    return ffn.LayerNorm(dropout(ffn.dense(layer.intermediate(attended)), ffn.dropout.p) + attended)


def _cls_only_layer(layer, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The stock BertLayer computation, for the first position only; keys and values from all positions."""
    attn = layer.attention.self
    batch, length, _ = hidden.shape
    heads, size = attn.num_attention_heads, attn.attention_head_size
    query = attn.query(hidden[:, :1]).view(batch, 1, heads, size).transpose(1, 2)
    key = attn.key(hidden).view(batch, length, heads, size).transpose(1, 2)
    value = attn.value(hidden).view(batch, length, heads, size).transpose(1, 2)
    if mask is not None:
        mask = mask[:, :, :1, :]
        if mask.dtype != torch.bool:  # eager masks are additive floats
            mask = mask.to(query.dtype)
    dropout = attn.dropout.p if attn.training else 0.0
    context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout,
                                             scale=attn.scaling)
    context = context.transpose(1, 2).reshape(batch, 1, heads * size)
    attended = layer.attention.output(context, hidden[:, :1])
    return layer.output(layer.intermediate(attended), attended)


def _packed_logits(model, batch: dict) -> torch.Tensor:
    bert = model.bert
    ids, cu, longest = batch["input_ids"], batch["cu_seqlens"], batch["max_len"]
    hidden = bert.embeddings(input_ids=ids[None], position_ids=batch["position_ids"][None],
                             token_type_ids=torch.zeros_like(ids)[None])[0]
    *layers, last = bert.encoder.layer
    for layer in layers:
        hidden = _packed_layer(layer, hidden, hidden, cu, cu, longest, longest)
    starts = cu[:-1].long()  # each text's [CLS]
    queries = torch.arange(len(starts) + 1, device=cu.device, dtype=cu.dtype)
    cls = _packed_layer(last, hidden[starts], hidden, queries, cu, 1, longest)
    return model.classifier(model.dropout(bert.pooler(cls[:, None])))


def _packed_layer(layer, queries_from: torch.Tensor, hidden: torch.Tensor, cu_q: torch.Tensor,
                  cu_k: torch.Tensor, max_q: int, max_k: int) -> torch.Tensor:
    """A BertLayer over packed tokens; queries from `queries_from` (all tokens, or [CLS] only)."""
    attn = layer.attention.self
    heads, size = attn.num_attention_heads, attn.attention_head_size
    q = attn.query(queries_from).view(-1, heads, size)
    k = attn.key(hidden).view(-1, heads, size)
    v = attn.value(hidden).view(-1, heads, size)
    dropout = attn.dropout.p if attn.training else 0.0
    context = varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, dropout, attn.scaling)
    attended = layer.attention.output(context.reshape(-1, heads * size), queries_from)
    return layer.output(layer.intermediate(attended), attended)


def varlen_attention(q, k, v, cu_q, cu_k, max_q: int, max_k: int, dropout: float, scale: float) -> torch.Tensor:
    """Attention within each packed text: q (Tq, H, D), k and v (Tk, H, D); cu_* are int32 offsets."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.dtype == k.dtype == v.dtype:
        return torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, dropout, False, False,
                                                       scale=scale)[0]
    out = []
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
    for i in range(len(bounds_q) - 1):
        qi = q[bounds_q[i]:bounds_q[i + 1]].transpose(0, 1)
        ki, vi = (t[bounds_k[i]:bounds_k[i + 1]].transpose(0, 1) for t in (k, v))
        out.append(F.scaled_dot_product_attention(qi, ki.to(qi.dtype), vi.to(qi.dtype), dropout_p=dropout,
                                                  scale=scale).transpose(0, 1))
    return torch.cat(out)
