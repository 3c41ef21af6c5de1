"""Token buckets for CUDA-graph steps: the plan is the least padding, every batch fits, and a padded packed
batch gives its texts the same logits and gradients (the packed path runs on the CPU too, in fp32)."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from finetune_bert.engine import fastpath
from finetune_bert.engine.batches import collate_packed
from finetune_bert.engine.model_folder import load_classifier, load_tokenizer
from finetune_bert.data.tokens import encode

# graph_plan is lab code for CUDA-graph capture, kept in benchmarks/ until the product uses it
_spec = importlib.util.spec_from_file_location("graph_plan", Path(__file__).parents[2] / "benchmarks" / "graph_plan.py")
graph_plan = sys.modules["graph_plan"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(graph_plan)
Bucket = graph_plan.Bucket


def _cost(totals, buckets, max_len):
    return graph_plan.padding(totals, buckets, max_len) * totals.sum()


def test_the_plan_pads_least_among_every_partition_into_that_many_buckets():
    rng = np.random.default_rng(0)
    totals = rng.integers(200, 900, size=40)
    values = np.unique(totals)[:9]
    totals = totals[np.isin(totals, values)]
    best = graph_plan.plan(totals, 3, max_len=512, multiple=1)
    assert len(best) <= 3
    for cuts in itertools.combinations(range(1, len(values)), 2):  # every split of the 9 values into 3 groups
        bounds = [0, *cuts, len(values)]
        buckets = [graph_plan._bucket(int(values[a]), int(values[b - 1]), 512, 1) for a, b in zip(bounds, bounds[1:])]
        assert _cost(totals, best, 512) <= _cost(totals, buckets, 512) + 1e-9


def test_every_step_of_a_run_fits_a_bucket_with_bounded_padding():
    lengths = np.random.default_rng(1).integers(20, 512, size=3000)
    totals = graph_plan.step_totals(lengths, 64, seed=0, epochs=2)
    assert len(totals) == 2 * (3000 // 64)
    buckets = graph_plan.plan(totals, 8, max_len=512)
    assert len(buckets) <= 8 and all(b.tokens % 64 == 0 for b in buckets)
    assert all(graph_plan.bucket_for(int(t), buckets, 512) is not None for t in totals)
    # each doubling of the buckets about halves the padding here: 42%, 20%, 9.3%, 3.8% for 2 to 16
    pads = [graph_plan.padding(totals, graph_plan.plan(totals, k, 512), 512) for k in (2, 4, 8, 16)]
    assert pads == sorted(pads, reverse=True) and pads[-1] < 0.05


def test_a_pad_segment_is_never_empty_nor_longer_than_the_model_reads():
    b = graph_plan._bucket(1000, 1000, max_len=512, multiple=64)
    assert b.tokens >= 1000 + b.segments
    b = graph_plan._bucket(100, 3000, max_len=512, multiple=64)
    assert b.segments * 512 >= b.tokens - 100 and b.tokens >= 3000 + b.segments


@pytest.fixture
def packed(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    torch.manual_seed(0)
    model = load_classifier(str(tiny_model), ["a", "b"])
    texts = ["good film", "the plot was dull and long", "wonderful music", "bad", "it was a very long story"]
    enc = encode(tok, texts, [1, 0, 1, 0, 0], 64, "head+tail")
    return model, tok, collate_packed(enc, np.arange(len(texts)))


@pytest.mark.parametrize("bucket", [Bucket(64, 1), Bucket(200, 3)])
def test_a_padded_packed_batch_gives_its_texts_the_same_logits_and_gradients(packed, bucket):
    model, tok, batch = packed

    def step(b):
        model.zero_grad()
        logits = fastpath.logits(model, b, train=False)
        F.cross_entropy(logits, b["labels"], reduction="sum").backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    padded = graph_plan.pad_packed(batch, bucket, max_len=64, pad_id=tok.pad_token_id)
    assert len(padded["input_ids"]) == bucket.tokens and len(padded["cu_seqlens"]) == len(batch["cu_seqlens"]) + bucket.segments
    assert int(np.diff(padded["cu_seqlens"].numpy()).min()) >= 1 and int(padded["position_ids"].max()) < 64
    (plain_logits, plain_grads), (pad_logits, pad_grads) = step(batch), step(padded)
    assert pad_logits.shape == plain_logits.shape and torch.allclose(pad_logits, plain_logits, atol=1e-5)
    assert plain_grads.keys() == pad_grads.keys()
    for name, grad in plain_grads.items():
        assert torch.allclose(pad_grads[name], grad, atol=1e-5), name


def test_a_batch_that_does_not_fit_its_bucket_is_refused(packed):
    _, tok, batch = packed
    with pytest.raises(ValueError, match="do not pad into"):
        graph_plan.pad_packed(batch, Bucket(len(batch["input_ids"]), 1), 64, tok.pad_token_id)
