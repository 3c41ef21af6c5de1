"""The [CLS]-only last layer computes the stock classifier's logits and gradients."""

import numpy as np
import torch

from finetune_bert import fastpath
from finetune_bert.encoding import collate, encode
from finetune_bert.model import load_classifier, load_tokenizer

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
            fast = fastpath.logits(model, batch["input_ids"], batch["attention_mask"])
            stock = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert torch.allclose(fast, stock, atol=1e-5), attn


def test_fast_gradients_equal_stock_gradients_without_dropout(tiny_model):
    batch = _batch(tiny_model)
    model = load_classifier(str(tiny_model), ["a", "b"]).train()  # the tiny model has dropout 0
    grads = []
    for fast in (True, False):
        model.zero_grad()
        out = fastpath.logits(model, batch["input_ids"], batch["attention_mask"], fast=fast)
        torch.nn.functional.cross_entropy(out, batch["labels"]).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    fast, stock = grads
    # the last layer's per-token parameters get no gradient from positions the classifier never reads
    for name, g in stock.items():
        assert torch.allclose(fast.get(name, torch.zeros_like(g)), g, atol=1e-5), name


def test_unsupported_models_use_the_stock_forward(tiny_model):
    model = load_classifier(str(tiny_model), ["a", "b"]).eval()
    model.bert.pooler = None
    assert not fastpath.supported(model)
