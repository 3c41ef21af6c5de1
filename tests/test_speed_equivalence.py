"""Each speed technique computes what the plain path computes (tolerance 1e-5 in fp32).

Dynamic padding and length grouping only change how much padding a text shares a batch with; SDPA only
changes the attention kernel; sorted evaluation only changes the order (restored); gradient accumulation
is covered in test_train.py (same update, 1e-5).
"""

import numpy as np
import torch

from finetune_bert.encoding import collate, encode
from finetune_bert.model import load_classifier, load_tokenizer

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
    fixed = _logits(model, collate(enc, index, tok.pad_token_id, pad_to_multiple=64))
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
