"""The Python API and the predict command."""

import csv
import json
import os

import numpy as np
import pytest

from finetune_bert.inference.classifier import Prediction


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
    from finetune_bert.cli.main import main
    assert main(["predict", "--model", trained.output, "good superb film", "boring and awful"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("positive\t0.") and lines[1].startswith("negative\t0.")


def test_predict_file_writes_every_class_probability(trained, toy_data, tmp_path, capsys):
    from finetune_bert.cli.main import main
    out = tmp_path / "pred.csv"
    assert main(["predict", "--model", trained.output, "--input", str(toy_data["test"]), "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 40
    assert set(rows[0]) >= {"row", "text", "predicted", "confidence", "prob_negative", "prob_positive", "true_label"}
    assert abs(float(rows[0]["prob_negative"]) + float(rows[0]["prob_positive"]) - 1) < 1e-4
    assert sum(r["predicted"] == r["true_label"] for r in rows) >= 36


def test_predict_txt_input_one_text_per_line(trained, tmp_path):
    from finetune_bert.cli.main import main
    (tmp_path / "in.txt").write_text("good film\n\nawful film\n")
    assert main(["predict", "--model", trained.output, "--input", str(tmp_path / "in.txt"),
                 "--output", str(tmp_path / "o.jsonl")]) == 0
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 2


def _read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_file_in_chunks_writes_rows_in_the_input_order(trained, toy_data, tmp_path):
    from finetune_bert import load
    from finetune_bert.inference.files import predict_file
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
    from finetune_bert.inference.files import predict_file
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


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_predict_refuses_an_output_that_is_the_input_and_leaves_it_whole(trained, toy_data, tmp_path, how, capsys):
    from finetune_bert.cli.main import main
    data = tmp_path / "in.csv"
    data.write_bytes(toy_data["test"].read_bytes())
    out = {"same path": data, "symlink": tmp_path / "link.csv", "hard link": tmp_path / "hard.csv"}[how]
    if how == "symlink":
        out.symlink_to(data)
    elif how == "hard link":
        os.link(data, out)
    assert main(["predict", "--model", trained.output, "--input", str(data), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is the input" in err
    assert data.read_bytes() == toy_data["test"].read_bytes()


def test_predict_an_unlabelled_export_with_an_empty_label_column(trained, tmp_path):
    from conftest import write_csv
    from finetune_bert.cli.main import main
    data = write_csv(tmp_path / "todo.csv", [{"text": t, "label": ""} for t in ("good film", "awful film", "dull")])
    assert main(["predict", "--model", trained.output, "--input", str(data), "--output", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [r["true_label"] for r in rows] == ["", "", ""] and len(rows) == 3
    assert main(["predict", "--model", trained.output, "--input", str(data), "--output", str(tmp_path / "q.csv"),
                 "--ignore-labels"]) == 0
    assert "true_label" not in next(csv.DictReader((tmp_path / "q.csv").open()))


@pytest.mark.parametrize("ext", [".json", ".jsonl", ".ndjson", ".tsv", ".csv"])
def test_predict_writes_the_format_its_output_extension_says(trained, toy_data, tmp_path, ext):
    from finetune_bert.inference.classifier import load
    from finetune_bert.inference.files import predict_file
    out = tmp_path / f"p{ext}"
    assert predict_file(load(trained.output), str(toy_data["test"]), str(out)) == 40
    text = out.read_text()
    if ext == ".json":
        rows = json.loads(text)
    elif ext in (".jsonl", ".ndjson"):
        rows = [json.loads(line) for line in text.splitlines()]
    else:
        rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if ext == ".tsv" else ","))
    assert len(rows) == 40 and {"row", "predicted", "confidence", "prob_positive"} <= set(rows[0])


def test_predict_refuses_an_unknown_output_extension_before_loading_the_model(trained, toy_data, tmp_path,
                                                                              monkeypatch, capsys):
    from finetune_bert.inference import classifier as predict
    from finetune_bert.cli.main import main
    monkeypatch.setattr(predict, "load", lambda *a, **k: pytest.fail("model loaded before the output was checked"))
    code = main(["predict", "--model", trained.output, "--input", str(toy_data["test"]),
                 "--output", str(tmp_path / "p.txt")])
    assert code == 2 and "unknown extension '.txt'" in capsys.readouterr().err
    assert not (tmp_path / "p.txt").exists()


def test_predict_checks_rows_before_loading_the_model(trained, tmp_path, monkeypatch, capsys):
    from conftest import toy_rows, write_csv
    from finetune_bert.inference import classifier as predict
    from finetune_bert.cli.main import main
    monkeypatch.setattr(predict, "load", lambda *a, **k: pytest.fail("model loaded before the rows were checked"))
    rows = toy_rows(6)
    rows[4]["text"] = ""
    code = main(["predict", "--model", trained.output, "--input", str(write_csv(tmp_path / "d.csv", rows)),
                 "--output", str(tmp_path / "p.csv")])
    assert code == 2 and "line 6, column 'text': text is empty" in capsys.readouterr().err


def test_predict_command_checks_every_number(trained, capsys):
    from finetune_bert.cli.main import main
    assert main(["predict", "--model", trained.output, "--batch-size", "0", "good"]) == 2
    assert "--batch-size must be at least 1, got 0" in capsys.readouterr().err


def test_a_failed_predict_leaves_no_half_written_output(trained, toy_data, tmp_path, monkeypatch):
    from finetune_bert.inference.classifier import Classifier, load
    from finetune_bert.inference.files import predict_file
    out = tmp_path / "p.csv"
    out.write_text("an earlier run's predictions\n")
    clf = load(trained.output)
    calls = []

    def fail_on_second_chunk(self, prepared, batch_size=64):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return original(self, prepared, batch_size)
    original = Classifier.score_prepared
    monkeypatch.setattr(Classifier, "score_prepared", fail_on_second_chunk)
    with pytest.raises(RuntimeError):
        predict_file(clf, str(toy_data["test"]), str(out), rows_per_chunk=8)
    assert out.read_text() == "an earlier run's predictions\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.csv"]


def test_predict_with_a_base_model_warns_that_its_head_is_untrained(tiny_model, capsys):
    from finetune_bert.cli.main import main
    assert main(["predict", "--model", str(tiny_model), "good film"]) == 0
    err = capsys.readouterr().err
    assert "has no trained classification head" in err and "predictions are random" in err


def test_a_trained_model_loads_without_a_head_warning(trained, capsys):
    from finetune_bert import load
    load(trained.output)
    assert "classification head" not in capsys.readouterr().err


@pytest.mark.parametrize("text,reason", [("<br /><br />", "text is empty once cleaned"),
                                         ("\u200b \u00a0", "text has no visible characters")])
def test_predict_input_with_nothing_visible_is_a_bad_row(trained, tmp_path, text, reason, capsys):
    from conftest import toy_rows, write_csv
    from finetune_bert.cli.main import main
    rows = toy_rows(6)
    rows[2]["text"] = text
    src = write_csv(tmp_path / "d.csv", rows)
    assert main(["predict", "--model", trained.output, "--input", str(src), "--output", str(tmp_path / "p.csv")]) == 2
    assert f"line 4, column 'text': {reason}" in capsys.readouterr().err
    assert main(["predict", "--model", trained.output, "--input", str(src), "--output", str(tmp_path / "p.csv"),
                 "--on-bad-rows", "skip"]) == 0
    with open(tmp_path / "p.csv", newline="") as handle:
        assert [r["row"] for r in csv.DictReader(handle)] == ["line 2", "line 3", "line 5", "line 6", "line 7"]
    with open(tmp_path / "p.skipped.csv", newline="") as handle:
        assert [r["row"] for r in csv.DictReader(handle)] == ["line 4"]


def test_a_damaged_run_file_beside_the_model_is_one_line(trained, tmp_path, capsys):
    import shutil
    from finetune_bert.cli.main import main
    model = shutil.copytree(trained.output, tmp_path / "m")
    (model / "finetune_bert.json").write_text("{not json")
    assert main(["predict", "--model", str(model), "good"]) == 2
    assert "finetune_bert.json: cannot be read (" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "finetune_bert.json", "data_report.json"])
def test_predict_output_never_replaces_a_file_of_the_model(trained, toy_data, name, capsys):
    from finetune_bert.cli.main import main
    target = os.path.join(trained.output, name)
    before = open(target, "rb").read()
    assert main(["predict", "--model", trained.output, "--input", str(toy_data["test"]), "--output", target]) == 2
    assert f"{name}: is a file of the model {trained.output}; writing it would damage" in capsys.readouterr().err
    assert open(target, "rb").read() == before


def test_predict_output_may_be_a_new_file_in_the_model_folder(trained, toy_data):
    from finetune_bert.cli.main import main
    out = os.path.join(trained.output, "preds.csv")
    try:
        for _ in range(2):  # and again: the predictions of the first run are ours to replace
            assert main(["predict", "--model", trained.output, "--input", str(toy_data["test"]), "--output", out]) == 0
    finally:
        os.remove(out)


def test_predictions_written_into_the_model_folder_do_not_block_its_resume(trained, toy_data, tmp_path):
    import shutil
    from finetune_bert import train
    from finetune_bert.cli.main import main
    model = shutil.copytree(trained.output, tmp_path / "m")
    assert main(["predict", "--model", str(model), "--input", str(toy_data["test"]), "--output",
                 str(model / "preds.csv")]) == 0
    assert main(["evaluate", "--model", str(model), "--data", str(toy_data["test"]), "--output",
                 str(model / "ev2.json")]) == 0
    config = json.loads((model / "run_config.json").read_text())
    train(**{**config, "output": str(model), "resume": True})  # continues its run: nothing foreign there
    assert (model / "preds.csv").is_file() and (model / "ev2.json").is_file()


def test_a_users_file_where_the_skipped_rows_would_go_is_refused_before_any_work(trained, tmp_path, capsys):
    from conftest import toy_rows, write_csv
    from finetune_bert.cli.main import main
    rows = toy_rows(6)
    rows[1]["text"] = ""
    (tmp_path / "res.skipped.csv").write_text("the user's own notes\n")
    code = main(["predict", "--model", trained.output, "--input", str(write_csv(tmp_path / "bad.csv", rows)),
                 "--output", str(tmp_path / "res.csv"), "--on-bad-rows", "skip"])
    assert code == 2 and "res.skipped.csv: exists and is not a list of skipped rows" in capsys.readouterr().err
    assert (tmp_path / "res.skipped.csv").read_text() == "the user's own notes\n"
    assert not (tmp_path / "res.csv").exists()


def test_predict_output_inside_a_data_folder_is_refused(trained, tmp_path, capsys):
    from finetune_bert.cli.main import main
    for cls, word in (("pos", "good"), ("neg", "bad")):
        (tmp_path / "acl" / "test" / cls).mkdir(parents=True)
        (tmp_path / "acl" / "test" / cls / "1.txt").write_text(f"a {word} film")
    code = main(["predict", "--model", trained.output, "--input", str(tmp_path / "acl"), "--output",
                 str(tmp_path / "acl" / "test" / "pos" / "p.csv")])
    assert code == 2 and "is inside the data folder" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["evaluation.json", "skipped_rows.csv", "checkpoints/step-0000004/p.csv"])
def test_predict_output_may_not_take_a_name_the_models_run_writes_or_manages(trained, toy_data, tmp_path, name,
                                                                             capsys):
    import shutil
    from finetune_bert.cli.main import main
    model = shutil.copytree(trained.output, tmp_path / "m")
    code = main(["predict", "--model", str(model), "--input", str(toy_data["test"]), "--output", str(model / name)])
    err = capsys.readouterr().err
    assert code == 2 and ("training run of" in err or "is inside the model's checkpoints/ folder" in err)


def test_predictions_in_a_new_subfolder_of_the_model_do_not_block_its_resume(trained, toy_data, tmp_path):
    import shutil
    from finetune_bert import train
    from finetune_bert.cli.main import main
    model = shutil.copytree(trained.output, tmp_path / "m")
    assert main(["predict", "--model", str(model), "--input", str(toy_data["test"]), "--output",
                 str(model / "sub" / "preds.csv")]) == 0
    config = json.loads((model / "run_config.json").read_text())
    train(**{**config, "output": str(model), "resume": True})
    assert (model / "sub" / "preds.csv").is_file()


LONG = "superb great wonderful " + "the plot was long and the music " * 12 + "boring dull awful"


def test_long_texts_as_chunks_aggregate_the_windows_logits_by_hand(trained):
    """Every window scored alone, then the mean (or max) of each class's logits: what chunks gives."""
    import torch

    from finetune_bert import load
    from finetune_bert.inference.reading import Reading
    from finetune_bert.data.tokens import encode_windows

    for how in ("mean", "max"):
        clf = load(trained.output, reading=Reading("chunks", stride=6, aggregate=how))
        windows = encode_windows(clf.tokenizer, [LONG, "superb"], clf.max_length, 6)
        assert windows.owner.tolist().count(0) >= 3
        alone = torch.stack([clf.engine.logits(type(windows.encoded)([ids], None, None), 1)[0]
                             for ids in windows.encoded.ids])
        first = alone[torch.from_numpy(windows.owner == 0)]
        expected = first.mean(0) if how == "mean" else first.max(0).values
        logits, lengths = clf.scored([LONG, "superb"])
        logits = torch.from_numpy(logits)
        assert torch.allclose(logits[0], expected, atol=1e-5)
        assert torch.allclose(logits[1], alone[-1], atol=1e-5)  # one window: its own logits
        assert lengths[0] == windows.full_lengths[0]
        probs = clf.predict_proba([LONG, "superb"])
        assert np.allclose(probs, torch.softmax(logits, -1).numpy(), atol=1e-6)


def test_the_default_stride_is_half_a_window_shorter_than_256(trained):
    from finetune_bert import load
    from finetune_bert.inference.reading import Reading

    clf = load(trained.output, reading=Reading("chunks"))
    assert clf.reading.overlap(30) == 15 and Reading().overlap(510) == 128


def test_chunks_and_truncate_agree_on_texts_that_fit(trained):
    from finetune_bert import load
    from finetune_bert.inference.reading import Reading

    texts = ["a good film", "boring and awful", "the music was superb"]
    assert np.allclose(load(trained.output, reading=Reading("truncate")).predict_proba(texts),
                       load(trained.output).predict_proba(texts), atol=1e-6)


def test_long_texts_are_read_whole_by_default_and_cut_when_a_truncation_is_given(trained):
    from finetune_bert import load
    from finetune_bert.inference.reading import Reading

    assert load(trained.output).reading.mode == "chunks"
    assert Reading(truncation="tail").mode == "truncate" and Reading("truncate").mode == "truncate"
    assert not np.allclose(load(trained.output).predict_proba(LONG),
                           load(trained.output, reading=Reading("truncate")).predict_proba(LONG), atol=1e-4)


def test_truncation_can_be_chosen_at_prediction_time(trained):
    from finetune_bert import load
    from finetune_bert.inference.reading import Reading

    head = load(trained.output, reading=Reading(truncation="head"))
    tail = load(trained.output, reading=Reading(truncation="tail"))
    assert head.encode([LONG]).ids[0].tolist() != tail.encode([LONG]).ids[0].tolist()


@pytest.mark.parametrize("args, message", [
    (["--long-texts", "chunks", "--stride", "30"], "--stride 30 must be less than the model's window of 30 tokens"),
    (["--long-texts", "chunks", "--stride", "-1"], "--stride must be at least 0, got -1"),
    (["--stride", "abc"], "--stride must be a whole number"),
    (["--long-texts", "truncate", "--aggregate", "max"], "--aggregate is for --long-texts chunks"),
    (["--truncation", "tail", "--aggregate", "max"], "--aggregate is for --long-texts chunks"),
    (["--long-texts", "chunks", "--truncation", "head"], "--truncation is for --long-texts truncate"),
    (["--long-texts", "pages"], "--long-texts must be one of truncate, chunks"),
])
def test_bad_long_text_options_are_one_line_errors(trained, capsys, args, message):
    from finetune_bert.cli.main import main

    assert main(["predict", "--model", trained.output, *args, "a good film"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_predict_file_with_and_without_overlap_writes_the_same_file(trained, toy_data, tmp_path):
    from finetune_bert import load
    from finetune_bert.inference.files import predict_file
    clf = load(trained.output)
    for overlap in (True, False):
        predict_file(clf, str(toy_data["test"]), str(tmp_path / f"{overlap}.csv"), rows_per_chunk=3, overlap=overlap)
    assert (tmp_path / "True.csv").read_text() == (tmp_path / "False.csv").read_text()


def test_text_arguments_that_are_not_utf8_are_read_with_a_note_not_a_traceback(trained):
    """Latin-1 bytes from a shell reach Python as lone surrogates: each becomes U+FFFD, said on stderr."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable.encode(), b"-m", b"finetune_bert.cli", b"predict", b"--model",
                           trained.output.encode(), b"caf\xe9 was great"], capture_output=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert "text 1: bytes that are not UTF-8 were replaced by U+FFFD" in err
    assert "caf\ufffd was great" in done.stdout.decode("utf-8")


def test_stride_with_truncate_is_refused(trained, capsys):
    from finetune_bert.cli.main import main

    assert main(["predict", "--model", trained.output, "--long-texts", "truncate", "--stride", "16", "good"]) == 2
    assert "--stride is for --long-texts chunks" in capsys.readouterr().err
    assert main(["predict", "--model", trained.output, "--truncation", "tail", "--stride", "16", "good"]) == 2


@pytest.mark.parametrize("where", ["onnx/export.json", "onnx/model.onnx", "checkpoints/p.csv"])
def test_outputs_never_go_inside_a_folder_the_model_run_or_export_manages(trained, toy_data, tmp_path, where,
                                                                            capsys):
    import shutil

    from finetune_bert.cli.main import main

    model = shutil.copytree(trained.output, tmp_path / "m")
    (model / where).parent.mkdir(exist_ok=True)
    out = str(model / where).replace(".json", ".csv") if where.endswith(".json") else str(model / where)
    code = main(["predict", "--model", str(model), "--input", str(toy_data["test"]), "--output",
                 out if out.endswith(".csv") else out + ".csv"])
    assert code == 2 and "folder, which its training run or export" in capsys.readouterr().err
    other = shutil.copytree(trained.output, tmp_path / "other")  # any model folder, not only --model's
    (other / "onnx").mkdir()
    code = main(["evaluate", "--model", str(model), "--data", str(toy_data["test"]), "--output",
                 str(other / "onnx" / "export.json")])
    assert code == 2 and "is inside the model's onnx/ folder" in capsys.readouterr().err


HUB_LOAD = """
import json, sys
from finetune_bert import load
clf = load(sys.argv[1], backend="torch-fp32")
print(json.dumps({"info": clf.folder.info.to_json(), "proba": clf.predict_proba([sys.argv[2]]).tolist()}))
"""


def test_a_hub_id_reads_texts_as_the_pushed_folder_does(trained, tmp_path):
    """A repository `push` made, loaded by its hub id (from the hub's own cache, offline here): its
    finetune_bert.json (max length, calibration, labels) is the folder's, so are its probabilities."""
    import shutil
    import subprocess
    import sys

    from finetune_bert.engine.run_info import RunInfo

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--me--reviews"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(trained.output, repo / "snapshots" / commit, ignore=shutil.ignore_patterns("checkpoints"))
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    text = "a long review " * 40  # longer than the run's 32 tokens: read as the run said
    found = {}
    for name in ("me/reviews", trained.output):
        done = subprocess.run([sys.executable, "-c", HUB_LOAD, name, text], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        found[name] = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["me/reviews"] == found[trained.output]
    assert found["me/reviews"]["info"] != RunInfo().to_json()
