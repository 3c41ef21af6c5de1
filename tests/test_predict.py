"""The Python API and the predict command."""

import csv
import json

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


def _read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_file_in_chunks_writes_rows_in_the_input_order(trained, toy_data, tmp_path):
    from finetune_bert import load
    from finetune_bert.predict import predict_file
    clf = load(trained.output)
    assert predict_file(clf, str(toy_data["test"]), str(tmp_path / "one.csv"), rows_per_chunk=1000) == 40
    assert predict_file(clf, str(toy_data["test"]), str(tmp_path / "many.csv"), rows_per_chunk=3) == 40
    one, many = _read(tmp_path / "one.csv"), _read(tmp_path / "many.csv")
    assert [r["text"] for r in many] == [r["text"] for r in _read(toy_data["test"])]
    assert [r["row"] for r in many] == [f"line {i}" for i in range(2, 42)]
    assert [r["predicted"] for r in many] == [r["predicted"] for r in one]
    assert np.allclose([float(r["prob_positive"]) for r in many], [float(r["prob_positive"]) for r in one],
                       atol=1e-5)


def test_predict_file_bad_row_in_a_later_chunk(trained, tmp_path):
    import pytest
    from conftest import toy_rows, write_csv
    from finetune_bert import load
    from finetune_bert.errors import UserError
    from finetune_bert.predict import predict_file
    clf = load(trained.output)
    rows = toy_rows(12)
    rows[9]["text"] = " "
    data = write_csv(tmp_path / "in.csv", rows)
    with pytest.raises(UserError) as info:
        predict_file(clf, str(data), str(tmp_path / "out.jsonl"), rows_per_chunk=2)
    assert str(info.value) == f"{data}: line 11, column 'text': text is empty; fix the data or pass --on-bad-rows skip"
    assert not (tmp_path / "out.jsonl").exists()
    assert predict_file(clf, str(data), str(tmp_path / "out.jsonl"), rows_per_chunk=2, on_bad_rows="skip") == 11
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["row"] for r in written] == [f"line {i}" for i in range(2, 14) if i != 11]
    assert [(r["row"], r["reason"]) for r in _read(tmp_path / "out.skipped.csv")] == [("line 11", "text is empty")]
