"""Classifier logits without the last layer's wasted work.

BertForSequenceClassification classifies from the pooler, which reads only the [CLS] position of the last
layer. In that layer every other position still needs its key and value (they are what [CLS] attends to),
but its query, attention output, feed-forward block and LayerNorms are computed and thrown away. Here the
last layer runs for [CLS] alone, a share of the model's work that grows with the length, where attention
dominates (measured: benchmarks/NOTES.md). The function is the same: in evaluation the logits equal the stock forward's
(tested to 1e-5); in training only which random numbers dropout draws differs (a smaller mask), not its law.
Other architectures go through their stock forward.

Packed batches (GPU): the batch's real tokens are laid end to end with no padding at all, every dense layer
runs on real tokens only, and attention is FlashAttention's variable-length kernel, which also draws the
attention-probability dropout inside the kernel. A padded batch with a mask cannot use FlashAttention, and
PyTorch's masked kernels with dropout are slower per step (measured on an H200: benchmarks/NOTES.md).
Where that kernel is missing (CPU, fp32) the packed layout falls back to SDPA one text at a time.

CPU training with dropout (`lane_dropout`): every layer but the last runs here too, with dropout masks cut
from 16-bit lanes of torch's generator and attention in plain ops (dropout.py): cheaper per step, the same
dropout law (benchmarks/cpu_dropout.py).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from finetune_bert.engine.dropout import attention as dropout_attention
from finetune_bert.engine.dropout import dropout, padding_bias
from finetune_bert.engine.batches import Layout


def layout(model, device: torch.device, dtype: torch.dtype | None, pad_id: int, *, cls_fast_path: bool = True,
           unpadded: bool = True, lane_dropout: bool = True, cpu_micro_batches: bool = True,
           pad_to: int = 0) -> Layout:
    """Packed batches where variable-length FlashAttention runs (CUDA, bf16/fp16, a supported BERT);
    otherwise padded batches, to a multiple of 8 on GPU (tensor-core shapes). On CPU, lane dropout and
    batches cut so that no activation outgrows the allocator's heap (Layout.fit). `pad_to` > 0: every
    batch padded to that many tokens, never packed (--no-dynamic-padding)."""
    packed = cls_fast_path and unpadded and not pad_to and device.type == "cuda" and dtype is not None and supported(model)
    lanes = cls_fast_path and lane_dropout and device.type == "cpu" and supported(model)
    cap = _activation_shape(model.config) if cpu_micro_batches and device.type == "cpu" else None
    # bf16 on a CPU (AMX): oneDNN builds a kernel per shape, so widths are rounded to 32 tokens; one process
    # scoring 1,000 IMDB reviews spent ~1.9 s building kernels for exact widths, ~0.1 s for multiples of 32
    multiple = 8 if device.type == "cuda" else 32 if dtype is not None else 1
    return Layout(pad_id, multiple, packed, cls_fast_path, lanes, cap, pad_to)


def _activation_shape(config) -> tuple[int, int]:
    """(attention heads, feed-forward width), under the names BERT-family configs use."""
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None) or 12
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None) or 768
    width = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None) or 4 * hidden
    return int(heads), int(max(width, hidden))


def supported(model) -> bool:
    """The fast path is written for transformers' own BertForSequenceClassification, exactly that class (a
    subclass may change its forward); the engine applies it to the model it wraps, never to a wrapper."""
    from transformers import BertForSequenceClassification

    bert = getattr(model, "bert", None)
    return (type(model) is BertForSequenceClassification and bert is not None
            and bert.pooler is not None and not model.config.is_decoder
            and getattr(model.config, "position_embedding_type", "absolute") == "absolute"
            and model.config._attn_implementation in ("sdpa", "eager"))


def logits(model, batch: dict, fast: bool = True, lane_dropout: bool = False, *,
           train: bool | None = None) -> torch.Tensor:
    """Logits for a padded batch (input_ids, attention_mask, and token_type_ids for text pairs) or a packed one
    (see batches.collate_packed).

    `train`: whether dropout applies (default: the module's own flag). The fast path takes it as an argument
    and reads no module's train/eval flag, so inference can run beside a module that is training (the
    engine's inference context). `lane_dropout`: in training, layers draw dropout as dropout.py does (CPU)."""
    train = model.training if train is None else train
    if "cu_seqlens" in batch:
        return _packed_logits(model, batch, train)
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    if not (fast and supported(model)):
        return _stock_logits(model, batch)
    from transformers.masking_utils import create_bidirectional_mask

    bert = model.bert
    hidden = _embed(bert, input_ids, train, token_type_ids=batch.get("token_type_ids"))
    mask = create_bidirectional_mask(config=bert.config, inputs_embeds=hidden, attention_mask=attention_mask)
    *layers, last = bert.encoder.layer
    lanes = lane_dropout and train and not hidden.is_cuda and _has_dropout(bert)
    bias = padding_bias(attention_mask, hidden.dtype) if lanes and not bool(attention_mask.all()) else None
    for layer in layers:
        hidden = _lane_dropout_layer(layer, hidden, bias) if lanes else _padded_layer(layer, hidden, mask, train)
    cls = _padded_layer(last, hidden, mask, train, cls_only=True)
    return _head(model, cls, train)


def _stock_logits(model, batch: dict) -> torch.Tensor:
    """The model's own forward; token type ids only where the batch has them (text pairs) and the model's
    forward takes them (DistilBERT's has no such argument)."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if "token_type_ids" in batch and "token_type_ids" in inspect.signature(model.forward).parameters:
        inputs["token_type_ids"] = batch["token_type_ids"]
    return model(**inputs).logits


def _embed(bert, input_ids: torch.Tensor, train: bool, position_ids: torch.Tensor | None = None,
           token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """BertEmbeddings' computation (word + token type + position, LayerNorm, dropout), dropout explicit;
    token type 0 everywhere unless the batch says otherwise (text pairs)."""
    emb = bert.embeddings
    if position_ids is None:
        position_ids = torch.arange(input_ids.shape[-1], device=input_ids.device)
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    hidden = emb.word_embeddings(input_ids) + emb.token_type_embeddings(token_type_ids) \
        + emb.position_embeddings(position_ids)
    return F.dropout(emb.LayerNorm(hidden), emb.dropout.p, train)


def _add_norm(block, hidden: torch.Tensor, residual: torch.Tensor, train: bool) -> torch.Tensor:
    """BertSelfOutput / BertOutput: dense, dropout, LayerNorm of the sum with the residual."""
    return block.LayerNorm(F.dropout(block.dense(hidden), block.dropout.p, train) + residual)


def _head(model, cls: torch.Tensor, train: bool) -> torch.Tensor:
    """The pooler (dense + tanh on [CLS]) and the classifier, with the classifier's dropout explicit."""
    return model.classifier(F.dropout(model.bert.pooler(cls), model.dropout.p, train))


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


def _padded_layer(layer, hidden: torch.Tensor, mask: torch.Tensor | None, train: bool,
                  cls_only: bool = False) -> torch.Tensor:
    """The stock BertLayer computation, for every position or (`cls_only`) the first one alone; keys and
    values always from all positions."""
    attn = layer.attention.self
    batch, length, _ = hidden.shape
    heads, size = attn.num_attention_heads, attn.attention_head_size
    queries_from = hidden[:, :1] if cls_only else hidden
    query = attn.query(queries_from).view(batch, queries_from.shape[1], heads, size).transpose(1, 2)
    key = attn.key(hidden).view(batch, length, heads, size).transpose(1, 2)
    value = attn.value(hidden).view(batch, length, heads, size).transpose(1, 2)
    if mask is not None:
        mask = mask[:, :, :1, :] if cls_only else mask
        if mask.dtype != torch.bool:  # eager masks are additive floats
            mask = mask.to(query.dtype)
    context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask,
                                             dropout_p=attn.dropout.p if train else 0.0, scale=attn.scaling)
    context = context.transpose(1, 2).reshape(batch, queries_from.shape[1], heads * size)
    attended = _add_norm(layer.attention.output, context, queries_from, train)
    return _add_norm(layer.output, layer.intermediate(attended), attended, train)


def _packed_logits(model, batch: dict, train: bool) -> torch.Tensor:
    bert = model.bert
    ids, cu, longest = batch["input_ids"], batch["cu_seqlens"], batch["max_len"]
    hidden = _embed(bert, ids, train, batch["position_ids"], batch.get("token_type_ids"))
    *layers, last = bert.encoder.layer
    for layer in layers:
        hidden = _packed_layer(layer, hidden, hidden, (cu, cu), (longest, longest), train)
    starts = cu[:-1].long()  # each text's [CLS]
    queries = torch.arange(len(starts) + 1, device=cu.device, dtype=cu.dtype)
    cls = _packed_layer(last, hidden[starts], hidden, (queries, cu), (1, longest), train)
    logits = _head(model, cls[:, None], train)
    # a batch padded to a graph's bucket (graph_plan.pad_packed): its pad segments' rows are not texts
    return logits[:batch["texts"]] if "texts" in batch else logits


def _packed_layer(layer, queries_from: torch.Tensor, hidden: torch.Tensor, offsets: tuple[torch.Tensor, torch.Tensor],
                  longest: tuple[int, int], train: bool) -> torch.Tensor:
    """A BertLayer over packed tokens; queries from `queries_from` (all tokens, or [CLS] only). `offsets` and
    `longest`: the queries' and the keys' cu_seqlens and longest text."""
    attn = layer.attention.self
    heads, size = attn.num_attention_heads, attn.attention_head_size
    q = attn.query(queries_from).view(-1, heads, size)
    k = attn.key(hidden).view(-1, heads, size)
    v = attn.value(hidden).view(-1, heads, size)
    context = varlen_attention(q, k, v, offsets, longest, dropout=attn.dropout.p if train else 0.0,
                               scale=attn.scaling)
    attended = _add_norm(layer.attention.output, context.reshape(-1, heads * size), queries_from, train)
    return _add_norm(layer.output, layer.intermediate(attended), attended, train)


def varlen_attention(q, k, v, offsets: tuple[torch.Tensor, torch.Tensor], longest: tuple[int, int], *,
                     dropout: float, scale: float) -> torch.Tensor:
    """Attention within each packed text: q (Tq, H, D), k and v (Tk, H, D); `offsets` are the queries' and
    keys' int32 cu_seqlens, `longest` their longest text."""
    (cu_q, cu_k), (max_q, max_k) = offsets, longest
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
