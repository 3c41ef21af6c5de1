"""Each speed technique computes what the plain path computes (tolerance 1e-5 in fp32).

Dynamic padding (against padding to --max-length) and length grouping only change how much padding a
text shares a batch with; SDPA only
changes the attention kernel; sorted evaluation only changes the order (restored); gradient accumulation
is covered in test_train.py (same update, 1e-5); CPU micro-batches sum the same gradients and score the
same logits (below).
"""

import dataclasses

import numpy as np
import torch

from finetune_bert.engine import fastpath
from finetune_bert.training import steps
from finetune_bert.data.tokens import encode
from finetune_bert.engine.batches import collate
from finetune_bert.engine.torch_engine import Engine
from finetune_bert.engine.model_folder import load_classifier, load_tokenizer

TEXTS = ["good film", "the plot was long and the music was dull and the ending was bad", "loved it",
         "a very short story with a wonderful actor and great light"]


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_dynamic_padding_equals_padding_to_max_length(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    model = load_classifier(str(tiny_model), ["a", "b"]).eval()
    enc = encode(tok, TEXTS, [0, 1, 0, 1], 64, "head+tail")
    index = np.arange(len(TEXTS))
    dynamic = _logits(model, collate(enc, index, tok.pad_token_id))
    fixed = _logits(model, collate(enc, index, tok.pad_token_id, pad_to=64))
    assert collate(enc, index, tok.pad_token_id)["input_ids"].shape[1] < 64
    assert torch.allclose(dynamic, fixed, atol=1e-5)


def test_length_grouping_does_not_change_an_examples_logits(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    model = load_classifier(str(tiny_model), ["a", "b"]).eval()
    enc = encode(tok, TEXTS, [0, 1, 0, 1], 64, "head+tail")
    alone = _logits(model, collate(enc, np.array([0]), tok.pad_token_id))
    with_long = _logits(model, collate(enc, np.array([0, 1]), tok.pad_token_id))[:1]
    assert torch.allclose(alone, with_long, atol=1e-5)


def test_sdpa_equals_eager_attention(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    enc = encode(tok, TEXTS, [0, 1, 0, 1], 64, "head+tail")
    batch = collate(enc, np.arange(len(TEXTS)), tok.pad_token_id)
    torch.manual_seed(0)
    sdpa = load_classifier(str(tiny_model), ["a", "b"], attn_implementation="sdpa").eval()
    torch.manual_seed(0)
    eager = load_classifier(str(tiny_model), ["a", "b"], attn_implementation="eager").eval()
    assert torch.allclose(_logits(sdpa, batch), _logits(eager, batch), atol=1e-5)


def _layouts(model, pad_id):
    whole = fastpath.layout(model, torch.device("cpu"), None, pad_id, cpu_micro_batches=False)
    # An absurd head count makes every text its own micro-batch, so the tiny model is split too.
    return whole, dataclasses.replace(whole, cpu_cap=(10**9, 1))


def _engine(model, layout):
    engine = Engine(model, torch.device("cpu"), layout.pad_id, training=model.training)
    engine.layout = layout
    return engine


def _step(model, enc, index, layout):
    """One training step's forward and backward: (loss, real tokens, gradients)."""
    model.zero_grad()
    share = steps.Share(index, 1 / len(index))
    done = steps._forward_backward(_engine(model, layout), enc, share, 1, steps.StepOptions(), 1)
    return done.loss, done.tokens, {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_same_step(a, b):
    (loss_a, tokens_a, grads_a), (loss_b, tokens_b, grads_b) = a, b
    assert tokens_a == tokens_b and torch.allclose(loss_a, loss_b, atol=1e-6)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-5), name


def test_cpu_micro_batches_give_the_whole_batchs_loss_and_gradients(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    model = load_classifier(str(tiny_model), ["a", "b"]).train()  # the tiny model has dropout 0
    enc = encode(tok, TEXTS * 2, [0, 1, 0, 1] * 2, 64, "head+tail")
    index = np.array([5, 0, 7, 2, 1, 6])
    whole, split = _layouts(model, tok.pad_token_id)
    assert split.fit(5) == 1
    _assert_same_step(_step(model, enc, index, whole), _step(model, enc, index, split))


def test_no_dynamic_padding_gives_the_same_loss_and_gradients(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    model = load_classifier(str(tiny_model), ["a", "b"]).train()  # the tiny model has dropout 0
    enc = encode(tok, TEXTS, [0, 1, 0, 1], 64, "head+tail")
    results = []
    for pad_to in (0, 64):
        layout = fastpath.layout(model, torch.device("cpu"), None, tok.pad_token_id, pad_to=pad_to)
        assert layout.batch(enc, np.arange(4))["input_ids"].shape[1] == (pad_to or int(enc.lengths.max())) and \
            enc.lengths.max() < 64
        results.append(_step(model, enc, np.arange(4), layout))
    _assert_same_step(*results)


def test_cpu_micro_batched_evaluation_gives_the_same_logits(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    model = load_classifier(str(tiny_model), ["a", "b"]).eval()
    enc = encode(tok, TEXTS * 3, [0, 1, 0, 1] * 3, 64, "head+tail")
    whole, split = _layouts(model, tok.pad_token_id)
    out = []
    for layout in (whole, split):
        logits = torch.zeros(len(enc), 2)
        batches = 0
        for index, batch_logits in _engine(model, layout).infer(enc, 8):
            logits[torch.from_numpy(index)] = batch_logits
            batches += 1
        out.append((logits, batches))
    assert out[0][1] == 2 and out[1][1] == len(enc)
    assert torch.allclose(out[0][0], out[1][0], atol=1e-5)
