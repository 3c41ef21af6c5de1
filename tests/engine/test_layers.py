"""engine/layers.py: a model cut down to some of its own encoder layers keeps exactly those layers' weights, and
saves as an ordinary folder of that depth."""

import copy

import pytest
import torch

from finetune_bert.engine.layers import keep_layers, pick_layers
from finetune_bert.errors import UserError


def test_pick_layers_first_and_spread():
    assert pick_layers(6, 3, "first") == [0, 1, 2]
    assert pick_layers(6, 3, "spread") == [1, 3, 5]  # every 2nd, ending with the last
    assert pick_layers(12, 6, "spread") == [1, 3, 5, 7, 9, 11]
    assert pick_layers(6, 4, "spread") == [0, 2, 3, 5]
    assert pick_layers(4, 4, "spread") == [0, 1, 2, 3] and pick_layers(5, 1, "spread") == [4]


@pytest.fixture(scope="module")
def four_layers():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(3)
    config = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(config).eval()


@pytest.mark.parametrize("how, kept", [("first", [0, 1]), ("spread", [1, 3])])
def test_the_kept_layers_are_the_source_layers_asked_for(four_layers, how, kept, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = copy.deepcopy(four_layers)
    assert keep_layers(model, 2, how) == kept
    source, cut = four_layers.state_dict(), model.state_dict()
    assert model.config.num_hidden_layers == 2 and len(model.bert.encoder.layer) == 2
    for position, layer in enumerate(kept):
        theirs = {k.split(f"encoder.layer.{layer}.", 1)[1]: v for k, v in source.items() if f"encoder.layer.{layer}." in k}
        ours = {k.split(f"encoder.layer.{position}.", 1)[1]: v for k, v in cut.items() if f"encoder.layer.{position}." in k}
        assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
    assert all(torch.equal(source[k], v) for k, v in cut.items() if "encoder.layer." not in k)  # embeddings, head
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 40, (3, 9))
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)


def test_more_layers_than_the_model_has_is_one_line():
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64))
    with pytest.raises(UserError, match="--student-layers 3: the model has 2 layers; keep 1 to 2"):
        keep_layers(model, 3)
