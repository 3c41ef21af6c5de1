"""The [CLS]-only last layer and packed (unpadded) batches compute the stock classifier's logits and gradients.

The CUDA tests run on the device machine (FlashAttention's variable-length kernel); on CPU the packed layout
uses its per-text SDPA fallback, which checks the packing itself."""

import numpy as np
import pytest
import torch

from finetune_bert.engine import dropout, fastpath
from finetune_bert.data.tokens import encode
from finetune_bert.engine.batches import collate, collate_packed, real_tokens, to_device
from finetune_bert.engine.model_folder import load_classifier, load_tokenizer

TEXTS = ["good film", "the plot was long and the music was dull and the ending was bad", "loved it",
         "a very short story with a wonderful actor and great light"]


def _batch(model_dir):
    tok = load_tokenizer(str(model_dir))
    enc = encode(tok, TEXTS, [0, 1, 0, 1], 64, "head+tail")
    return collate(enc, np.arange(len(TEXTS)), tok.pad_token_id)  # padded: the mask matters


def test_fast_logits_equal_stock_logits_in_eval(tiny_model):
    batch = _batch(tiny_model)
    for attn in ("sdpa", "eager"):
        model = load_classifier(str(tiny_model), ["a", "b"], attn_implementation=attn).eval()
        assert fastpath.supported(model)
        with torch.no_grad():
            fast = fastpath.logits(model, batch)
            stock = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert torch.allclose(fast, stock, atol=1e-5), attn


def test_fast_gradients_equal_stock_gradients_without_dropout(tiny_model):
    batch = _batch(tiny_model)
    model = load_classifier(str(tiny_model), ["a", "b"]).train()  # the tiny model has dropout 0
    _assert_same_gradients(_grads(model, batch, True), _grads(model, batch, False))


def _grads(model, batch, fast: bool) -> dict[str, torch.Tensor]:
    model.zero_grad()
    torch.nn.functional.cross_entropy(fastpath.logits(model, batch, fast), batch["labels"]).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_gradients(fast: dict, stock: dict) -> None:
    # the last layer's per-token parameters get no gradient from positions the classifier never reads
    for name, g in stock.items():
        assert torch.allclose(fast.get(name, torch.zeros_like(g)), g, atol=1e-5), name


def test_unsupported_models_use_the_stock_forward(tiny_model):
    model = load_classifier(str(tiny_model), ["a", "b"]).eval()
    model.bert.pooler = None
    assert not fastpath.supported(model)


def _packed(model_dir):
    tok = load_tokenizer(str(model_dir))
    enc = encode(tok, TEXTS, [0, 1, 0, 1], 64, "head+tail")
    index = np.arange(len(TEXTS))
    return enc, collate(enc, index, tok.pad_token_id), collate_packed(enc, index)


def test_packed_batch_lays_texts_end_to_end(tiny_model):
    enc, padded, packed = _packed(tiny_model)
    lengths = enc.lengths
    assert packed["cu_seqlens"].tolist() == [0, *np.cumsum(lengths).tolist()]
    assert packed["cu_seqlens"].dtype == torch.int32 and packed["max_len"] == lengths.max()
    for i, (start, end) in enumerate(zip(packed["cu_seqlens"][:-1], packed["cu_seqlens"][1:])):
        assert packed["input_ids"][start:end].tolist() == padded["input_ids"][i, :lengths[i]].tolist()
        assert packed["position_ids"][start:end].tolist() == list(range(lengths[i]))
    assert real_tokens(packed) == real_tokens(padded) == lengths.sum()


def test_packed_logits_equal_stock_logits_in_eval(tiny_model):
    _, padded, packed = _packed(tiny_model)
    model = load_classifier(str(tiny_model), ["a", "b"]).eval()
    with torch.no_grad():
        stock = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        assert torch.allclose(fastpath.logits(model, packed), stock, atol=1e-5)


def test_packed_gradients_equal_stock_gradients_without_dropout(tiny_model):
    _, padded, packed = _packed(tiny_model)
    model = load_classifier(str(tiny_model), ["a", "b"]).train()  # the tiny model has dropout 0
    _assert_same_gradients(_grads(model, packed, True), _grads(model, padded, False))


def test_packed_layout_only_where_flash_attention_runs(tiny_model):
    model = load_classifier(str(tiny_model), ["a", "b"])
    assert not fastpath.layout(model, torch.device("cpu"), None, 0).packed
    assert fastpath.layout(model, torch.device("cuda"), torch.bfloat16, 0).packed
    assert not fastpath.layout(model, torch.device("cuda"), None, 0).packed  # fp32: no flash kernel
    assert not fastpath.layout(model, torch.device("cuda"), torch.bfloat16, 0, unpadded=False).packed
    assert not fastpath.layout(model, torch.device("cuda"), torch.bfloat16, 0, cls_fast_path=False).packed
    fixed = fastpath.layout(model, torch.device("cuda"), torch.bfloat16, 0, pad_to=512)  # --no-dynamic-padding
    assert not fixed.packed and fixed.pad_to == 512



def test_cpu_micro_batches_only_on_cpu_and_only_when_asked(tiny_model):
    model = load_classifier(str(tiny_model), ["a", "b"])
    assert fastpath.layout(model, torch.device("cpu"), None, 0).cpu_cap == (2, 64)  # the tiny BERT's shape
    assert fastpath.layout(model, torch.device("cpu"), None, 0, cpu_micro_batches=False).cpu_cap is None
    assert fastpath.layout(model, torch.device("cuda"), torch.bfloat16, 0).cpu_cap is None


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (run on the device machine)")


def _bf16_close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a.float() - b.float()).norm() / b.float().norm()) < 2e-2


@cuda
def test_cuda_flash_packed_logits_and_gradients_match_stock_bf16(tiny_model):
    _, padded, packed = _packed(tiny_model)
    model = load_classifier(str(tiny_model), ["a", "b"]).cuda().train()
    outs, grads = [], []
    for batch, fast in ((to_device(packed, "cuda"), True), (to_device(padded, "cuda"), False)):
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fastpath.logits(model, batch, fast)
        torch.nn.functional.cross_entropy(out.float(), batch["labels"]).backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.bert.encoder.layer[0].parameters()]))
    assert _bf16_close(outs[0], outs[1])
    assert _bf16_close(grads[0], grads[1])


@cuda
def test_cuda_flash_packed_applies_attention_dropout(tiny_model):
    _, _, packed = _packed(tiny_model)
    model = load_classifier(str(tiny_model), ["a", "b"]).cuda()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5 if module is model.bert.encoder.layer[0].attention.self.dropout else 0.0
    batch = to_device(packed, "cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        first, second = (fastpath.logits(model.train(), batch) for _ in range(2))
        evaluated = fastpath.logits(model.eval(), batch)
    assert not torch.equal(first, second)  # a fresh dropout mask each call
    assert not torch.equal(first, evaluated)


def _with_dropout(model, p: float):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
    return model


def test_lane_dropout_layers_equal_stock_layers_when_nothing_is_dropped(tiny_model, monkeypatch):
    batch = _batch(tiny_model)  # padded: the attention bias matters
    model = _with_dropout(load_classifier(str(tiny_model), ["a", "b"]), 0.1)
    with torch.no_grad():
        stock = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # every mask keeps everything, so training mode must compute the evaluation forward and its gradients
    monkeypatch.setattr(dropout, "drop_mask", lambda shape, p: (torch.zeros(shape, dtype=torch.bool), 0.0))
    model.train()
    for module in (model.bert.embeddings.dropout, model.dropout, *model.bert.encoder.layer[-1].modules()):
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # layers outside lane dropout: stock dropout, off here
    model.zero_grad()
    lanes = fastpath.logits(model, batch, True, lane_dropout=True)
    torch.nn.functional.cross_entropy(lanes, batch["labels"]).backward()
    lane_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert torch.allclose(lanes, stock, atol=1e-5)
    _assert_same_gradients(lane_grads, _grads(_with_dropout(model, 0.0), batch, True))


def test_lane_dropout_draws_fresh_masks_in_training_only(tiny_model):
    batch = _batch(tiny_model)
    model = _with_dropout(load_classifier(str(tiny_model), ["a", "b"]), 0.3)
    first, second = (fastpath.logits(model.train(), batch, True, lane_dropout=True) for _ in range(2))
    with torch.no_grad():
        evaluated = fastpath.logits(model.eval(), batch, True, lane_dropout=True)
        stock = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not torch.equal(first, second)
    assert torch.allclose(evaluated, stock, atol=1e-5)


def test_lane_dropout_only_for_cpu_training_on_the_fast_path(tiny_model):
    model = load_classifier(str(tiny_model), ["a", "b"])
    assert fastpath.layout(model, torch.device("cpu"), None, 0).lane_dropout
    assert not fastpath.layout(model, torch.device("cpu"), None, 0, lane_dropout=False).lane_dropout
    assert not fastpath.layout(model, torch.device("cpu"), None, 0, cls_fast_path=False).lane_dropout
    assert not fastpath.layout(model, torch.device("cuda"), torch.bfloat16, 0).lane_dropout


# --- text pairs: the batch's token type ids reach the embeddings, padded and packed ---------------------------------

FIRSTS = ["good film", "the plot was long and the music was dull", "loved it", "a very short story"]
SECONDS = ["a great movie with a wonderful actor", "boring", "hated the ending and the light", "superb"]


def _pair_batches(model_dir):
    tok = load_tokenizer(str(model_dir))
    enc = encode(tok, FIRSTS, [0, 1, 0, 1], 64, "head+tail", pairs=SECONDS)
    index = np.arange(len(FIRSTS))
    return collate(enc, index, tok.pad_token_id), collate_packed(enc, index)


def _stock(model, padded, **types):
    return model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], **types).logits


def _pair_model(model_dir, attn="sdpa"):
    """The tiny classifier with a head of unit-scale weights: logits of order one, so that 1e-5 is tight
    (its freshly drawn head gives logits of order 1e-3)."""
    model = load_classifier(str(model_dir), ["a", "b"], attn_implementation=attn)
    torch.manual_seed(0)
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 1.0)
    return model


def test_pair_logits_equal_the_stock_models_with_token_type_ids_padded_and_packed(tiny_model):
    padded, packed = _pair_batches(tiny_model)
    assert padded["token_type_ids"].sum() > 0
    for attn in ("sdpa", "eager"):
        model = _pair_model(tiny_model, attn).eval()
        with torch.no_grad():
            stock = _stock(model, padded, token_type_ids=padded["token_type_ids"])
            assert torch.allclose(fastpath.logits(model, padded), stock, atol=1e-5), attn
            assert torch.allclose(fastpath.logits(model, packed), stock, atol=1e-5), attn
            assert torch.allclose(fastpath.logits(model, padded, fast=False), stock, atol=1e-5), attn
            # the type ids change what the model computes: a fast path still embedding zeros would fail above
            assert (_stock(model, padded) - stock).abs().max() > 1e-3, attn  # 100 times the bound
            assert stock.abs().max() > 0.1  # logits of order one: the 1e-5 above is a tight bound


def test_pair_gradients_equal_the_stock_models_padded_and_packed(tiny_model):
    padded, packed = _pair_batches(tiny_model)
    model = _pair_model(tiny_model).train()  # the tiny model has dropout 0
    stock = _grads(model, padded, False)
    assert stock["bert.embeddings.token_type_embeddings.weight"][1].abs().sum() > 0  # type 1 was read
    _assert_same_gradients(_grads(model, padded, True), stock)
    _assert_same_gradients(_grads(model, packed, True), stock)


def test_stock_forward_of_a_model_without_token_types_takes_pairs(tmp_path):
    """DistilBERT's forward has no token_type_ids argument: the pair's type ids are left out, not an error."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    model = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2,
                                                                 hidden_dim=32, max_position_embeddings=32)).eval()
    ids = torch.tensor([[1, 5, 2, 6, 2]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.tensor([[0, 0, 0, 1, 1]])}
    with torch.no_grad():
        assert torch.equal(fastpath.logits(model, batch), model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits)


@cuda
def test_cuda_flash_packed_pairs_match_stock_bf16(tiny_model):
    padded, packed = _pair_batches(tiny_model)
    model = _pair_model(tiny_model).cuda().eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        fast = fastpath.logits(model, to_device(packed, "cuda"))
        batch = to_device(padded, "cuda")
        stock = _stock(model, batch, token_type_ids=batch["token_type_ids"])
        zeros = _stock(model, batch)
    assert _bf16_close(fast, stock) and not _bf16_close(zeros, stock)
