"""The end of a run writes the model's ONNX fp32 export, which predict's default then runs on a CPU without
AMX with torch fp32's answers; --no-export writes none; a failed export is a warning, never a failed run, and
the export it leaves behind (made from the earlier weights) is never picked."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def _labels(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        return [row["predicted"] for row in csv.DictReader(handle)]


def test_train_exports_and_predict_by_default_gives_torch_fp32s_labels(tiny_model, toy_data, tmp_path, machine,
                                                                        monkeypatch, capsys):
    from finetune_bert import train
    from finetune_bert.cli.main import main
    from finetune_bert.engine.model_folder import ModelFolder
    from finetune_bert.inference.backends import choose

    out = tmp_path / "run"
    options = dict(data=str(toy_data["train"]), model=str(tiny_model), output=str(out), epochs=1, batch_size=16,
                   max_length=32, seed=0, report=False)
    result = train(**options, lr=1e-2)
    assert result.metrics["export"]["written"] and result.metrics["export"]["max_abs_logit_diff"] <= 1e-4
    assert (out / "onnx" / "model.onnx").is_file() and "ONNX export written to" in capsys.readouterr().out
    assert "onnx" in json.loads((out / ".finetune-bert").read_text())["files"]  # the run's, replaced by the next
    machine()  # a CPU without AMX, where the export is the fastest exact backend
    for name, backend in (("auto", []), ("fp32", ["--backend", "torch-fp32"])):
        assert main(["predict", "--model", str(out), "--input", str(toy_data["test"]), "--output",
                     str(tmp_path / f"{name}.csv"), *backend]) == 0
    assert "note: backend onnx (auto:" in capsys.readouterr().err
    assert _labels(tmp_path / "auto.csv") == _labels(tmp_path / "fp32.csv")

    monkeypatch.setitem(sys.modules, "onnx", None)  # the export cannot run (as if onnx were not installed)
    again = train(**options, lr=5e-3, overwrite=True)
    err = capsys.readouterr().err
    assert "warning: the ONNX export was not written" in err and "finetune-bert export --model" in err
    assert again.metrics["export"]["written"] is False and (out / "metrics.json").is_file()
    choice = choose(ModelFolder.open(str(out)))  # the first run's export is still there: never the new weights'
    assert choice.backend == "torch" and "made from other weights" in choice.why


def test_no_export_writes_none(trained):
    """The shared run is trained with export=False."""
    assert not (Path(trained.output) / "onnx").exists() and "export" not in trained.metrics
