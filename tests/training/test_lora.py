"""LoRA: adapters merged into an ordinary folder, small checkpoints, exact resume, the adapter in peft's format."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_bert, toy_rows, write_csv
from finetune_bert.engine import lora
from finetune_bert.errors import UserError


@pytest.fixture(scope="module")
def dropout_model(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("lora-bert"), dropout=0.1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora-data")
    return {"train": write_csv(folder / "train.csv", toy_rows(120, seed=3)),
            "test": write_csv(folder / "test.csv", toy_rows(40, seed=4))}


def _args(model, data, out, *extra):
    # 108 train rows in steps of 12: 9 steps per epoch, 18 in all; checkpoints every 4 steps
    return ["train", "--lora", "--data", str(data["train"]), "--test-data", str(data["test"]), "--model", str(model),
            "--output", str(out), "--epochs", "2", "--batch-size", "12", "--lr", "5e-3", "--max-length", "32",
            "--save-every", "4", "--seed", "3", "--num-threads", "1", "--no-report", *extra]


def _cli(args, fault=""):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FINETUNE_BERT_FAULTS": fault}
    return subprocess.run([sys.executable, "-m", "finetune_bert.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def reference(dropout_model, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora-run") / "model"
    done = _cli(_args(dropout_model, data, out, "--lora-save-adapter", "--keep-checkpoints", "1"))
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_merged_weights_compute_what_the_adapters_compute(tiny_model):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3)
    lora.add_lora(model, lora.LoraSettings())
    with torch.no_grad():  # adapters start at zero (B = 0): move them, or the test could not fail
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(torch.randn_like(param) * 0.2)
    model.eval()
    ids = torch.randint(5, 40, (4, 11))
    expected = model(input_ids=ids).logits
    plain = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3).eval()
    plain.load_state_dict(lora.merged_state(model))
    assert (plain(input_ids=ids).logits - expected).abs().max() < 1e-5
    assert not (plain(input_ids=ids).logits - AutoModelForSequenceClassification.from_pretrained(
        tiny_model, num_labels=3).eval()(input_ids=ids).logits).abs().max() < 1e-3  # the adapters did change it
    trained = lora.trained_state(model)
    assert trained and all("lora_" in n or n.startswith("classifier") or ".pooler." in n for n in trained)


def test_saved_folder_is_plain_and_loads_with_its_head_everywhere(reference, data):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from finetune_bert import load

    weights = load_file(str(reference / "model.safetensors"))
    assert not [k for k in weights if "lora" in k or "base_layer" in k]
    text = "a great film, loved the ending"
    pipe = pipeline("text-classification", model=str(reference), top_k=None)
    ours = load(str(reference), backend="torch-fp32").predict_proba([text])[0]
    theirs = {d["label"]: d["score"] for d in pipe(text)[0]}
    assert abs(theirs["positive"] - float(ours[1])) < 1e-5  # the head was saved: not a random one
    # the adapter alone, in peft's format, head included, gives the same classifier as the folder
    config = json.loads((reference / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and set(config["modules_to_save"]) == {"classifier", "pooler"}
    base = AutoModelForSequenceClassification.from_pretrained(config["base_model_name_or_path"], num_labels=2)
    peft_model = PeftModel.from_pretrained(base, str(reference / "adapter")).eval()
    tok = AutoTokenizer.from_pretrained(reference)
    with torch.no_grad():
        a = peft_model(**tok([text], return_tensors="pt")).logits
        b = AutoModelForSequenceClassification.from_pretrained(reference).eval()(**tok([text], return_tensors="pt")).logits
    assert (a - b).abs().max() < 1e-5


def test_checkpoints_hold_only_what_is_trained(reference):
    (checkpoint,) = sorted((reference / "checkpoints").glob("step-*"))
    saved = load_file(str(checkpoint / "model.safetensors"))
    assert saved and all("lora_" in k or k.startswith("classifier") or ".pooler." in k for k in saved)
    assert (checkpoint / "model.safetensors").stat().st_size * 4 < (reference / "model.safetensors").stat().st_size
    run = json.loads((reference / "run_config.json").read_text())
    assert (run["lora_rank"], run["lora_alpha"], run["lora_targets"]) == (8, 16.0, "query,value")


def test_sigkill_then_resume_gives_the_identical_model(reference, dropout_model, data, tmp_path):
    out = tmp_path / "model"
    killed = _cli(_args(dropout_model, data, out, "--lora-save-adapter", "--keep-checkpoints", "1"), "kill@step:6")
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = _cli(_args(dropout_model, data, out, "--lora-save-adapter", "--keep-checkpoints", "1", "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a, b = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    changed = _cli(_args(dropout_model, data, out, "--resume", "--overwrite", "--lora-rank", "4"))
    assert changed.returncode == 2 and "lora_rank" in changed.stderr


def test_lora_options_without_lora_are_refused(tiny_model, data, tmp_path):
    from finetune_bert.training.train import checked

    with pytest.raises(UserError, match="--lora-rank sets up LoRA; add --lora"):
        checked(data=str(data["train"]), model=str(tiny_model), output=str(tmp_path / "o"), lora_rank=4)
    cfg = checked(data=str(data["train"]), model=str(tiny_model), output=str(tmp_path / "o"), lora=True)
    assert cfg.lr == 1e-3 and cfg.lora_settings() == lora.LoraSettings()
    assert checked(data=str(data["train"]), model=str(tiny_model), output=str(tmp_path / "o")).lr == 5e-5


def test_unknown_target_layers_are_one_line_naming_the_layers(tiny_model):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    with pytest.raises(UserError, match="no such layers in this model; its linear layers are named .*query"):
        lora.add_lora(model, lora.LoraSettings(targets=("q_lin", "v_lin")))
