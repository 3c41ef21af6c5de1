"""`make demo`: fine-tune the bundled all-MiniLM-L6-v2 on the bundled reviews, offline, in minutes on a CPU."""

from __future__ import annotations

import dataclasses
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from finetune_bert.console import console
from finetune_bert.errors import UserError, refuse
from finetune_bert.inference.classifier import load
from finetune_bert.cli.config import DemoConfig
from finetune_bert.training.config import TrainConfig
from finetune_bert.training.run_folder import RunFolder
from finetune_bert.training.train import train

EXAMPLES = ("An absolute joy from start to finish, I would happily watch it again tomorrow.",
            "Two hours of my life I will never get back; the plot made no sense at all.")


def demo_config(output: str) -> TrainConfig:
    data = files("finetune_bert") / "demo_data"
    return TrainConfig(data=str(data / "train.csv"), test_data=str(data / "test.csv"), model="minilm",
                       output=output, epochs=4, batch_size=16, lr=1e-4, max_length=128, eval_batch_size=64,
                       log_every=5)


def _is_demo_run(folder: Path, cfg: TrainConfig) -> bool:
    """Whether the run in `folder` trained on the demo's own data (by its run_config.json)."""
    try:
        saved = json.loads((folder / "run_config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and saved.get("data") == cfg.data and saved.get("model") == cfg.model


def demo(cfg: DemoConfig | None = None, **overrides: Any) -> None:
    """Train the demo into `cfg.output`. A second `make demo` replaces the first demo's model: a folder holding
    only what finetune-bert wrote may be replaced; any other needs `overwrite`."""
    cfg = dataclasses.replace(cfg or DemoConfig(), **overrides)
    refuse(cfg.problems())
    run = demo_config(cfg.output)
    if cfg.epochs is not None:
        run.epochs = cfg.epochs
    if not cfg.overwrite:
        try:
            RunFolder.check(cfg.output, overwrite=False, resume=True)  # a foreign file stops here, a model does not
        except UserError as exc:
            raise UserError(str(exc).replace("pass --overwrite", "pass demo --overwrite")) from None
        if (Path(cfg.output) / "model.safetensors").exists() and not _is_demo_run(Path(cfg.output), run):
            raise UserError(f"--output {cfg.output} holds a model that is not an earlier demo's; choose another "
                            "folder for the demo, or pass demo --overwrite to replace that model")
    run.overwrite = True
    refuse(run.problems())
    result = train(run)
    clf = load(result.output)
    console.say("\nPredictions with the fine-tuned model:")
    for text, pred in zip(EXAMPLES, clf.predict(list(EXAMPLES))):
        console.say(f"  {pred.label:<9} confidence {pred.confidence:.2f}   {text}")
    console.say(f"\nTry it:  finetune-bert predict --model {result.output} \"What a wonderful film\"")
