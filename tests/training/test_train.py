"""Training: the loss falls on a learnable task, the output folder is a loadable HF model folder."""

import json
import os

import pytest

from conftest import same_update_tolerance, toy_rows, write_csv
from finetune_bert.training.config import TrainConfig
from finetune_bert.errors import UserError
from finetune_bert.training.loop import lr_at


def test_loss_falls_and_model_learns(trained):
    losses = [json.loads(line) for line in open(f"{trained.output}/train_log.jsonl")]
    train_losses = [r["loss"] for r in losses if r["event"] == "train"]
    assert train_losses[-1] < 0.5 * train_losses[0]
    assert trained.metrics["test"]["accuracy"] >= 0.9


def test_output_folder_is_complete(trained):
    from pathlib import Path
    names = {p.name for p in Path(trained.output).iterdir()}
    for expected in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
                     "metrics.json", "data_report.json", "data_report.txt", "run_config.json", "README.md",
                     "finetune_bert.json", "train_log.jsonl"):
        assert expected in names, expected
    config = json.loads((Path(trained.output) / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    card = (Path(trained.output) / "README.md").read_text()
    assert "| test | 40 |" in card
    rerun = TrainConfig.from_json(json.loads((Path(trained.output) / "run_config.json").read_text()))
    assert rerun.lr == 1e-2 and rerun.epochs == 6


def test_pipeline_loads_output_and_returns_label_names(trained):
    from transformers import pipeline
    clf = pipeline("text-classification", model=trained.output, device="cpu")
    out = clf(["the film was good and wonderful", "awful boring plot"])
    assert [o["label"] for o in out] == ["positive", "negative"]


def test_the_model_cards_pipeline_snippet_reads_a_text_longer_than_the_model(trained):
    from pathlib import Path
    from transformers import pipeline
    card = (Path(trained.output) / "README.md").read_text()
    assert 'pipeline("text-classification", model="PATH_TO_THIS_FOLDER", truncation=True, top_k=None)' in card
    assert "every label with its probability (they sum to 1)" in card
    clf = pipeline("text-classification", model=trained.output, device="cpu", truncation=True)
    long_text = " ".join(["the film was good and wonderful"] * 60)  # 300 words; the tiny model takes 64 tokens
    assert clf(long_text)[0]["label"] in ("positive", "negative")


def test_lr_schedule_is_a_pure_function_of_step():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0) == 0.0
    assert lr_at(0, 100, 0, 2.0) == 2.0


def test_grad_accum_gives_the_same_update_as_one_big_batch(tiny_model, toy_data, tmp_path):
    """Micro-batches sum to the full step's loss, so accumulation does not change training."""
    from finetune_bert import train
    from safetensors.torch import load_file

    common = dict(data=str(toy_data["train"]), model=str(tiny_model), epochs=1, lr=1e-3, max_length=32,
                  seed=0, eval_every=0)
    a = train(output=str(tmp_path / "a"), batch_size=16, grad_accum=1, **common)
    b = train(output=str(tmp_path / "b"), batch_size=4, grad_accum=4, **common)
    wa, wb = load_file(f"{a.output}/model.safetensors"), load_file(f"{b.output}/model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < same_update_tolerance(common["lr"])


def test_no_dynamic_padding_trains_the_same_model_padded_to_max_length(tiny_model, toy_data, tmp_path, capsys):
    from finetune_bert import train
    from safetensors.torch import load_file

    common = dict(data=str(toy_data["train"]), model=str(tiny_model), epochs=1, lr=1e-3, max_length=32,
                  seed=0, eval_every=0)
    a = train(output=str(tmp_path / "a"), **common)
    b = train(output=str(tmp_path / "b"), dynamic_padding=False, **common)
    assert "every batch padded to 32" in capsys.readouterr().out
    wa, wb = load_file(f"{a.output}/model.safetensors"), load_file(f"{b.output}/model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    assert a.metrics["validation"]["accuracy"] == b.metrics["validation"]["accuracy"]


def test_raises_on_all_option_problems_at_once():
    cfg = TrainConfig(data="x.csv", output="o", epochs=0, batch_size=0, lr=-1)
    problems = cfg.problems()
    assert len(problems) == 3 and "--epochs must be positive, got 0" in problems


def test_refuses_output_folder_that_is_not_ours(tiny_model, toy_data, tmp_path):
    from finetune_bert import train
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.docx").write_text("precious")
    with pytest.raises(UserError, match=r"folder exists and holds files finetune-bert did not write \(thesis.docx\)"):
        train(data=str(toy_data["train"]), model=str(tiny_model), output=str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "thesis.docx").read_text() == "precious"


def test_raises_on_model_path_that_is_not_a_model(toy_data, tmp_path):
    from finetune_bert import train
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"not a model folder \(no config.json\)"):
        train(data=str(toy_data["train"]), model=str(tmp_path / "empty"), output=str(tmp_path / "o"))


def test_hub_model_offline_names_the_offline_alias(toy_data, tmp_path):
    from finetune_bert import train
    with pytest.raises(UserError, match=r"--model bert-base-uncased: could not load it .* use --model minilm"):
        train(data=str(toy_data["train"]), model="bert-base-uncased", output=str(tmp_path / "o"))


def test_skipped_rows_are_written_out(tiny_model, tmp_path):
    from finetune_bert import train
    rows = toy_rows(40)
    rows[5]["text"] = ""
    rows[9]["label"] = ""
    data = write_csv(tmp_path / "bad.csv", rows)
    out = train(data=str(data), model=str(tiny_model), output=str(tmp_path / "o"), epochs=1, max_length=32,
                on_bad_rows="skip")
    skipped = (tmp_path / "o" / "skipped_rows.csv").read_text().splitlines()
    assert len(skipped) == 3 and "line 7" in skipped[1] and "line 11" in skipped[2]
    assert json.loads((tmp_path / "o" / "data_report.json").read_text())["skipped_rows"] == 2
    assert out.metrics["train"]["examples"] + out.metrics["validation"]["n"] == 38


def test_patience_stops_early_when_validation_does_not_improve(tiny_model, toy_data, tmp_path, capsys):
    from finetune_bert import train
    # A learning rate too small to change anything: the first evaluation stays the best.
    result = train(data=str(toy_data["train"]), model=str(tiny_model), output=str(tmp_path / "o"), epochs=3,
                   batch_size=16, lr=1e-12, warmup_ratio=0, eval_every=2, patience=2, max_length=32)
    assert result.metrics["train"]["steps"] == 6 and result.best_step == 2
    assert "early stop: no accuracy improvement in 2 evaluations" in capsys.readouterr().out


def test_fewer_rows_than_a_batch_trains_and_says_so(tiny_model, tmp_path, capsys):
    from finetune_bert import train
    data = write_csv(tmp_path / "small.csv", toy_rows(12))
    result = train(data=str(data), model=str(tiny_model), output=str(tmp_path / "o"), epochs=2, batch_size=16,
                   max_length=32)
    assert "10 training rows are fewer than one batch of 16: every step uses all of them" in capsys.readouterr().out
    assert result.metrics["train"]["steps"] == 2


@pytest.mark.parametrize("lane_dropout", [True, False])
def test_model_with_dropout_learns_with_lane_and_torch_dropout(toy_data, tmp_path, lane_dropout):
    from conftest import make_tiny_bert
    from finetune_bert import train
    model = make_tiny_bert(tmp_path / "bert", dropout=0.1)
    result = train(data=str(toy_data["train"]), test_data=str(toy_data["test"]), model=str(model),
                   output=str(tmp_path / "o"), epochs=10, batch_size=16, lr=3e-3, warmup_ratio=0.05, max_length=32,
                   seed=0, log_every=5, lane_dropout=lane_dropout)  # with dropout, lr 1e-2 stays at chance
    start = json.loads(open(f"{result.output}/train_log.jsonl").readline())
    # Lane dropout is a CPU technique: on a GPU the packed path's kernel does dropout, whatever the option.
    assert start["event"] == "start" and start["lane_dropout"] is (lane_dropout and start["device"] == "cpu")
    assert result.metrics["test"]["accuracy"] >= 0.9


def _quick(model, data, out, **kw):
    from finetune_bert import train
    # no ONNX export: these runs test training, and an export is seconds of the suite's budget across them
    return train(**{**dict(data=str(data), model=str(model), output=str(out), epochs=1, max_length=32, seed=0,
                           export=False), **kw})


def test_rerun_into_a_finished_model_is_refused_unless_overwrite_or_resume(tiny_model, toy_data, tmp_path):
    _quick(tiny_model, toy_data["train"], tmp_path / "o")
    before = (tmp_path / "o" / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match=r"already holds a trained model; pass --overwrite to replace it, --resume"):
        _quick(tiny_model, toy_data["train"], tmp_path / "o", lr=1e-3)
    assert (tmp_path / "o" / "model.safetensors").read_bytes() == before
    _quick(tiny_model, toy_data["train"], tmp_path / "o", resume=True)  # continues its run: nothing left to do
    _quick(tiny_model, toy_data["train"], tmp_path / "o", lr=1e-3, overwrite=True)
    assert (tmp_path / "o" / "model.safetensors").read_bytes() != before


def test_resume_of_a_finished_model_without_checkpoints_is_refused(tiny_model, toy_data, tmp_path):
    _quick(tiny_model, toy_data["train"], tmp_path / "o", keep_checkpoints=0)
    with pytest.raises(UserError, match=r"--resume: .* holds a finished model and no checkpoint to continue from"):
        _quick(tiny_model, toy_data["train"], tmp_path / "o", resume=True)


def test_keep_checkpoints_0_removes_them_after_a_successful_run(tiny_model, toy_data, tmp_path):
    _quick(tiny_model, toy_data["train"], tmp_path / "o", keep_checkpoints=0)
    assert not (tmp_path / "o" / "checkpoints").exists() and (tmp_path / "o" / "model.safetensors").is_file()
    marker = json.loads((tmp_path / "o" / ".finetune-bert").read_text())
    assert "checkpoints" not in marker["files"]


def test_a_second_run_into_a_folder_in_use_names_the_holder(tiny_model, toy_data, tmp_path):
    import subprocess
    import sys
    out = tmp_path / "o"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from finetune_bert.lock import OutputLock\n"
                               f"OutputLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"another finetune-bert run is using this folder \(pid {holder.pid} on host "):
            _quick(tiny_model, toy_data["train"], out)
    finally:
        holder.kill()
        holder.wait()
    _quick(tiny_model, toy_data["train"], out)  # the holder is gone: its lock is stale and is taken over


def test_resume_is_not_refused_because_of_tensorboard_files(tiny_model, toy_data, tmp_path):
    pytest.importorskip("tensorboard")
    _quick(tiny_model, toy_data["train"], tmp_path / "o")
    assert (tmp_path / "o" / "tensorboard").is_dir()
    _quick(tiny_model, toy_data["train"], tmp_path / "o", resume=True)


def test_a_run_that_fails_leaves_the_previous_model_and_its_files_as_they_were(tiny_model, toy_data, tmp_path,
                                                                               monkeypatch):
    import importlib
    train_module = importlib.import_module("finetune_bert.training.loop")  # where validation scores
    _quick(tiny_model, toy_data["train"], tmp_path / "o", keep_checkpoints=0)
    names = ("model.safetensors", "run_config.json", "data_report.json", "data_report.txt", "metrics.json")
    before = {n: (tmp_path / "o" / n).read_bytes() for n in names}

    def crash(*a, **k):
        raise RuntimeError("crash before the first evaluation")
    monkeypatch.setattr(train_module, "evaluate_step", crash)
    with pytest.raises(RuntimeError):
        _quick(tiny_model, toy_data["train"], tmp_path / "o", lr=1e-3, max_train_samples=100, overwrite=True)
    assert {n: (tmp_path / "o" / n).read_bytes() for n in names} == before
    assert not any(p.name.startswith(".saving") for p in (tmp_path / "o").iterdir())


def test_fine_tuning_a_model_trained_for_other_labels_starts_a_fresh_head(trained, tmp_path, capsys):
    rows = [{"text": r["text"], "label": ["a", "b", "c"][i % 3]} for i, r in enumerate(toy_rows(60))]
    result = _quick(trained.output, write_csv(tmp_path / "three.csv", rows), tmp_path / "o")
    assert "note: a fresh head is started for the 3 labels here (a, b, c)" in capsys.readouterr().out
    assert result.metrics["validation"]["n"] > 0
    renamed = [{"text": r["text"], "label": {"positive": "good", "negative": "bad"}[r["label"]]} for r in toy_rows(60)]
    _quick(trained.output, write_csv(tmp_path / "renamed.csv", renamed), tmp_path / "o2")
    assert "a fresh head is started for the 2 labels here (bad, good)" in capsys.readouterr().out


def test_continuing_from_a_model_with_the_same_labels_keeps_its_head(trained, toy_data, tmp_path, capsys):
    _quick(trained.output, toy_data["train"], tmp_path / "o", lr=1e-12)
    assert "note: continuing from" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["validation"]["accuracy"] >= 0.9


def test_an_output_inside_an_aclimdb_folder_is_refused(tiny_model, tmp_path):
    data = tmp_path / "aclImdb"
    for split in ("train", "test"):
        for cls in ("pos", "neg"):
            (data / split / cls).mkdir(parents=True)
            (data / split / cls / "0_7.txt").write_text("a film")
    with pytest.raises(UserError, match=r"--output .* must not be inside the data \(--data .*aclImdb\)"):
        _quick(tiny_model, data, data / "train" / "run")
    assert sorted(p.name for p in (data / "train").iterdir()) == ["neg", "pos"]


def test_model_files_are_readable_by_everyone(tiny_model, toy_data, tmp_path):
    old = os.umask(0o022)
    try:
        _quick(tiny_model, toy_data["train"], tmp_path / "o")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "config.json", "finetune_bert.json", "tokenizer.json", "metrics.json"):
        assert (tmp_path / "o" / name).stat().st_mode & 0o777 == 0o644, name


def test_a_disk_that_fills_up_mid_run_is_one_line_and_keeps_the_previous_model(tiny_model, toy_data, tmp_path):
    import subprocess
    import sys
    _quick(tiny_model, toy_data["train"], tmp_path / "o")
    before = (tmp_path / "o" / "model.safetensors").read_bytes()
    # A file-size limit below the model's size: the first model save fails as a full disk would (EFBIG).
    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              f"resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) // 2}, {len(before) // 2}))\n"
              "from finetune_bert.cli.main import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    result = subprocess.run([sys.executable, "-c", script, "train", "--data", str(toy_data["train"]), "--model",
                             str(tiny_model), "--output", str(tmp_path / "o"), "--epochs", "1", "--max-length", "32",
                             "--overwrite"], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("error: ")
    assert (tmp_path / "o" / "model.safetensors").read_bytes() == before


def test_training_into_the_folder_of_its_own_base_model_is_refused(tiny_model, toy_data, tmp_path):
    import shutil
    base = shutil.copytree(tiny_model, tmp_path / "base")
    before = (base / "model.safetensors").read_bytes()
    for overwrite in (False, True):
        with pytest.raises(UserError, match=r"--output .*base is the --model folder; training into it would replace"):
            _quick(base, toy_data["train"], base, overwrite=overwrite)
    assert (base / "model.safetensors").read_bytes() == before


def test_a_new_run_that_fails_after_its_first_save_leaves_no_old_metrics_beside_its_model(tiny_model, toy_data,
                                                                                          tmp_path, monkeypatch):
    import importlib
    train_module = importlib.import_module("finetune_bert.training.train")
    _quick(tiny_model, toy_data["train"], tmp_path / "o", test_data=str(toy_data["test"]))
    (tmp_path / "o" / "evaluation.json").write_text("{}\n")  # what `evaluate` writes there by default
    old_weights = (tmp_path / "o" / "model.safetensors").read_bytes()

    def crash(*a, **k):
        raise RuntimeError("crash after the first save")
    monkeypatch.setattr(train_module, "finish", crash)
    with pytest.raises(RuntimeError):
        _quick(tiny_model, toy_data["train"], tmp_path / "o", lr=1e-3, overwrite=True)
    names = {p.name for p in (tmp_path / "o").iterdir()}
    assert (tmp_path / "o" / "model.safetensors").read_bytes() != old_weights
    assert not names & {"metrics.json", "README.md", "evaluation.json"}  # they described the old model
    assert json.loads((tmp_path / "o" / "run_config.json").read_text())["lr"] == 1e-3


def test_a_fresh_run_into_an_unfinished_run_is_refused_and_overwrite_clears_its_checkpoints(tiny_model, toy_data,
                                                                                            tmp_path):
    import shutil
    big = write_csv(tmp_path / "big.csv", toy_rows(200))
    _quick(tiny_model, big, tmp_path / "o", save_every=3, keep_checkpoints=5)
    (tmp_path / "o" / "model.safetensors").unlink()  # as if killed before its model was saved
    with pytest.raises(UserError, match=r"holds the checkpoints of an unfinished run \(the newest: step-\d+\); pass "
                                        r"--resume to continue it, --overwrite to start again"):
        _quick(tiny_model, toy_data["train"], tmp_path / "o")
    (tmp_path / "o" / "checkpoints" / "my_notes.txt").write_text("mine")
    _quick(tiny_model, toy_data["train"], tmp_path / "o", overwrite=True, keep_checkpoints=5)
    steps = sorted(p.name for p in (tmp_path / "o" / "checkpoints").iterdir() if p.name.startswith("step-"))
    state = json.loads((tmp_path / "o" / "checkpoints" / steps[-1] / "state.json").read_text())
    assert len(steps) == 1 and state["step"] == state["total_steps"]  # only the new run's own checkpoint
    assert (tmp_path / "o" / "checkpoints" / "my_notes.txt").read_text() == "mine"
    shutil.rmtree(tmp_path / "o" / "checkpoints" / steps[-1])


def test_keep_checkpoints_0_removes_only_what_finetune_bert_wrote_in_checkpoints(tiny_model, toy_data, tmp_path):
    out = tmp_path / "o"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "my_model.bin").write_text("the user's")
    _quick(tiny_model, toy_data["train"], out, overwrite=True, keep_checkpoints=0)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["my_model.bin"]


def test_a_refused_resume_leaves_no_tensorboard_file_in_the_earlier_model(tiny_model, toy_data, tmp_path):
    pytest.importorskip("tensorboard")
    _quick(tiny_model, toy_data["train"], tmp_path / "o")
    events = sorted((tmp_path / "o" / "tensorboard").iterdir())
    with pytest.raises(UserError, match=r"--resume: .* differences: lr"):
        _quick(tiny_model, toy_data["train"], tmp_path / "o", resume=True, lr=1e-3)
    assert sorted((tmp_path / "o" / "tensorboard").iterdir()) == events


def test_a_killed_run_with_a_saved_model_is_an_unfinished_run_and_predict_says_so(tiny_model, toy_data, tmp_path,
                                                                                   capsys):
    from finetune_bert.inference.classifier import load
    _quick(tiny_model, toy_data["train"], tmp_path / "o", epochs=2)
    (tmp_path / "o" / "metrics.json").unlink()  # as if killed after an evaluation saved the model
    with pytest.raises(UserError, match=r"holds the checkpoints of an unfinished run .*pass --resume"):
        _quick(tiny_model, toy_data["train"], tmp_path / "o", epochs=2)
    capsys.readouterr()
    load(str(tmp_path / "o"))
    assert "has not finished (no metrics.json): this is its best model so far" in capsys.readouterr().err


def test_overwrite_starts_a_fresh_training_log(tiny_model, toy_data, tmp_path):
    _quick(tiny_model, toy_data["train"], tmp_path / "o")
    _quick(tiny_model, toy_data["train"], tmp_path / "o", overwrite=True, lr=1e-3)
    events = [json.loads(line)["event"] for line in (tmp_path / "o" / "train_log.jsonl").read_text().splitlines()]
    assert events.count("start") == 1
    if (tmp_path / "o" / "tensorboard").is_dir():
        assert len(list((tmp_path / "o" / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_overwrite_never_removes_a_step_folder_holding_a_users_file(tiny_model, toy_data, tmp_path):
    _quick(tiny_model, toy_data["train"], tmp_path / "o")
    mine = tmp_path / "o" / "checkpoints" / "step-0000099"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    _quick(tiny_model, toy_data["train"], tmp_path / "o", overwrite=True, lr=1e-3)
    assert (mine / "notes.txt").read_text() == "mine"


def test_an_output_of_only_spaces_is_refused():
    assert "--output is required" in TrainConfig(data="d.csv", output="  ").problems()


def test_train_says_which_reading_gave_its_test_score_and_gives_evaluates_too(tiny_model, tmp_path, capsys):
    """A test text longer than the model reads is cut in training but read whole by evaluate: train prints and
    records both, each with its reading, and the read-whole number is evaluate's own."""
    from conftest import toy_rows, write_csv
    from finetune_bert import evaluate, train

    test = toy_rows(40, seed=2)
    for row in test[:10]:
        row["text"] = (row["text"] + " ") * 12
    data = write_csv(tmp_path / "train.csv", toy_rows(160, seed=1))
    result = train(data=str(data), test_data=str(write_csv(tmp_path / "test.csv", test)), model=str(tiny_model),
                   output=str(tmp_path / "m"), epochs=2, batch_size=16, lr=1e-2, max_length=32, bf16=False,
                   report=False)
    out = capsys.readouterr().out
    assert result.metrics["test"]["reading"] == {"long_texts": "truncate", "truncation": "head+tail",
                                                 "max_length": 32, "longer_texts": 10}
    assert "10 longer than 32 tokens, cut head+tail as in training" in out
    whole = result.metrics["test_read_whole"]
    assert whole["reading"]["long_texts"] == "chunks" and "as evaluate and predict read them by default" in out
    m = evaluate(model=str(tmp_path / "m"), data=str(tmp_path / "test.csv"), output=str(tmp_path / "e.json"),
                 quiet=True)
    # evaluate may run in bf16 (a CPU with AMX), training scores fp32: a text near 0.5 may flip
    assert m["accuracy"] == pytest.approx(whole["accuracy"], abs=0.051) and m["reading_used"] == whole["reading"]
