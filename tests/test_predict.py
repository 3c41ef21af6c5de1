"""The Python API and the predict command."""

import csv

import numpy as np

from finetune_bert.predict import Prediction


def test_predict_string_and_list(trained):
    from finetune_bert import load
    clf = load(trained.output)
    one = clf.predict("a good and wonderful film")
    assert isinstance(one, Prediction) and one.label == "positive" and 0.5 < one.confidence <= 1
    assert str(one).startswith("positive, confidence 0.")
    many = clf.predict(["awful dull plot", "superb music"])
    assert [p.label for p in many] == ["negative", "positive"]


def test_predict_proba_shapes_and_order(trained):
    from finetune_bert import load
    clf = load(trained.output)
    single = clf.predict_proba("loved it")
    assert single.shape == (2,) and abs(single.sum() - 1) < 1e-5
    texts = ["bad"] + ["the movie was a long story with great music " * 3] + ["hated"]
    probs = clf.predict_proba(texts)
    assert probs.shape == (3, 2)
    # sorted-by-length batching must come back in the caller's order
    assert np.allclose(probs[1], clf.predict_proba(texts[1]), atol=1e-5)
    assert clf.predict_proba([]).shape == (0, 2)


def test_predict_command_prints_label_and_confidence(trained, capsys):
    from finetune_bert.cli import main
    assert main(["predict", "--model", trained.output, "good superb film", "boring and awful"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("positive\t0.") and lines[1].startswith("negative\t0.")


def test_predict_file_writes_every_class_probability(trained, toy_data, tmp_path, capsys):
    from finetune_bert.cli import main
    out = tmp_path / "pred.csv"
    assert main(["predict", "--model", trained.output, "--input", str(toy_data["test"]), "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 40
    assert set(rows[0]) >= {"row", "text", "predicted", "confidence", "prob_negative", "prob_positive", "true_label"}
    assert abs(float(rows[0]["prob_negative"]) + float(rows[0]["prob_positive"]) - 1) < 1e-4
    assert sum(r["predicted"] == r["true_label"] for r in rows) >= 36


def test_predict_txt_input_one_text_per_line(trained, tmp_path):
    from finetune_bert.cli import main
    (tmp_path / "in.txt").write_text("good film\n\nawful film\n")
    assert main(["predict", "--model", trained.output, "--input", str(tmp_path / "in.txt"),
                 "--output", str(tmp_path / "o.jsonl")]) == 0
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 2
