"""training/kinds.py: each kind's loss and weights, and a regression head's target scaling folded exactly."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from finetune_bert.training.kinds import fold_scale, loss_sum, loss_weights


def test_each_kinds_loss_is_the_summed_per_text_loss():
    torch.manual_seed(0)
    logits, hot = torch.randn(5, 3), (torch.rand(5, 3) > 0.5).float()
    ids, targets = torch.tensor([0, 2, 1, 1, 0]), torch.randn(5)
    assert torch.allclose(loss_sum("classification", logits, ids, None), F.cross_entropy(logits, ids) * 5)
    assert torch.allclose(loss_sum("multi-label", logits, hot, None),
                          F.binary_cross_entropy_with_logits(logits, hot) * 5)  # mean over labels, summed over texts
    assert torch.allclose(loss_sum("regression", logits[:, :1], targets, None), F.mse_loss(logits[:, 0], targets) * 5)
    weights = torch.tensor([1.0, 4.0, 0.5])
    assert torch.allclose(loss_sum("multi-label", logits, hot, weights),
                          F.binary_cross_entropy_with_logits(logits, hot, pos_weight=weights) * 5)


def test_auto_weights_are_inverse_frequency_or_each_labels_negatives_over_positives():
    hot = np.array([[1, 0], [1, 0], [1, 1], [0, 0]], dtype=np.float32)
    assert loss_weights("multi-label", hot, 2, torch.device("cpu")).tolist() == pytest.approx([1 / 3, 3.0])
    ids = np.array([0, 0, 0, 1])
    assert loss_weights("classification", ids, 2, torch.device("cpu")).tolist() == pytest.approx([4 / 6, 4 / 2])
    assert loss_weights("regression", np.zeros(4, dtype=np.float32), 1, torch.device("cpu")) is None


def test_the_target_scaling_folds_into_the_head_exactly_and_back():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(1)
    config = BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=1, problem_type="regression")
    model = BertForSequenceClassification(config).eval()
    ids = torch.randint(0, 30, (4, 7))
    with torch.no_grad():
        z = model(input_ids=ids).logits[:, 0]
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        folded = fold_scale(weights, model, (5.5, 3.0))
        model.load_state_dict(folded)
        value = model(input_ids=ids).logits[:, 0]
    assert torch.allclose(value, z * 3.0 + 5.5, atol=1e-5)  # the model now answers in the targets' units
    back = fold_scale(folded, model, (5.5, 3.0), undo=True)
    assert all(torch.allclose(back[k], weights[k], atol=1e-6) for k in weights)
    assert fold_scale(weights, model, (0.0, 1.0)) is weights  # no scaling: nothing to fold


def test_the_prior_correction_undoes_pos_weight_exactly_at_the_weighted_optimum():
    """A label with base rate p trained with pos_weight w settles at logit(p) + log w; the correction gives p."""
    from finetune_bert.training.kinds import prior_correction, shift_bias

    p, w = torch.tensor([0.02, 0.3]), torch.tensor([49.0, 7 / 3])
    z = torch.zeros(2, requires_grad=True)  # a bias-only model of each label, fitted on the weighted loss
    optimizer = torch.optim.LBFGS([z], max_iter=200)

    def loss():
        optimizer.zero_grad()
        value = -(w * p * F.logsigmoid(z) + (1 - p) * F.logsigmoid(-z)).sum()
        value.backward()
        return value

    optimizer.step(loss)
    corrected = z.detach() + prior_correction(w)
    assert torch.allclose(torch.sigmoid(corrected), p, atol=1e-4)
    assert prior_correction(None) is None
    layer = torch.nn.Linear(3, 2)
    model = torch.nn.Sequential()
    model.add_module("classifier", layer)
    model.config = type("C", (), {"num_labels": 2})()
    shifted = shift_bias(dict(model.state_dict()), model, torch.tensor([-1.0, 2.0]))
    assert torch.allclose(shifted["classifier.bias"], layer.bias.detach() + torch.tensor([-1.0, 2.0]))


def test_the_distillation_loss_is_hintons_mix_and_unlabelled_rows_count_for_the_teacher_alone():
    from finetune_bert.training.kinds import Distillation, distill_loss_sum, labelled, no_labels

    torch.manual_seed(2)
    s, t, T, a = torch.randn(4, 3), torch.randn(4, 3), 2.0, 0.3
    has = torch.tensor([1.0, 0.0, 1.0, 1.0])  # row 1 has no label
    kd = Distillation(T, a)
    ids = torch.tensor([2, -1, 0, 1])
    p, q = F.softmax(t / T, dim=1), F.softmax(s / T, dim=1)
    kl = (p * (p.log() - q.log())).sum()
    ce = (F.cross_entropy(s, ids.clamp(min=0), reduction="none") * has).sum()
    assert torch.allclose(distill_loss_sum("classification", s, ids, t, None, kd), a * ce + (1 - a) * T**2 * kl)

    nan = float("nan")
    hot = torch.tensor([[1.0, 0.0, 1.0], [nan, nan, nan], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    ps, pt = torch.sigmoid(s / T), torch.sigmoid(t / T)
    bernoulli = (pt * (pt / ps).log() + (1 - pt) * ((1 - pt) / (1 - ps)).log()).mean(dim=1).sum()
    bce = (F.binary_cross_entropy_with_logits(s, hot.nan_to_num(0.0), reduction="none").mean(dim=1) * has).sum()
    assert torch.allclose(distill_loss_sum("multi-label", s, hot, t, None, kd), a * bce + (1 - a) * T**2 * bernoulli)

    y = torch.tensor([0.5, nan, -1.0, 2.0])
    squared = ((s[:, 0] - y.nan_to_num(0.0)) ** 2 * has).sum()
    assert torch.allclose(distill_loss_sum("regression", s[:, :1], y, t[:, :1], None, kd),
                          a * squared + (1 - a) * ((s[:, 0] - t[:, 0]) ** 2).sum())  # no temperature: the value

    full = torch.tensor([2, 1, 0, 1])  # every row labelled, alpha 1: the kind's own loss, class weights included
    weights = torch.tensor([1.0, 2.0, 0.5])
    assert torch.allclose(distill_loss_sum("classification", s, full, t, weights, Distillation(T, 1.0)),
                          loss_sum("classification", s, full, weights))
    assert distill_loss_sum("classification", s, full, s, None, Distillation(T, 0.0)).abs() < 1e-6  # agreeing: 0
    assert distill_loss_sum("multi-label", s, hot, s, None, Distillation(T, 0.0)).abs() < 1e-6
    assert labelled(no_labels("classification", 2, 3)).tolist() == [False, False]
    assert labelled(np.concatenate([hot.numpy(), no_labels("multi-label", 1, 3)])).tolist() == [True, False, True,
                                                                                                 True, False]
    assert loss_weights("classification", np.array([0, 0, 1, -1, -1]), 2, torch.device("cpu")).tolist() == \
        pytest.approx([3 / 4, 3 / 2])  # unlabelled rows are not a class
