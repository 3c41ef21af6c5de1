"""`tune`: the search, its pruner, kill -9 in the middle of a trial, two processes on one study, the
best_config.json round trip, flat memory, and the user mistakes it refuses in one line."""

import csv
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_bert import faults
from finetune_bert.errors import UserError

SPACE = {"lr": {"choices": [0.01, 0.02]}, "epochs": {"low": 2, "high": 3}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import toy_rows, write_csv
    folder = tmp_path_factory.mktemp("tune")
    return {"train": write_csv(folder / "train.csv", toy_rows(120, seed=4)),
            "test": write_csv(folder / "test.csv", toy_rows(30, seed=5)),
            "space": _space(folder / "space.json", SPACE)}


def _space(path: Path, payload) -> Path:
    path.write_text(json.dumps(payload))
    return path


def _options(tiny_model, data, out, **kw):
    base = dict(data=str(data["train"]), model=str(tiny_model), output=str(out), space=str(data["space"]),
                trials=3, batch_size=8, max_length=32, seed=3, num_threads=1, confirm_seeds=0)
    return {**base, **kw}


def _tune(tiny_model, data, out, **kw):
    from finetune_bert.tuning.search import tune
    # no ONNX export of each new best: what these studies test is the search (one test checks the export)
    return tune(**{"export": False, **_options(tiny_model, data, out, **kw)})


def _study(out: Path):
    import optuna
    return optuna.load_study(study_name="finetune-bert", storage=f"sqlite:///{out / 'study.db'}")


def _states(out: Path) -> dict[str, int]:
    states: dict[str, int] = {}
    for t in _study(out).get_trials():
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return states


def _cli(tiny_model, data, out, *extra, faults_spec="", wrap=(), **kw):
    """`tune` in a process of its own; `wrap` is a command to start it through (another host name)."""
    args = [*wrap, sys.executable, "-m", "finetune_bert.cli", "tune", "--no-export"]  # as _tune
    for key, value in _options(tiny_model, data, out, **kw).items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FINETUNE_BERT_FAULTS": faults_spec}
    return subprocess.Popen([*args, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_search_keeps_the_best_model_and_writes_its_report(tiny_model, data, tmp_path, capsys):
    from transformers import pipeline
    result = _tune(tiny_model, data, tmp_path / "study", trials=3, test_data=str(data["test"]), confirm_seeds=2,
                   export=True)
    said = capsys.readouterr().out
    # the confirm phase is announced with its count and an estimate, and ends with its verdict on the terminal
    assert re.search(r"confirm phase: 4 trainings, the best and the default configuration with 2 fresh seeds each, "
                     r"about \d+ s by the trials' times", said), said[-2000:]
    assert re.search(r"gain of the best over the default configuration, validation accuracy: [-+]\d\.\d{4} ± "
                     r"\d\.\d{4}, (within|beyond) the seed spread", said), said[-2000:]
    assert "[4/4]" in said and "test accuracy: " in said
    out = tmp_path / "study"
    assert result.completed == 3 and _states(out) == {"COMPLETE": 3}
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["complete"] * 3 and {"lr", "epochs", "evaluations"} <= set(rows[0])
    best = max(rows, key=lambda r: float(r["value"]))
    assert result.best_value == pytest.approx(float(best["value"]))
    assert json.loads((out / "best.json").read_text())["trial"] == int(best["number"])
    assert not (out / "trials").exists() or not any((out / "trials").iterdir())  # only the best model is kept
    assert not (out / "best" / "checkpoints").exists() or not any((out / "best" / "checkpoints").iterdir())
    assert (out / "best" / "report.html").is_file()  # the kept model has its report; the trials drew none
    assert (out / "best" / "onnx" / "model.onnx").is_file()  # and its ONNX export, which no trial wrote:
    assert "export" not in json.loads((out / "best" / "metrics.json").read_text())  # its run's record has none
    clf = pipeline("text-classification", model=str(out / "best"), device="cpu", truncation=True)
    assert clf("the film was good")[0]["label"] in ("positive", "negative")
    for name in ("history.png", "intermediate.png", "tune_report.md", "best_config.json"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "tune_report.md").read_text()
    assert "over 2 fresh seeds (4, 5)" in report and "the test set is never used to choose" in report
    assert set(result.confirm) >= {"best", "default", "gain"} and result.confirm["best"]["test"] is not None
    assert len(result.confirm["best"]["validation"]["values"]) == 2


def test_trials_never_score_the_test_set(tiny_model, data, tmp_path, monkeypatch):
    tune_module = importlib.import_module("finetune_bert.tuning.search")
    seen = []
    real = tune_module.run_training

    def spy(cfg, prepared, **kw):
        seen.append(set(prepared.tokens.splits))
        return real(cfg, prepared, **kw)
    monkeypatch.setattr(tune_module, "run_training", spy)
    _tune(tiny_model, data, tmp_path / "study", trials=2, test_data=str(data["test"]))
    assert seen and all("test" not in splits for splits in seen)


def test_the_pruner_stops_a_clearly_worse_trial(tiny_model, data, tmp_path):
    out = tmp_path / "study"
    space = _space(tmp_path / "space.json", {"lr": {"choices": [0.01, 1e-9]}})
    common = dict(space=str(space), metric="loss", epochs=3)
    _tune(tiny_model, data, out, trials=1, **common)
    study = _study(out)
    for lr in (0.01, 0.01, 1e-9):  # good trials first, so the median exists (3 done), then a hopeless one
        study.enqueue_trial({"lr": lr})
    result = _tune(tiny_model, data, out, trials=4, **common)
    hopeless = _study(out).get_trials()[3]  # the last one enqueued
    assert hopeless.params["lr"] == 1e-9 and hopeless.state.name == "PRUNED" and result.pruned >= 1
    assert len(hopeless.intermediate_values) < 3  # stopped before its last evaluation
    assert "saved" in (out / "tune_report.md").read_text()


def test_kill_9_during_a_trial_then_the_same_command_ends_with_exactly_n_trials(tiny_model, data, tmp_path):
    out = tmp_path / "study"
    killed = _cli(tiny_model, data, out, "--save-every", "3", faults_spec="kill@step:7", trials=3)
    killed.communicate(timeout=300)
    assert killed.returncode == -9
    assert _states(out) == {"RUNNING": 1}  # what Optuna alone would leave behind forever
    interrupted = _study(out).get_trials()[0]
    again = _cli(tiny_model, data, out, "--save-every", "3", trials=3)
    log, _ = again.communicate(timeout=300)
    assert again.returncode == 0, log[-3000:]
    trials = _study(out).get_trials()
    assert _states(out) == {"FAIL": 1, "COMPLETE": 3}
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == interrupted.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == interrupted.params
    assert f"trial {retry[0].number} (resumed from its checkpoint)" in log, log[-3000:]


def test_two_processes_on_one_study_finish_n_trials_between_them(tiny_model, data, tmp_path):
    out = tmp_path / "study"
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    runs = [_cli(tiny_model, data, out, "--storage", storage, trials=4) for _ in range(2)]
    logs = [run.communicate(timeout=400)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [l[-600:] for l, r in zip(logs, runs) if r.returncode]
    import optuna
    trials = optuna.load_study(study_name="finetune-bert", storage=storage).get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and not [t for t in trials if t.state.name == "RUNNING"]
    assert len({t.user_attrs["folder"] for t in complete}) == 4  # no trial run twice
    assert all(f"trial {t.number}:" in "".join(logs) for t in complete)


def test_best_config_json_trains_the_best_trial_again_exactly(tiny_model, data, tmp_path, capsys):
    from finetune_bert.cli.main import main
    result = _tune(tiny_model, data, tmp_path / "study", trials=2)
    config = tmp_path / "study" / "best_config.json"
    assert "output" not in json.loads(config.read_text())  # a rerun must not train into the study
    capsys.readouterr()
    assert main(["train", "--config", str(config)]) == 2  # no --output: refused, nothing written anywhere
    err = capsys.readouterr().err
    assert "--config" in err and "give --output DIR on the command line" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "study" / "rerun").exists()
    assert main(["train", "--config", str(config), "--output", str(tmp_path / "again")]) == 0
    metrics = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert metrics["validation"]["accuracy"] == result.best_value
    assert json.loads((tmp_path / "again" / "run_config.json").read_text())["lr"] == result.best_params["lr"]
    assert _tune(tiny_model, data, tmp_path / "study", trials=2).completed == 2  # the study is still its own


def test_memory_is_flat_across_trials(tiny_model, data, tmp_path, monkeypatch):
    tune_module = importlib.import_module("finetune_bert.tuning.search")
    rss = []
    real = tune_module._Search._after_trial

    def measure(self):
        rss.append(int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1]))
        return real(self)
    monkeypatch.setattr(tune_module._Search, "_after_trial", measure)
    _tune(tiny_model, data, tmp_path / "study", trials=10, space=str(_space(tmp_path / "s.json", {"lr": {"choices": [0.01]}})),
          epochs=1)
    assert len(rss) == 10
    assert rss[-1] - rss[0] < 40 * 1024, rss  # KiB: within 40 MiB of the first trial's


def test_a_trial_that_cannot_run_is_failed_with_its_reason_and_the_study_goes_on(tiny_model, data, tmp_path, monkeypatch):
    tune_module = importlib.import_module("finetune_bert.tuning.search")
    real = tune_module._Search._after_trial

    def once(self):
        faults.configure("")  # only the first trial runs out of memory at micro-batch 1
        return real(self)
    monkeypatch.setattr(tune_module._Search, "_after_trial", once)
    faults.configure("oom!@forward:1")
    try:
        result = _tune(tiny_model, data, tmp_path / "study", trials=2)
    finally:
        faults.configure("")
    assert result.completed == 2
    failed = [t for t in _study(tmp_path / "study").get_trials() if t.state.name == "FAIL"]
    assert len(failed) == 1 and "out of memory" in failed[0].user_attrs["failure"]


@pytest.mark.parametrize("space, words", [
    ({"epochs": {"low": 0, "high": 2}}, "entry 'epochs': low 0: --epochs must be positive, got 0"),
    ({"warmup_ratio": {"choices": [0.1, 1.5]}}, "entry 'warmup_ratio': choice 1.5: --warmup-ratio must be in [0, 1)"),
    ({"lr": {"choices": [0, 0.01]}}, "entry 'lr': choice 0.0: --lr must be positive"),
])
def test_a_space_train_would_refuse_stops_tune_in_one_line_before_any_folder(tiny_model, data, tmp_path, capsys,
                                                                              space, words):
    from finetune_bert.cli.main import main
    path = _space(tmp_path / "bad.json", space)
    args = ["tune"] + [a for k, v in _options(tiny_model, data, tmp_path / "study", space=str(path)).items()
                       for a in (f"--{k.replace('_', '-')}", str(v))]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --space {path}: {words}") and err.count("\n") == 1
    assert not (tmp_path / "study").exists()


def test_a_study_stopped_and_continued_tries_new_configurations(tiny_model, data, tmp_path):
    out = tmp_path / "study"
    _tune(tiny_model, data, out, trials=2)  # this module's space holds 4 configurations: 4 trials, each new
    _tune(tiny_model, data, out, trials=4)
    tried = [tuple(sorted(t.params.items())) for t in _study(out).get_trials()]
    assert len(tried) == 4 and len(set(tried)) == 4, tried


def test_trials_0_is_refused(tiny_model, data, tmp_path):
    with pytest.raises(UserError, match="--trials must be at least 1"):
        _tune(tiny_model, data, tmp_path / "study", trials=0)


@pytest.mark.parametrize("storage, words", [
    ("sqlite:///{tmp}/no/such/folder/x.db", "cannot open the study there (the folder"),
    ("not a database url", "not a database URL"),
    ("nosuchdialect://user@localhost/db", "cannot open the study there"),
    ("postgresql://user@localhost:notaport/db", "--storage"),
    ("sqlite:///{tmp}", "is a folder, not a database file"),
])
def test_an_unusable_storage_is_one_line_and_leaves_no_folder(tiny_model, data, tmp_path, storage, words):
    with pytest.raises(UserError) as caught:
        _tune(tiny_model, data, tmp_path / "study", storage=storage.format(tmp=tmp_path))
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "study").exists()


def test_a_study_refused_by_a_shared_storage_leaves_no_folder(tiny_model, data, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    _tune(tiny_model, data, tmp_path / "first", trials=1, storage=storage)
    with pytest.raises(UserError, match="made to maximize its metric"):
        _tune(tiny_model, data, tmp_path / "second", trials=1, storage=storage, metric="loss")
    with pytest.raises(UserError, match="other arguments, data or search space"):
        _tune(tiny_model, data, tmp_path / "third", trials=1, storage=storage, max_length=24)
    assert not (tmp_path / "second").exists() and not (tmp_path / "third").exists()


def _study_folder(out: Path) -> Path:
    """A study folder as tune leaves it, without a trial: its marker and an Optuna study.db."""
    import optuna
    from finetune_bert.safefiles import claim
    from finetune_bert.tuning.search import STUDY_NAME, TUNE_FILES
    out.mkdir()
    claim(out, TUNE_FILES)
    optuna.create_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}", direction="maximize")
    return out / "study.db"


def test_a_read_only_study_db_is_said_to_be_not_writable(tiny_model, data, tmp_path, read_only):
    db = _study_folder(tmp_path / "study")
    with read_only(db):
        with pytest.raises(UserError) as caught:
            _tune(tiny_model, data, tmp_path / "study")
        shared = tmp_path / "shared.db"
        shared.write_bytes(db.read_bytes())
        with read_only(shared), pytest.raises(UserError) as explicit:
            _tune(tiny_model, data, tmp_path / "other", storage=f"sqlite:///{shared}")
    assert f"{db.resolve()}: the study's database is not writable" in str(caught.value)
    assert f"{shared.resolve()}: the study's database is not writable" in str(explicit.value)
    assert "invalid data" not in str(caught.value) and not (tmp_path / "other").exists()


def test_a_database_that_turns_read_only_after_the_checks_is_said_to_be_not_writable(
        tiny_model, data, tmp_path, read_only, monkeypatch):
    tune_module = importlib.import_module("finetune_bert.tuning.search")
    monkeypatch.setattr(tune_module, "check_storage", lambda url, folder: True)  # as if it changed since
    db = _study_folder(tmp_path / "study")
    with read_only(db), pytest.raises(UserError) as caught:
        _tune(tiny_model, data, tmp_path / "study")
    assert "study.db: the study's database is not writable" in str(caught.value)
    assert "invalid data in the commit" not in str(caught.value)


def test_a_study_made_for_another_metric_direction_is_refused(tiny_model, data, tmp_path):
    _tune(tiny_model, data, tmp_path / "study", trials=1)
    with pytest.raises(UserError, match="made to maximize its metric, and --metric loss is to minimize"):
        _tune(tiny_model, data, tmp_path / "study", trials=2, metric="loss")


def test_an_output_holding_another_study_is_refused_with_its_differences(tiny_model, data, tmp_path):
    _tune(tiny_model, data, tmp_path / "study", trials=1)
    other = _space(tmp_path / "other.json", {"lr": {"choices": [0.01]}})
    with pytest.raises(UserError, match="other arguments, data or search space; differences: .*space"):
        _tune(tiny_model, data, tmp_path / "study", trials=2, space=str(other))
    with pytest.raises(UserError, match="differences: .*max_length"):
        _tune(tiny_model, data, tmp_path / "study", trials=2, max_length=24)


def test_an_output_with_files_of_the_users_is_refused(tiny_model, data, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds files finetune-bert did not write .notes.txt"):
        _tune(tiny_model, data, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_rerunning_a_finished_study_runs_nothing_and_more_trials_continue_it(tiny_model, data, tmp_path):
    _tune(tiny_model, data, tmp_path / "study", trials=2)
    assert _tune(tiny_model, data, tmp_path / "study", trials=2).completed == 2
    assert _tune(tiny_model, data, tmp_path / "study", trials=3).completed == 3
    assert _states(tmp_path / "study") == {"COMPLETE": 3}


def test_tune_command_reports_bad_options_in_one_line_and_exit_2(tiny_model, data, tmp_path, capsys):
    from finetune_bert.cli.main import main
    code = main(["tune", "--data", str(data["train"]), "--model", str(tiny_model), "--output", str(tmp_path / "s"),
                 "--trials", "0", "--confirm-seeds", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and "--trials must be at least 1" in err and "--confirm-seeds must be at least 0" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


@pytest.mark.parametrize("payload, words", [("{not json", "cannot be read as JSON"), ('["lr"]', "expected a JSON object"),
                                            ('{"lr": 0.01, "learning_rate": 1}', "unknown option(s) learning_rate")])
def test_train_config_file_mistakes_are_one_line(tmp_path, capsys, payload, words):
    from finetune_bert.cli.main import main
    (tmp_path / "c.json").write_text(payload)
    assert main(["train", "--config", str(tmp_path / "c.json"), "--output", str(tmp_path / "o")]) == 2
    assert words in capsys.readouterr().err


def test_command_line_options_override_the_config_file(tmp_path, monkeypatch):
    import importlib
    from finetune_bert.cli import main as cli
    seen = []
    monkeypatch.setattr(importlib.import_module("finetune_bert.training.launch"), "train_here", lambda cfg: seen.append(cfg))
    (tmp_path / "c.json").write_text(json.dumps({"data": "d.csv", "output": "o", "lr": 0.01, "epochs": 5, "clean": False}))
    assert cli.main(["train", "--config", str(tmp_path / "c.json"), "--epochs", "2", "--clean", "--output", "o2"]) == 0
    assert seen[0].lr == 0.01 and seen[0].epochs == 2 and seen[0].clean is True and seen[0].data == "d.csv"
    assert seen[0].output == "o2"


def test_timeout_stops_starting_trials_and_a_rerun_continues(tiny_model, data, tmp_path, capsys):
    result = _tune(tiny_model, data, tmp_path / "study", trials=2, timeout=0)
    assert result.completed == 0 and "--timeout 0 s reached: 0 of 2 trials completed" in capsys.readouterr().out
    assert _tune(tiny_model, data, tmp_path / "study", trials=2).completed == 2


def test_timeout_bounds_the_confirm_phase_and_says_what_it_skipped(tiny_model, data, tmp_path, capsys):
    out = tmp_path / "study"
    _tune(tiny_model, data, out, trials=1)
    capsys.readouterr()
    cut = _tune(tiny_model, data, out, trials=1, confirm_seeds=2, timeout=0)  # the search is done: confirm only
    said = capsys.readouterr().out
    assert "confirm phase: 4 trainings" in said and "confirm best configuration" not in said
    assert ("--timeout 0 s reached: 4 of 4 confirm trainings skipped (best seed 4, best seed 5, default seed 4, "
            "default seed 5)") in said and "run the same command again to finish them" in said
    assert cut.confirm["skipped"] and cut.confirm["gain"] is None and not (out / "confirm").exists()
    assert "Not measured yet: --timeout stopped the confirmation" in (out / "tune_report.md").read_text()
    done = _tune(tiny_model, data, out, trials=1, confirm_seeds=2)
    said = capsys.readouterr().out
    assert "confirm phase: 4 trainings" in said and "[4/4]" in said and "gain of the best over the default" in said
    assert "skipped" not in done.confirm and len(done.confirm["best"]["validation"]["values"]) == 2


def test_confirm_runs_done_before_are_not_run_again(tiny_model, data, tmp_path, capsys):
    first = _tune(tiny_model, data, tmp_path / "study", trials=1, confirm_seeds=1)
    assert "confirm best configuration, seed 4" in capsys.readouterr().out
    again = _tune(tiny_model, data, tmp_path / "study", trials=1, confirm_seeds=1)
    assert "confirm " not in capsys.readouterr().out and again.confirm["best"] == first.confirm["best"]


def test_ctrl_c_in_a_trial_exits_130_and_the_rerun_resumes_that_trial(tiny_model, data, tmp_path, capsys):
    from finetune_bert.cli.main import main
    args = ["tune"] + [a for k, v in _options(tiny_model, data, tmp_path / "study", trials=2).items()
                       for a in (f"--{k.replace('_', '-')}", str(v))] + ["--save-every", "3"]
    faults.configure("int@step:4")
    try:
        assert main(args) == 130
    finally:
        faults.configure("")
    assert "run the same command again to continue the study" in capsys.readouterr().err
    assert main(args) == 0
    assert "trial 1 (resumed from its checkpoint)" in capsys.readouterr().out
    assert _states(tmp_path / "study") == {"FAIL": 1, "COMPLETE": 2}


def test_bad_data_stops_tune_before_it_makes_its_folder(tiny_model, tmp_path):
    from conftest import write_csv
    from finetune_bert.tuning.search import tune
    bad = write_csv(tmp_path / "bad.csv", [{"text": "good film", "label": "positive"}, {"text": "", "label": "negative"}])
    with pytest.raises(UserError, match="line 3, column 'text': text is empty"):
        tune(data=str(bad), model=str(tiny_model), output=str(tmp_path / "study"), trials=1)
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("task, metric, direction", [("multi-label", "f1_macro", "MAXIMIZE"),
                                                     ("regression", "rmse", "MINIMIZE")])
def test_tune_optimises_the_kinds_default_metric(tiny_model, data, tmp_path, task, metric, direction):
    from conftest import toy_multilabel_rows, toy_regression_rows, write_csv
    rows = toy_multilabel_rows(120, seed=6) if task == "multi-label" else toy_regression_rows(120, seed=6)
    train = write_csv(tmp_path / "train.csv", rows)
    result = _tune(tiny_model, {**data, "train": train}, tmp_path / "study", task=task, trials=2)
    study = _study(tmp_path / "study")
    assert study.direction.name == direction and len(study.trials) == 2
    best = json.loads((tmp_path / "study" / "best" / "metrics.json").read_text())
    assert best["task"] == task and best["validation"][metric] == pytest.approx(study.best_value)
    assert json.loads((tmp_path / "study" / "best" / "run_config.json").read_text())["metric"] == metric
    assert result is not None


def test_lora_rank_and_alpha_are_searched_and_the_best_model_is_a_plain_folder(tiny_model, data, tmp_path):
    space = _space(tmp_path / "lora.json", {"lora_rank": {"choices": [2, 4]}, "lora_alpha": {"low": 4, "high": 16}})
    result = _tune(tiny_model, data, tmp_path / "study", space=str(space), lora=True, trials=2, epochs=1,
                   prune=False, report=False)
    trials = _study(tmp_path / "study").trials
    assert {t.params["lora_rank"] for t in trials} <= {2, 4} and all(4 <= t.params["lora_alpha"] <= 16 for t in trials)
    best = json.loads((Path(result.output) / "best_config.json").read_text())
    assert best["lora"] is True and best["lora_rank"] in (2, 4)
    from safetensors.torch import load_file
    assert not [k for k in load_file(str(Path(result.output) / "best" / "model.safetensors")) if "lora" in k]
