"""`train --config FILE`: each value held to its option's JSON type, problems naming the file and the key, and
the output folder taken from the command line only."""

import importlib
import json

import pytest


@pytest.fixture
def trained_with(monkeypatch):
    """The configs `train` would have run with, without running it."""
    seen = []
    monkeypatch.setattr(importlib.import_module("finetune_bert.training.launch"), "train_here", seen.append)
    return seen


def _run(tmp_path, capsys, payload, *argv, raw=None):
    from finetune_bert.cli.main import main
    path = tmp_path / "run.json"
    path.write_text(raw if raw is not None else json.dumps(payload))
    capsys.readouterr()
    code = main(["train", "--config", str(path), *argv])
    return code, capsys.readouterr().err, path


@pytest.mark.parametrize("key, value, words", [
    ("lr", True, "'lr' must be a number or null, got true"),
    ("clean", "no", "'clean' must be true or false, got \"no\""),
    ("clean", 0, "'clean' must be true or false, got 0"),
    ("epochs", "3", "'epochs' must be a number, got \"3\""),
    ("batch_size", 16.0, "'batch_size' must be a whole number, got 16.0"),
    ("batch_size", True, "'batch_size' must be a whole number, got true"),
    ("seed", None, "'seed' must be a whole number, got null"),
    ("model", 5, "'model' must be a string, got 5"),
    ("text_column", ["text"], "'text_column' must be a string or null, got [\"text\"]"),
    ("max_train_samples", "100", "'max_train_samples' must be a whole number or null, got \"100\""),
    ("weight_decay", {"value": 0.1}, "'weight_decay' must be a number, got {\"value\": 0.1}"),
])
def test_a_value_of_the_wrong_type_is_one_line_naming_the_file_and_the_key(tmp_path, capsys, trained_with,
                                                                           key, value, words):
    code, err, path = _run(tmp_path, capsys, {"data": "d.csv", key: value}, "--output", str(tmp_path / "out"))
    assert code == 2 and err == f"error: --config {path}: {words}\n"
    assert not trained_with and not (tmp_path / "out").exists()


def test_every_wrong_type_is_reported_at_once(tmp_path, capsys, trained_with):
    code, err, path = _run(tmp_path, capsys, {"data": "d.csv", "lr": True, "clean": "no", "epochs": "3"},
                           "--output", str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1
    assert "'lr' must be a number" in err and "'clean' must be true or false" in err and "'epochs' must be a number" in err


def test_a_non_finite_number_is_refused_naming_the_file(tmp_path, capsys, trained_with):
    code, err, path = _run(tmp_path, capsys, None, "--output", str(tmp_path / "out"),
                           raw='{"data": "d.csv", "lr": NaN}')
    assert code == 2 and err == f"error: --config {path}: 'lr' must be a finite number, got NaN\n"


def test_values_of_the_right_types_are_taken_as_they_are(tmp_path, capsys, trained_with):
    payload = {"data": "d.csv", "lr": 0.001, "epochs": 2, "batch_size": 8, "clean": False, "text_column": None,
               "max_train_samples": 50, "warmup_ratio": 0}
    code, err, _ = _run(tmp_path, capsys, payload, "--output", str(tmp_path / "out"))
    assert code == 0, err
    cfg = trained_with[0]
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.clean, cfg.max_train_samples) == (0.001, 2, 8, False, 50)
    assert cfg.output == str(tmp_path / "out")


def test_a_key_given_twice_is_refused(tmp_path, capsys, trained_with):
    code, err, path = _run(tmp_path, capsys, None, "--output", str(tmp_path / "out"),
                           raw='{"data": "d.csv", "lr": 0.1, "lr": 0.001}')
    assert code == 2 and f"--config {path}" in err and "'lr' given more than once" in err and not trained_with


def test_train_config_needs_output_on_the_command_line_even_when_the_file_names_one(tmp_path, capsys, trained_with):
    code, err, path = _run(tmp_path, capsys, {"data": "d.csv", "output": str(tmp_path / "old-run")})
    assert code == 2 and err.count("\n") == 1
    assert f"--config {path}: give --output DIR on the command line" in err
    assert not trained_with and not (tmp_path / "old-run").exists()
    code, err, _ = _run(tmp_path, capsys, {"data": "d.csv", "output": str(tmp_path / "old-run")},
                        "--output", str(tmp_path / "new-run"))
    assert code == 0 and trained_with[0].output == str(tmp_path / "new-run")


def test_a_bad_value_from_the_file_names_the_file_and_one_from_the_command_line_does_not(tmp_path, capsys,
                                                                                         trained_with):
    code, err, path = _run(tmp_path, capsys, {"data": "d.csv", "epochs": 0, "warmup_ratio": 1.5},
                           "--output", str(tmp_path / "out"), "--lr", "-1")
    assert code == 2 and err.count("\n") == 1 and not trained_with
    assert f"--config {path}: --epochs must be positive, got 0" in err
    assert f"--config {path}: --warmup-ratio must be in [0, 1), got 1.5" in err
    assert "; --lr must be positive" in err  # given on the command line: not the file's
    code, err, _ = _run(tmp_path, capsys, {"data": "d.csv", "epochs": 0}, "--output", str(tmp_path / "out"),
                        "--epochs", "2")
    assert code == 0 and trained_with[0].epochs == 2  # the command line's value replaced the file's
