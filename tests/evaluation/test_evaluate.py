"""Streaming metrics agree with scikit-learn; the evaluate command prints a table and writes JSON."""

import csv
import json
import os

import pytest

from finetune_bert.errors import UserError
from finetune_bert.evaluation.evaluate import evaluate


def test_evaluate_command_prints_table_and_writes_json(trained, toy_data, tmp_path, capsys):
    from finetune_bert.cli.main import main

    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", trained.output, "--data", str(toy_data["test"]), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    for text in ("precision", "recall", "macro avg", "accuracy", "roc_auc", "log_loss", "confusion matrix",
                 "negative", "positive"):
        assert text in printed
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 40 and metrics["accuracy"] == pytest.approx(trained.metrics["test"]["accuracy"])


def test_evaluate_maps_integer_labels_through_saved_names(trained, tmp_path):
    from conftest import toy_rows, write_csv
    rows = [{"text": r["text"], "label": r["label"]} for r in toy_rows(20, seed=5)]
    m = evaluate(trained.output, str(write_csv(tmp_path / "e.csv", rows)), str(tmp_path / "m.json"), quiet=True)
    assert m["n"] == 20 and sum(map(sum, m["confusion_matrix"])) == 20


def test_evaluate_other_classifier_takes_integer_labels_as_ids(tiny_model, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from conftest import toy_rows, write_csv
    folder = tmp_path / "hf-classifier"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2,
                                                               id2label={0: "negative", 1: "positive"})
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    rows = [{"text": r["text"], "label": int(r["label"] == "positive")} for r in toy_rows(10)]
    m = evaluate(str(folder), str(write_csv(tmp_path / "e.csv", rows)), str(tmp_path / "m.json"), quiet=True)
    assert m["n"] == 10 and [c["support"] for c in m["per_class"].values()] == [5, 5]


def test_evaluate_in_chunks_gives_the_metrics_of_one_chunk(trained, toy_data, tmp_path):
    one = evaluate(trained.output, str(toy_data["test"]), str(tmp_path / "a.json"), quiet=True, rows_per_chunk=1000)
    many = evaluate(trained.output, str(toy_data["test"]), str(tmp_path / "b.json"), quiet=True, rows_per_chunk=7)
    assert many["n"] == one["n"] == 40
    assert many["confusion_matrix"] == one["confusion_matrix"]
    assert many["log_loss"] == pytest.approx(one["log_loss"], rel=1e-5)
    assert many["roc_auc"] == pytest.approx(one["roc_auc"], abs=1e-6)


def test_evaluate_max_samples_in_chunks_scores_the_rows_seeded_sample_picks(trained, toy_data, tmp_path):
    from finetune_bert import load
    from finetune_bert.data.splits import seeded_sample
    from finetune_bert.evaluation.metrics import score

    from finetune_bert.data.rows import to_split
    from finetune_bert.data.readers import read_records

    clf = load(trained.output)
    whole, _ = clf.labels.known(to_split(read_records(toy_data["test"]), "test", None, None, True, True, skipped=[],
                                                 on_bad_rows="error"))
    split = seeded_sample(whole, 13, 7)
    expected = score(clf.engine, clf.encode(split.texts, split.labels), clf.label_names, 64)
    for rows_per_chunk in (4, 1000):
        m = evaluate(trained.output, str(toy_data["test"]), str(tmp_path / "m.json"), max_samples=13, seed=7,
                     quiet=True, rows_per_chunk=rows_per_chunk)
        assert m["n"] == 13 and m["confusion_matrix"] == expected["confusion_matrix"]
        assert m["log_loss"] == pytest.approx(expected["log_loss"], rel=1e-5)


def test_evaluate_bad_label_in_a_later_chunk_stops_before_scoring_in_one_line(trained, tmp_path):
    from conftest import toy_rows, write_csv
    from finetune_bert.errors import UserError
    rows = toy_rows(30, seed=3)
    rows[25]["label"] = "neutral"
    rows[28]["label"] = "mixed"
    data = write_csv(tmp_path / "e.csv", rows)
    with pytest.raises(UserError) as info:
        evaluate(trained.output, str(data), str(tmp_path / "m.json"), quiet=True, rows_per_chunk=4)
    assert str(info.value) == (f"{data}: line 27, column 'label': label 'neutral' is not one of the model's labels "
                               "(negative, positive) (1 more bad rows); fix the data or pass --on-bad-rows skip")
    assert not (tmp_path / "m.json").exists()
    m = evaluate(trained.output, str(data), str(tmp_path / "m.json"), on_bad_rows="skip", quiet=True,
                 rows_per_chunk=4)
    assert m["n"] == 28 and m["skipped_rows"] == 2


def test_evaluate_writes_out_the_rows_it_skips(trained, tmp_path, capsys):
    import csv
    from conftest import toy_rows, write_csv
    rows = toy_rows(12, seed=4)
    rows[3]["label"] = "neutral"
    rows[9]["text"] = ""
    data = write_csv(tmp_path / "e.csv", rows)
    evaluate(trained.output, str(data), str(tmp_path / "m.json"), on_bad_rows="skip", quiet=True, rows_per_chunk=5)
    skipped = list(csv.DictReader((tmp_path / "m.skipped.csv").open()))
    assert len(skipped) == 2 and "2 rows skipped and not scored" in capsys.readouterr().out
    assert {"line 5", "line 11"} <= {value for row in skipped for value in row.values()}


def test_evaluate_that_skips_every_row_is_an_error_not_accuracy_0(trained, tmp_path):
    from conftest import write_csv
    from finetune_bert.errors import UserError
    data = write_csv(tmp_path / "e.csv", [{"text": "good film", "label": "neutral"}] * 5)
    with pytest.raises(UserError, match=r"e.csv: no usable rows: all 5 rows are bad \(the first: line 2, column "
                                        r"'label': label 'neutral' is not one of .*nothing is left to score"):
        evaluate(trained.output, str(data), str(tmp_path / "m.json"), on_bad_rows="skip", quiet=True)
    assert not (tmp_path / "m.json").exists()


def test_evaluate_checks_options_output_and_data_before_loading_the_model(trained, toy_data, tmp_path, monkeypatch):
    from conftest import toy_rows, write_csv
    from finetune_bert.inference import classifier as predict
    from finetune_bert.errors import UserError

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before a check that should have stopped the run")
    monkeypatch.setattr(predict, "load", no_model)
    rows = toy_rows(8)
    rows[5]["label"] = "neutral"
    bad = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(UserError, match=r"line 7, column 'label': label 'neutral' is not one of"):
        evaluate(trained.output, str(bad), str(tmp_path / "m.json"), quiet=True)
    with pytest.raises(UserError) as both:
        evaluate(trained.output, str(toy_data["test"]), str(tmp_path / "m.json"), batch_size=0, max_samples=0)
    assert "--max-samples must be at least 1, got 0" in str(both.value)  # all at once, in one message
    assert "--batch-size must be at least 1, got 0" in str(both.value)
    with pytest.raises(UserError, match=r"--max-samples must be at least 1, got -3"):
        evaluate(trained.output, str(toy_data["test"]), str(tmp_path / "m.json"), max_samples=-3)
    (tmp_path / "folder.json").mkdir()
    for output, message in ((tmp_path / "folder.json", "is a folder"), (tmp_path / "m.txt", "give a file name ending in .json"),
                            (toy_data["test"], "give a file name ending in .json")):
        with pytest.raises(UserError, match=message):
            evaluate(trained.output, str(toy_data["test"]), str(output), quiet=True)


def test_evaluate_output_in_a_missing_folder_is_created(trained, toy_data, tmp_path):
    target = tmp_path / "new" / "deeper" / "m.json"
    evaluate(trained.output, str(toy_data["test"]), str(target), quiet=True)
    assert json.loads(target.read_text())["n"] == 40


def test_evaluate_into_a_read_only_model_folder_says_so_before_scoring(trained, toy_data, tmp_path, read_only):
    import shutil
    from finetune_bert.cli.main import main
    model = tmp_path / "model"
    shutil.copytree(trained.output, model)
    with read_only(model):
        code = main(["evaluate", "--model", str(model), "--data", str(toy_data["test"])])
    assert code == 2 and not (model / "evaluation.json").exists()


def test_evaluate_command_reports_every_bad_option_at_once(trained, toy_data, capsys):
    from finetune_bert.cli.main import main
    code = main(["evaluate", "--model", trained.output, "--data", str(toy_data["test"]), "--batch-size", "0",
                 "--max-samples", "-3"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--batch-size must be at least 1, got 0" in err and "--max-samples must be at least 1, got -3" in err


@pytest.mark.parametrize("name", ["config.json", "metrics.json", "tokenizer.json", "data_report.json"])
def test_evaluate_output_never_replaces_a_file_of_the_model(trained, toy_data, name):
    from finetune_bert.errors import UserError
    target = os.path.join(trained.output, name)
    before = open(target, "rb").read()
    with pytest.raises(UserError, match=rf"--output .*{name}: is a file of the model .*would damage the model"):
        evaluate(trained.output, str(toy_data["test"]), target, quiet=True)
    assert open(target, "rb").read() == before


def test_an_earlier_skipped_rows_file_does_not_outlive_a_run_that_skips_none(trained, toy_data, tmp_path):
    from conftest import toy_rows, write_csv
    rows = toy_rows(8)
    rows[2]["label"] = "neutral"
    evaluate(trained.output, str(write_csv(tmp_path / "bad.csv", rows)), str(tmp_path / "m.json"), quiet=True,
             on_bad_rows="skip")
    assert (tmp_path / "m.skipped.csv").is_file()
    evaluate(trained.output, str(toy_data["test"]), str(tmp_path / "m.json"), quiet=True)
    assert not (tmp_path / "m.skipped.csv").exists()
    (tmp_path / "m.skipped.csv").write_text("a file of the user's, named like ours\n")
    evaluate(trained.output, str(toy_data["test"]), str(tmp_path / "m.json"), quiet=True)
    assert (tmp_path / "m.skipped.csv").read_text() == "a file of the user's, named like ours\n"


def test_evaluate_errors_writes_the_most_confident_mistakes_beside_the_metrics(trained, tmp_path, capsys):
    from conftest import toy_rows, write_csv
    from finetune_bert.cli.main import main

    rows = toy_rows(40, seed=9)
    for row in rows[:6]:  # flipped labels: mistakes the model makes with confidence
        row["label"] = "negative" if row["label"] == "positive" else "positive"
    data = write_csv(tmp_path / "flipped.csv", rows)
    assert main(["evaluate", "--model", trained.output, "--data", str(data), "--output", str(tmp_path / "ev.json"),
                 "--errors", "4"]) == 0
    with open(tmp_path / "ev.errors.csv", newline="") as handle:
        errors = list(csv.DictReader(handle))
    assert len(errors) == 4
    confidences = [float(r["confidence"]) for r in errors]
    assert confidences == sorted(confidences, reverse=True)
    assert all(r["true_label"] != r["predicted"] for r in errors)
    assert {r["text"].strip() for r in errors} <= {row["text"].strip() for row in rows}
    assert errors[0]["row"].startswith("line ")
    metrics = json.loads((tmp_path / "ev.json").read_text())
    assert len(metrics["mistakes"]) <= 20 and metrics["mistakes"][0]["confidence"] == pytest.approx(confidences[0], abs=1e-6)
    assert (tmp_path / "ev.html").is_file()
    assert "ev.errors.csv" in capsys.readouterr().out


def test_evaluate_of_a_calibrated_model_reports_it_before_calibration_too(tiny_model, tmp_path):
    """The uncalibrated measures are the same logits times the recorded temperature."""
    from conftest import toy_rows, write_csv
    from finetune_bert import evaluate, train

    data = write_csv(tmp_path / "train.csv", toy_rows(300, seed=5))
    r = train(data=str(data), model=str(tiny_model), output=str(tmp_path / "m"), epochs=1, batch_size=16,
              lr=3e-3, max_length=32, val_fraction=0.3, bf16=False)
    assert r.metrics["calibration"]["kept"]
    test = write_csv(tmp_path / "test.csv", toy_rows(80, seed=6))
    m = evaluate(str(tmp_path / "m"), str(test), str(tmp_path / "ev.json"), quiet=True)
    assert m["temperature"] == pytest.approx(r.metrics["calibration"]["value"])
    assert set(m["uncalibrated"]) == {"log_loss", "ece", "brier", "reliability"}
    assert m["uncalibrated"]["log_loss"] != pytest.approx(m["log_loss"])


def test_evaluate_long_texts_as_chunks_from_the_command_line(trained, tmp_path):
    from conftest import write_csv
    from finetune_bert.cli.main import main

    long = " ".join(["the plot was dull and boring but the music was superb"] * 5)
    data = write_csv(tmp_path / "long.csv", [{"text": long, "label": "positive"}, {"text": "awful", "label": "negative"}])
    assert main(["evaluate", "--model", trained.output, "--data", str(data), "--output", str(tmp_path / "ev.json"),
                 "--long-texts", "chunks", "--stride", "8", "--aggregate", "max"]) == 0
    m = json.loads((tmp_path / "ev.json").read_text())
    assert m["n"] == 2 and m["reading"] == {"long_texts": "chunks", "stride": 8, "aggregate": "max", "truncation": None}
    assert main(["evaluate", "--model", trained.output, "--data", str(data), "--output", str(tmp_path / "ev2.json"),
                 "--truncation", "head"]) == 0
    assert json.loads((tmp_path / "ev2.json").read_text())["reading"]["truncation"] == "head"


def test_evaluate_with_and_without_overlap_gives_the_same_metrics(trained, toy_data, tmp_path):
    """--no-overlap reads, tokenizes and scores each chunk in turn; the default overlaps them: same numbers."""
    both = [evaluate(trained.output, str(toy_data["test"]), str(tmp_path / f"{o}.json"), quiet=True, rows_per_chunk=7,
                     overlap=o) for o in (True, False)]
    assert both[0] == both[1] and both[0]["n"] == 40


def test_evaluate_resolves_the_model_once(trained, toy_data, tmp_path, monkeypatch):
    """The model argument is opened once where it enters (ModelFolder) and handed down; no stage resolves
    the name again (a folder, its run info and its config were read 3-5 times each before)."""
    from finetune_bert.engine import model_folder
    from finetune_bert.engine.run_info import RunInfo

    calls = {"resolve": 0, "read": 0, "config": 0}
    resolve, read, config = model_folder.resolve, RunInfo.read, model_folder.load_model_config

    def counted(name, real):
        def call(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return call
    monkeypatch.setattr(model_folder, "resolve", counted("resolve", resolve))
    monkeypatch.setattr(RunInfo, "read", classmethod(lambda cls, folder: counted("read", read)(folder)))
    monkeypatch.setattr(model_folder, "load_model_config", counted("config", config))
    evaluate(model=trained.output, data=str(toy_data["test"]), output=str(tmp_path / "m.json"), quiet=True)
    assert calls == {"resolve": 1, "read": 1, "config": 1}


def test_evaluate_takes_its_config_as_train_does(trained, toy_data, tmp_path):
    from finetune_bert import EvaluateConfig

    cfg = EvaluateConfig(model=trained.output, data=str(toy_data["test"]), output=str(tmp_path / "a.json"))
    by_config = evaluate(cfg, quiet=True)
    by_keywords = evaluate(model=trained.output, data=str(toy_data["test"]), output=str(tmp_path / "b.json"),
                           quiet=True)
    assert by_config["accuracy"] == by_keywords["accuracy"] and by_config["n"] == by_keywords["n"] == 40
    with pytest.raises(UserError, match="--batch-size must be at least 1"):
        evaluate(cfg, batch_size=0)


def test_evaluate_of_an_installed_model_never_writes_into_the_package(toy_data, capsys):
    """minilm lives in site-packages: its default evaluation.json would land inside the installed package."""
    from finetune_bert.cli.main import main
    from finetune_bert.engine.model_folder import bundled_minilm

    before = sorted(p.name for p in bundled_minilm().iterdir())
    assert main(["evaluate", "--model", "minilm", "--data", str(toy_data["test"])]) == 2
    err = capsys.readouterr().err
    assert "is inside an installed package" in err and "pass --output FILE.json" in err
    assert sorted(p.name for p in bundled_minilm().iterdir()) == before
