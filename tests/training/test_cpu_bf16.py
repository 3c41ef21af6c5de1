"""bf16 training on the CPU (--cpu-bf16, for CPUs with AMX tiles): the same training as fp32, within bf16's rounding."""

import json

import pytest
import torch
from safetensors.torch import load_file

from finetune_bert.training.train import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import toy_rows, write_csv
    return write_csv(tmp_path_factory.mktemp("bf16") / "train.csv", toy_rows(96, seed=5))


def _train(model, data, out, **kw):
    return train(data=str(data), model=str(model), output=str(out), epochs=1, batch_size=8, lr=1e-3, max_length=32,
                 seed=5, num_threads=1, report=False, calibrate=False, **kw)


def test_bf16_training_on_the_cpu_follows_the_fp32_run(tiny_model, data, tmp_path, capsys):
    fp32 = _train(tiny_model, data, tmp_path / "fp32")
    bf16 = _train(tiny_model, data, tmp_path / "bf16", cpu_bf16=True)
    start = [json.loads(line) for line in (tmp_path / "bf16" / "train_log.jsonl").read_text().splitlines()][0]
    assert start["event"] == "start" and start["bf16"] is True
    from finetune_bert.engine.torch_engine import native_cpu_bf16
    assert ("runs slower than fp32" in capsys.readouterr().err) == (not native_cpu_bf16())
    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("fp32", "bf16"))
    assert all(b[k].dtype == torch.float32 for k in b)  # fp32 masters saved, not bf16-rounded weights
    start = load_file(str(tiny_model / "model.safetensors"))
    keys = [k for k in a if k.removeprefix("bert.") in start]
    # the two runs' updates to the pretrained weights point the same way (Adam's steps are about lr per
    # element whatever the gradient's size, so bf16's rounding moves single elements, not the direction)
    da, db = (torch.cat([(w[k] - start[k.removeprefix("bert.")]).flatten() for k in keys]) for w in (a, b))
    print(torch.nn.functional.cosine_similarity(da, db, dim=0).item(), da.norm().item(), (da-db).norm().item())
    assert torch.nn.functional.cosine_similarity(da, db, dim=0) > 0.9
    assert fp32.metrics["validation"]["loss"] == pytest.approx(bf16.metrics["validation"]["loss"], abs=0.01)
