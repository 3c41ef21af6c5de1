"""The command line: inspect, --help, and one-line errors with exit code 2."""

import json
import os
import subprocess
import sys

import pytest

from conftest import toy_rows, write_csv


def test_inspect_prints_report_without_training(tiny_model, toy_data, tmp_path, capsys):
    from finetune_bert.cli.main import main
    rows = toy_rows(30)
    rows[4]["text"] = rows[2]["text"]  # a duplicate with the same label
    rows[6]["text"] = rows[1]["text"]
    rows[6]["label"] = "positive" if rows[1]["label"] == "negative" else "negative"  # conflicting
    data = write_csv(tmp_path / "d.csv", rows)
    assert main(["inspect", "--data", str(data), "--test-data", str(toy_data["test"]), "--model", str(tiny_model),
                 "--max-length", "8", "--output", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "Data report" in out and "train:" in out and "test: 40 rows (negative 20, positive 20)" in out
    assert "truncated" in out and "median" in out
    report = json.loads((tmp_path / "rep" / "data_report.json").read_text())
    split_sum = report["splits"]["train"]["duplicate_rows"] + report["splits"]["validation"]["duplicate_rows"]
    assert report["splits"]["train"]["rows"] + report["splits"]["validation"]["rows"] == 30
    assert split_sum + report["splits"]["validation"]["shared_with_train"] >= 1
    assert not (tmp_path / "rep" / "model.safetensors").exists()


def test_help_lists_generated_options(capsys):
    from finetune_bert.cli.main import main
    try:
        main(["train", "--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    for flag in ("--truncation", "--no-clean", "--max-length", "--grad-accum", "--patience", "--on-bad-rows"):
        assert flag in out


def test_bad_input_exits_2_with_one_line_and_no_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "finetune_bert.cli", "inspect", "--data",
                             str(tmp_path / "missing.csv")], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'missing.csv'}: file not found"
    assert "Traceback" not in result.stderr


def test_option_problems_reported_together(tmp_path, capsys):
    from finetune_bert.cli.main import main
    code = main(["train", "--data", "x.csv", "--output", str(tmp_path / "o"), "--epochs", "0", "--lr", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and "--epochs must be positive" in err and "--lr must be positive" in err


def test_version_prints_the_package_version(capsys):
    from finetune_bert import __version__
    from finetune_bert.cli.main import main
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"finetune-bert {__version__}"


@pytest.mark.parametrize("command, required", [("train", ("--data", "--output")), ("evaluate", ("--model", "--data")),
                                               ("predict", ("--model",))])
def test_help_shows_required_options_as_required(command, required, capsys):
    from finetune_bert.cli.main import main
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    section = out[out.index("required options:"):]
    assert all(flag in section for flag in required)


def test_help_has_no_meaningless_negations(capsys):
    from finetune_bert.cli.main import main
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--no-debug" not in out and "--no-overwrite" not in out and "--no-resume" not in out
    assert "--no-clean" in out and "--no-dynamic-padding" in out  # on by default: a --no- form means something


def test_train_numeric_options_are_checked_all_at_once(tmp_path, capsys):
    from finetune_bert.cli.main import main
    code = main(["train", "--data", "x.csv", "--output", str(tmp_path / "o"), "--max-train-samples", "0",
                 "--max-test-samples", "-5", "--num-threads", "-1", "--head-tokens", "-4", "--lr", "nan",
                 "--keep-checkpoints", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    for part in ("--max-train-samples must be at least 1, got 0", "--max-test-samples must be at least 1, got -5",
                 "--num-threads must be at least 0, got -1", "--head-tokens must be at least 0, got -4",
                 "--lr must be a finite number, got nan", "--keep-checkpoints must be at least 0, got -1"):
        assert part in err


def test_inspect_checks_its_numbers_too(tmp_path, capsys):
    from finetune_bert.cli.main import main
    code = main(["inspect", "--data", "x.csv", "--max-train-samples", "-5", "--max-length", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "--max-train-samples must be at least 1" in err and "--max-length must be at least 8" in err


def test_an_os_error_nothing_could_foresee_is_one_line_exit_2(monkeypatch, capsys):
    import errno
    from finetune_bert.cli import main as cli

    def disk_full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/model.safetensors")
    monkeypatch.setattr(cli, "run", disk_full)
    assert cli.main(["predict", "--model", "m", "x"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: /data/out/model.safetensors: No space left on device "
                   "(run again with --debug for the traceback)\n")


def _inspect(tiny_model, data, output, capsys):
    from finetune_bert.cli.main import main
    capsys.readouterr()
    code = main(["inspect", "--data", str(data), "--model", str(tiny_model), "--max-length", "16", "--output",
                 str(output)])
    return code, capsys.readouterr().err


def test_inspect_output_never_replaces_its_input_or_writes_into_the_data(tiny_model, tmp_path, capsys):
    folder = tmp_path / "udir"
    folder.mkdir()
    data = write_csv(folder / "data_report.json.csv", toy_rows(20))
    (folder / "data_report.json").symlink_to(data)  # the report's name, pointing at the input
    before = data.read_bytes()
    code, err = _inspect(tiny_model, data, folder, capsys)
    assert code == 2 and "data_report.json: is the input" in err and data.read_bytes() == before
    acl = tmp_path / "acl"
    for cls in ("pos", "neg"):
        (acl / "train" / cls).mkdir(parents=True)
        for i in range(6):
            (acl / "train" / cls / f"{i}.txt").write_text(f"{'good' if cls == 'pos' else 'bad'} film {i}")
    code, err = _inspect(tiny_model, acl, acl / "train" / "newclass", capsys)
    assert code == 2 and "must not be inside the data (--data" in err and not (acl / "train" / "newclass").exists()


def test_inspect_output_refuses_a_trained_models_folder(tiny_model, trained, toy_data, capsys):
    before = open(f"{trained.output}/data_report.json", "rb").read()
    code, err = _inspect(tiny_model, toy_data["train"], trained.output, capsys)
    assert code == 2 and "holds a training run, and its data report describes that run" in err
    assert open(f"{trained.output}/data_report.json", "rb").read() == before


def test_demo_rerun_replaces_its_own_model_and_a_foreign_folder_needs_demo_overwrite(tmp_path, monkeypatch, capsys):
    import importlib
    from finetune_bert.cli.main import main
    from finetune_bert.training.run_folder import RunFolder
    seen = []

    def fake_train(cfg):  # the demo's own checks, without its minutes of training
        seen.append(cfg.overwrite)
        raise SystemExit(0)
    monkeypatch.setattr(importlib.import_module("finetune_bert.training.train"), "train", fake_train)
    from finetune_bert.cli.demo import demo_config
    with RunFolder(str(tmp_path / "demo"), overwrite=False) as run:  # a previous demo's folder
        run.write_text("model.safetensors", "weights")
        run.write_text("run_config.json", json.dumps(demo_config("x").to_json()))
    with RunFolder(str(tmp_path / "trained"), overwrite=False) as run:  # a model of the user's, not a demo
        run.write_text("model.safetensors", "weights")
    assert main(["demo", "--output", str(tmp_path / "trained")]) == 2
    assert "holds a model that is not an earlier demo's" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--output", str(tmp_path / "demo")])
    assert seen == [True]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    assert main(["demo", "--output", str(tmp_path / "mine")]) == 2
    assert "pass demo --overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--output", str(tmp_path / "mine"), "--overwrite"])
    assert seen == [True, True] and (tmp_path / "mine" / "notes.txt").read_text() == "the user's"


def _run(argv, capsys):
    from finetune_bert.cli.main import main
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def test_option_abbreviations_are_refused(tmp_path, capsys):
    code, err = _run(["train", "--data", "d.csv", "--out", str(tmp_path / "o"), "--ov"], capsys)
    assert code == 2 and "unrecognized arguments: --out" in err and err.count("\n") == 1


def test_an_option_given_twice_is_refused(capsys):
    code, err = _run(["train", "--data", "d.csv", "--output", "a", "--output=b", "--epochs", "1", "--epochs", "2"],
                     capsys)
    assert code == 2 and err == "error: --epochs, --output given more than once; give each option once\n"


def test_unreadable_numbers_and_bad_choices_are_reported_with_every_other_problem_in_one_line(capsys):
    code, err = _run(["train", "--data", "d.csv", "--output", "o", "--epochs", "abc", "--batch-size", "1.5",
                      "--truncation", "middle", "--lr", "-1e-5", "--weight-decay", "-inf"], capsys)
    assert code == 2 and err.count("\n") == 1 and "usage" not in err
    for problem in ("--epochs must be a number, got 'abc'", "--batch-size must be a whole number, got '1.5'",
                    "--truncation must be one of head, tail, head+tail, got 'middle'", "--lr must be positive",
                    "--weight-decay must be a finite number, got -inf"):
        assert problem in err


def test_an_argparse_error_is_one_line_naming_the_command(capsys):
    code, err = _run(["evaluate", "--model", "m", "--data", "d.csv", "--bogus"], capsys)
    assert code == 2 and err == "error: unrecognized arguments: --bogus (see finetune-bert evaluate --help)\n"


@pytest.mark.parametrize("argv,problem", [
    (["--max-grad-norm", "-1"], "--max-grad-norm must be at least 0, got -1.0"),
    (["--weight-decay", "-0.5"], "--weight-decay must be at least 0, got -0.5"),
    (["--seed", str(2**64)], f"--seed must be at most {2**32 - 1}, got {2**64}"),
    (["--num-threads", "100000"], "--num-threads must be at most"),
    (["--label-names", "a,"], "--label-names 'a,': every name must be non-empty"),
])
def test_train_refuses_values_that_would_be_silently_reinterpreted(argv, problem, capsys):
    code, err = _run(["train", "--data", "d.csv", "--output", "o", *argv], capsys)
    assert code == 2 and problem in err and "Traceback" not in err


def test_usage_shows_the_required_options_as_required(capsys):
    from finetune_bert.cli.main import build_parser
    parser = build_parser()
    usages = {name: sub.format_usage() for name, sub in parser._subparsers._group_actions[0].choices.items()}
    assert "finetune-bert train --data DATA --output OUTPUT [options]" in usages["train"]
    assert "finetune-bert evaluate --model MODEL --data DATA [options]" in usages["evaluate"]


@pytest.mark.parametrize("argv,problem", [
    (["--text-column", "review", "good film"], "--text-column is only for --input FILE"),
    (["--input", "in.csv", "--output", "p.csv", "good film"], "give texts as arguments or --input FILE, not both"),
    (["--input", "in.csv", "--output", "p.csv", "--ignore-labels", "--label-column", "y"],
     "--ignore-labels and --label-column contradict each other"),
    (["", "   "], "text 1 ('') has nothing to classify once cleaned"),
    (["<br />"], "text 1 ('<br />') has nothing to classify once cleaned"),
])
def test_predict_refuses_what_it_cannot_honour(trained, argv, problem, capsys):
    code, err = _run(["predict", "--model", trained.output, *argv], capsys)
    assert code == 2 and problem in err


def test_predict_reports_every_problem_at_once(trained, tmp_path, capsys):
    code, err = _run(["predict", "--model", trained.output, "--batch-size", "0", "--input", str(tmp_path / "in.csv"),
                      "--output", str(tmp_path / "x.txt")], capsys)
    assert code == 2 and "--batch-size must be at least 1" in err and "unknown extension '.txt'" in err


def test_train_into_a_folder_inspect_wrote_does_not_call_its_report_foreign(tiny_model, toy_data, tmp_path, capsys):
    from finetune_bert.cli.main import main
    out = tmp_path / "run"
    code, err = _inspect(tiny_model, toy_data["train"], out, capsys)
    assert code == 0 and (out / "data_report.json").is_file()
    assert main(["train", "--data", str(toy_data["train"]), "--model", str(tiny_model), "--output", str(out),
                 "--epochs", "1", "--max-length", "32"]) == 0


def test_an_on_off_option_given_both_ways_is_refused(capsys):
    code, err = _run(["train", "--data", "d.csv", "--output", "o", "--clean", "--no-clean"], capsys)
    assert code == 2 and "--clean given more than once" in err


@pytest.mark.parametrize("argv", [["inspect", "--data", "d.csv", "--output", ""], ["demo", "--output", " "],
                                  ["evaluate", "--model", "m", "--data", "d.csv", "--output", ""]])
def test_an_empty_output_is_refused_not_read_as_not_given_or_the_current_folder(argv, capsys):
    code, err = _run(argv, capsys)
    assert code == 2 and "--output must not be empty" in err


def test_predict_reports_a_missing_input_with_the_other_problems(trained, tmp_path, capsys):
    code, err = _run(["predict", "--model", trained.output, "--batch-size", "0", "--input", str(tmp_path / "no.csv"),
                      "--output", str(tmp_path / "x.txt")], capsys)
    assert code == 2 and "no.csv: file not found" in err and "--batch-size must be" in err and "'.txt'" in err


def test_inspect_without_output_says_how_to_get_the_skipped_rows(tiny_model, tmp_path, capsys):
    from finetune_bert.cli.main import main
    rows = toy_rows(20)
    rows[3]["text"] = ""
    assert main(["inspect", "--data", str(write_csv(tmp_path / "d.csv", rows)), "--model", str(tiny_model),
                 "--on-bad-rows", "skip"]) == 0
    assert "skipped rows: 1 (pass --output DIR to get their list)" in capsys.readouterr().out


def test_every_command_is_one_config_and_the_function_that_takes_it(capsys):
    """The registry: each command's --help comes from its config, and its function is the Python API's own,
    taking that config whole."""
    import dataclasses
    import importlib
    import inspect

    from finetune_bert.cli.main import COMMANDS, main

    for name, command in COMMANDS.items():
        assert dataclasses.is_dataclass(command.config) and hasattr(command.config, "problems"), name
        module, function = command.function.split(":")
        first = next(iter(inspect.signature(getattr(importlib.import_module(module), function)).parameters))
        assert first == "cfg", name
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        for f in dataclasses.fields(command.config):
            assert f.name in out or "--" + f.name.replace("_", "-") in out, (name, f.name)
