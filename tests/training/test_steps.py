"""The deferred step (GPU default): a fused optimizer skips a non-finite step on the device, and the host
learns of it later, at `settle`. These run that path on CPU, where fused AdamW takes `found_inf` too."""

import importlib

import pytest
import torch
from safetensors.torch import load_file

from finetune_bert import faults
from finetune_bert.training import steps
from finetune_bert.errors import UserError

train_module = importlib.import_module("finetune_bert.training.train")
job_module = importlib.import_module("finetune_bert.training.job")
loop_module = importlib.import_module("finetune_bert.training.loop")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import toy_rows, write_csv
    return write_csv(tmp_path_factory.mktemp("steps") / "train.csv", toy_rows(80, seed=3))


@pytest.fixture
def fused(monkeypatch):
    def setup(cfg, engine):
        params = engine.trainable()
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    monkeypatch.setattr(job_module, "_setup_optimizer", setup)
    yield
    faults.configure("")


def _train(model, data, out, **kw):
    base = dict(data=str(data), model=str(model), output=str(out), epochs=2, batch_size=8, lr=5e-3,
                max_length=32, seed=7, eval_every=4, save_every=3, log_every=5, num_threads=1,
                export=False)  # what is tested is training
    return train_module.train(**{**base, **kw})


def test_deferred_nan_skip_gives_the_same_model_as_checking_every_step(tiny_model, data, tmp_path, fused,
                                                                       monkeypatch, capsys):
    faults.configure("nan@loss:3")
    deferred = _train(tiny_model, data, tmp_path / "deferred")
    assert "step 3 skipped: its loss (nan)" in capsys.readouterr().err
    monkeypatch.setattr(loop_module, "defers_checks", lambda optimizer: False)
    faults.configure("nan@loss:3")
    immediate = _train(tiny_model, data, tmp_path / "immediate")
    assert deferred.metrics["train"]["skipped_steps"] == immediate.metrics["train"]["skipped_steps"] == 1
    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("deferred", "immediate"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.isfinite(w).all() for w in a.values())


def test_deferred_consecutive_nans_stop_the_run_at_the_next_settle(tiny_model, data, tmp_path, fused):
    faults.configure("nan@loss:4,nan@loss:5,nan@loss:6")
    with pytest.raises(UserError, match="3 steps in a row had a NaN or inf loss or gradient"):
        _train(tiny_model, data, tmp_path / "o", max_bad_steps=3)


def test_fused_optimizer_defers_checks_and_foreach_does_not():
    p = torch.nn.Parameter(torch.ones(2))
    assert steps.defers_checks(torch.optim.AdamW([p], fused=True))
    assert not steps.defers_checks(torch.optim.AdamW([p], foreach=True))
