"""Temperature scaling: the fit, the fold into the classifier, and what train records."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from finetune_bert.evaluation.calibration import MIN_ROWS, T_RANGE, fit_temperature, fold, head_layer, nll


def _overconfident(t: float, n: int = 4000, k: int = 2, seed: int = 0):
    """Labels drawn from softmax(z) (so z is calibrated), and the logits z * t a model with temperature t gives."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 1.5
    labels = torch.multinomial(torch.softmax(z, -1), 1, generator=g).flatten()
    return z * t, labels


@pytest.mark.parametrize("t", [3.0, 0.5, 1.7])
def test_the_fit_recovers_the_temperature_of_a_synthetically_miscalibrated_model(t):
    logits, labels = _overconfident(t)
    fitted = fit_temperature(logits, labels)
    assert fitted.kept
    assert fitted.value == pytest.approx(t, rel=0.08)
    assert fitted.nll_after < fitted.nll_before


def test_the_fitted_temperature_is_the_minimum_of_a_fine_grid():
    logits, labels = _overconfident(2.2, n=1000, k=3, seed=1)
    fitted = fit_temperature(logits, labels)
    grid = torch.exp(torch.linspace(math.log(T_RANGE[0]), math.log(T_RANGE[1]), 20001, dtype=torch.float64))
    assert fitted.nll_after <= float(nll(logits, labels, grid).min()) + 1e-9


def test_temperature_1_is_kept_when_the_nll_does_not_improve():
    """Logits that say nothing (all equal) have the same NLL at every temperature: nothing to gain."""
    fitted = fit_temperature(torch.zeros(200, 2), torch.arange(200) % 2)
    assert not fitted.kept and fitted.value == 1.0
    assert "did not lower the validation NLL" in fitted.note


def test_logits_that_are_not_finite_are_not_calibrated():
    logits = torch.randn(100, 2)
    logits[3, 0] = float("nan")
    fitted = fit_temperature(logits, torch.arange(100) % 2)
    assert fitted.value == 1.0


def test_fewer_than_50_validation_rows_are_not_calibrated_and_say_so():
    logits, labels = _overconfident(3.0, n=MIN_ROWS - 1)
    fitted = fit_temperature(logits, labels)
    assert fitted.value == 1.0 and fitted.fitted is None
    assert f"{MIN_ROWS - 1} validation rows, fewer than the {MIN_ROWS}" in fitted.note


def test_folding_divides_the_logits_by_t(tiny_model):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3).eval()
    ids = torch.tensor([[2, 20, 21, 3]])
    raw = model(input_ids=ids).logits
    layer = head_layer(model)
    assert layer == "classifier"
    model.load_state_dict(fold(model.state_dict(), layer, 2.5))
    assert torch.allclose(model(input_ids=ids).logits, raw / 2.5, atol=1e-6)


@pytest.mark.parametrize("kind", ["roberta", "distilbert"])
def test_the_logits_layer_is_found_in_other_architectures(kind):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    small = {"roberta": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
             "distilbert": dict(dim=32, n_layers=1, n_heads=2, hidden_dim=64)}[kind]
    config = AutoConfig.for_model(kind, vocab_size=50, num_labels=2, **small)
    model = AutoModelForSequenceClassification.from_config(config)
    assert head_layer(model) == {"roberta": "classifier.out_proj", "distilbert": "classifier"}[kind]


@pytest.fixture(scope="module")
def calibrated(tiny_model, tmp_path_factory):
    """A run with 100 validation rows, enough to calibrate."""
    from conftest import toy_rows, write_csv
    from finetune_bert import train

    folder = tmp_path_factory.mktemp("calibrated")
    data = write_csv(folder / "train.csv", toy_rows(400, seed=3))
    test = write_csv(folder / "test.csv", toy_rows(60, seed=4))
    return train(data=str(data), test_data=str(test), model=str(tiny_model), output=str(folder / "model"),
                 epochs=2, batch_size=16, lr=3e-3, max_length=32, val_fraction=0.25, seed=0, bf16=False)


def test_train_folds_the_temperature_and_records_it(calibrated):
    out = calibrated.output
    info = json.loads(open(f"{out}/finetune_bert.json").read())
    c = calibrated.metrics["calibration"]
    assert c["kept"] and info["temperature"] == pytest.approx(c["value"]) and c["value"] != 1.0
    assert c["rows"] == 100
    for split in ("validation", "test"):
        before, after = c[split]["before"], c[split]["after"]
        assert set(before) == set(after) == {"log_loss", "ece", "brier", "reliability"}
    assert c["validation"]["after"]["log_loss"] < c["validation"]["before"]["log_loss"]
    # the test metrics are the saved model's: the calibrated ones
    assert calibrated.metrics["test"]["log_loss"] == pytest.approx(c["test"]["after"]["log_loss"])


def test_folded_temperature_gives_the_calibrated_probabilities_in_predict_and_in_the_pipeline(calibrated):
    """The saved folder alone calibrates: finetune-bert's API and plain transformers.pipeline agree, and
    both equal softmax(uncalibrated logits / T)."""
    from transformers import AutoModelForSequenceClassification, pipeline

    from finetune_bert import load

    out, t = calibrated.output, calibrated.metrics["calibration"]["value"]
    texts = ["a great and wonderful film", "boring dull plot", "the camera light at night"]
    ours = load(out, device="cpu", backend="torch-fp32").predict_proba(texts)  # exact: compared at 1e-5
    pipe = pipeline("text-classification", model=out, device="cpu", top_k=None)
    theirs = np.array([[d["score"] for d in sorted(row, key=lambda d: d["label"])] for row in pipe(texts)])
    assert np.allclose(ours, theirs, atol=1e-5)
    # undo the fold: the raw classifier's logits divided by T give the same probabilities
    raw = AutoModelForSequenceClassification.from_pretrained(out).eval()
    raw.load_state_dict(fold(raw.state_dict(), head_layer(raw), 1 / t))
    tok = pipe.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = raw(**tok).logits
    assert np.allclose(torch.softmax(logits / t, -1).numpy(), ours, atol=1e-5)
    assert not np.allclose(torch.softmax(logits, -1).numpy(), ours, atol=1e-3)


def test_no_calibrate_keeps_the_raw_softmax(tiny_model, toy_data, tmp_path):
    from finetune_bert import train

    r = train(data=str(toy_data["train"]), model=str(tiny_model), output=str(tmp_path / "m"), epochs=1,
              batch_size=16, max_length=32, calibrate=False, val_fraction=0.4)
    assert r.metrics["calibration"]["value"] == 1.0
    assert r.metrics["calibration"]["note"] == "not calibrated: --no-calibrate"
    assert json.loads((tmp_path / "m" / "finetune_bert.json").read_text())["temperature"] == 1.0


def test_a_small_validation_split_is_not_calibrated_with_a_note(trained):
    """The shared run has 16 validation rows."""
    c = trained.metrics["calibration"]
    assert c["value"] == 1.0 and "fewer than the 50" in c["note"]


def test_a_validation_set_of_one_class_is_not_calibrated_and_says_why():
    """One class in validation drives T to the sharp end: every answer would say 0.99. Refused, with a note."""
    logits = torch.randn(200, 2, generator=torch.Generator().manual_seed(0)) * 0.3
    fitted = fit_temperature(logits + torch.tensor([1.0, 0.0]), torch.zeros(200, dtype=torch.long))
    assert fitted.value == 1.0 and "validation holds one class only" in fitted.note


def test_a_class_with_too_few_validation_rows_is_not_calibrated():
    logits, labels = _overconfident(3.0, n=400)
    labels = torch.zeros_like(labels)
    labels[:4] = 1
    fitted = fit_temperature(logits, labels)
    assert fitted.value == 1.0 and "class 1 has 4 validation rows" in fitted.note


def test_a_fit_that_runs_to_the_sharp_end_of_its_range_is_not_kept():
    """Both classes present, every one right with a small margin: the NLL keeps falling as T shrinks."""
    labels = torch.arange(200) % 2
    logits = torch.nn.functional.one_hot(labels, 2).double() * 0.2
    fitted = fit_temperature(logits, labels)
    assert fitted.value == 1.0 and fitted.fitted is not None and "sharp end of its range" in fitted.note


def _per_label(temps: tuple[float, ...], n: int = 6000, seed: int = 0):
    """Multi-label: labels drawn from sigmoid(z), so z is calibrated, and the logits z * t_k a model whose label
    k has temperature t_k gives."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, len(temps), generator=g, dtype=torch.float64) * 2.0
    labels = torch.bernoulli(torch.sigmoid(z), generator=g)
    return z * torch.tensor(temps, dtype=torch.float64), labels


def test_per_label_fits_recover_each_labels_temperature():
    from finetune_bert.evaluation.calibration import fit_label_temperatures

    logits, labels = _per_label((0.5, 2.0, 1.0))
    fitted = fit_label_temperatures(logits, labels)
    assert [t.fitted for t in fitted] == [pytest.approx(x, rel=0.1) for x in (0.5, 2.0, 1.0)]
    assert fitted[0].kept and fitted[1].kept and fitted[0].nll_after < fitted[0].nll_before
    # T = 1 is right for the third: kept or not, the fit moved it by little
    assert fitted[2].value == pytest.approx(1.0, rel=0.1)


def test_the_binary_fit_is_the_minimum_of_a_fine_grid():
    from finetune_bert.evaluation.calibration import binary_nll, fit_label_temperature

    logits, labels = _per_label((1.8,), n=800, seed=2)
    fitted = fit_label_temperature(logits[:, 0], labels[:, 0])
    grid = torch.exp(torch.linspace(math.log(T_RANGE[0]), math.log(T_RANGE[1]), 20001, dtype=torch.float64))
    assert fitted.nll_after <= float(binary_nll(logits[:, 0], labels[:, 0], grid).min()) + 1e-9
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0] / 1.8, labels[:, 0])
    assert float(binary_nll(logits[:, 0], labels[:, 0], 1.8)) == pytest.approx(float(bce), rel=1e-12)


def test_a_label_with_too_few_positives_or_negatives_is_not_calibrated():
    from finetune_bert.evaluation.calibration import MIN_PER_CLASS, fit_label_temperatures

    logits, labels = _per_label((3.0, 3.0, 3.0), n=400)
    labels[:, 0] = 0
    labels[:MIN_PER_CLASS - 1, 0] = 1             # 9 positives
    labels[:, 1] = 1
    labels[:MIN_PER_CLASS - 2, 1] = 0             # 8 negatives
    fitted = fit_label_temperatures(logits, labels)
    assert not fitted[0].kept and "9 positive and 391 negative" in fitted[0].note
    assert not fitted[1].kept and "392 positive and 8 negative" in fitted[1].note
    assert fitted[2].kept and fitted[2].value == pytest.approx(3.0, rel=0.15)
    few = fit_label_temperatures(logits[:MIN_ROWS - 1], labels[:MIN_ROWS - 1])
    assert all(not t.kept and "fewer than the 50" in t.note for t in few)


def test_a_label_fit_at_the_sharp_end_is_not_kept():
    """Every row right with a small margin: the binary NLL keeps falling as T shrinks."""
    from finetune_bert.evaluation.calibration import fit_label_temperature

    labels = (torch.arange(200) % 2).double()
    fitted = fit_label_temperature((labels * 2 - 1) * 0.2, labels)
    assert not fitted.kept and "sharp end of its range" in fitted.note


def test_fold_rows_divides_each_output_by_its_own_temperature():
    from finetune_bert.evaluation.calibration import fold_rows

    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3)
    x = torch.randn(7, 5)
    raw = layer(x).detach()
    temps = [0.5, 2.0, 1.25]
    layer.load_state_dict({k.removeprefix("head."): v for k, v in
                           fold_rows({f"head.{k}": v for k, v in layer.state_dict().items()}, "head", temps).items()})
    folded = layer(x).detach()
    for k, t in enumerate(temps):
        assert torch.allclose(folded[:, k], raw[:, k] / t, atol=1e-6)


def test_calibrate_labels_folds_the_kept_temperatures_into_a_real_engine(tiny_model):
    """A tiny BERT whose head outputs its bias (weights zero): label 0 says 1.0 where 88% are positive
    (T = 0.5 would be right), label 1 has 5 positives (too few), label 2 says -1.0 where 38% are positive
    (T = 2). The kept temperatures go into their rows of the engine's head: its logits are then the
    calibrated ones, column by column."""
    from transformers import AutoModelForSequenceClassification

    from finetune_bert.data.tokens import Encoded
    from finetune_bert.engine.torch_engine import Engine
    from finetune_bert.evaluation.calibration import calibrate_labels

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3).eval()
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([1.0, 1.0, -1.0]))
    rng = np.random.default_rng(0)
    ids = [np.concatenate([[2], rng.integers(5, 40, size=n), [3]]).astype(np.int32) for n in rng.integers(1, 20, 120)]
    labels = np.zeros((120, 3), dtype=np.float32)
    labels[:106, 0], labels[:5, 1], labels[:45, 2] = 1, 1, 1
    val = Encoded(ids, np.array([len(x) for x in ids]), labels)
    engine = Engine(model, torch.device("cpu"), 0)
    before = engine.logits(val, 32)
    temps, measures, after = calibrate_labels(engine, val, ["a", "b", "c"], 32)
    assert [t.kept for t in temps] == [True, False, True]
    assert temps[0].value == pytest.approx(0.5, rel=0.05) and temps[2].value == pytest.approx(2.0, rel=0.05)
    assert torch.allclose(after, before / torch.tensor([t.value for t in temps], dtype=before.dtype), atol=1e-6)
    assert torch.allclose(engine.logits(val, 32), after, atol=1e-5)
    assert set(measures["before"]) == set(measures["after"]) == {"log_loss", "ece", "brier"}
    assert measures["after"]["log_loss"] < measures["before"]["log_loss"]
    assert measures["per_label"]["b"]["before"] == measures["per_label"]["b"]["after"]
    off, _, _ = calibrate_labels(engine, val, ["a", "b", "c"], 32, enabled=False)
    assert all(t.value == 1.0 and t.note == "not calibrated: --no-calibrate" for t in off)


def test_binary_measures_of_a_hand_computed_example():
    """Probabilities 0.9, 0.9 (bin 13 of 15), 0.2, 0.2 (bin 2) against labels 1, 0, 0, 0: bin 13 has rate
    1/2 against 0.9, bin 2 rate 0 against 0.2. ECE = 0.5 * 0.4 + 0.5 * 0.2 = 0.3; Brier = (0.01 + 0.81 +
    0.04 + 0.04) / 4 = 0.225."""
    from finetune_bert.evaluation.calibration import binary_measures

    p = torch.tensor([0.9, 0.9, 0.2, 0.2], dtype=torch.float64)
    m = binary_measures(torch.log(p / (1 - p)), torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert m["ece"] == pytest.approx(0.3) and m["brier"] == pytest.approx(0.225)
    assert m["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.1) + 2 * math.log(0.8)) / 4)
