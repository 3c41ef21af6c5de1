"""Training: the loss falls on a learnable task, the output folder is a loadable HF model folder."""

import json

import pytest

from conftest import toy_rows, write_csv
from finetune_bert.config import TrainConfig
from finetune_bert.errors import UserError
from finetune_bert.train import lr_at


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


def test_lr_schedule_is_a_pure_function_of_step():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0) == 0.0
    assert lr_at(0, 100, 0, 2.0) == 2.0


def test_grad_accum_gives_the_same_update_as_one_big_batch(tiny_model, toy_data, tmp_path):
    """Micro-batches sum to the full step's loss, so accumulation does not change training."""
    from finetune_bert import train
    import torch
    from safetensors.torch import load_file

    common = dict(data=str(toy_data["train"]), model=str(tiny_model), epochs=1, lr=1e-3, max_length=32,
                  seed=0, eval_every=0)
    a = train(output=str(tmp_path / "a"), batch_size=16, grad_accum=1, **common)
    b = train(output=str(tmp_path / "b"), batch_size=4, grad_accum=4, **common)
    wa, wb = load_file(f"{a.output}/model.safetensors"), load_file(f"{b.output}/model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def test_no_dynamic_padding_trains_the_same_model_padded_to_max_length(tiny_model, toy_data, tmp_path, capsys):
    from finetune_bert import train
    import torch
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
    assert start["event"] == "start" and start["lane_dropout"] is lane_dropout
    assert result.metrics["test"]["accuracy"] >= 0.9
