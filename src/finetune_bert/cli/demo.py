"""`make demo`: fine-tune the bundled all-MiniLM-L6-v2 on the bundled reviews, offline, in minutes on a CPU."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from finetune_bert.training.config import TrainConfig

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


def demo(output: str = "runs/demo", epochs: float | None = None, overwrite: bool = False) -> None:
    """Train the demo into `output`. A second `make demo` replaces the first demo's model: a folder holding
    only what finetune-bert wrote may be replaced; any other needs `overwrite`."""
    from finetune_bert.errors import UserError
    from finetune_bert.training.run_folder import RunFolder
    from finetune_bert.inference.classifier import load
    from finetune_bert.training.train import train

    cfg = demo_config(output)
    if epochs is not None:
        cfg.epochs = epochs
    if not overwrite:
        try:
            RunFolder.check(output, overwrite=False, resume=True)  # a foreign file stops here, a model does not
        except UserError as exc:
            raise UserError(str(exc).replace("pass --overwrite", "pass demo --overwrite")) from None
        if (Path(output) / "model.safetensors").exists() and not _is_demo_run(Path(output), cfg):
            raise UserError(f"--output {output} holds a model that is not an earlier demo's; choose another folder "
                            "for the demo, or pass demo --overwrite to replace that model")
    cfg.overwrite = True
    if problems := cfg.problems():
        raise UserError("; ".join(problems))
    result = train(cfg)
    clf = load(result.output)
    print("\nPredictions with the fine-tuned model:")
    for text, pred in zip(EXAMPLES, clf.predict(list(EXAMPLES))):
        print(f"  {pred.label:<9} confidence {pred.confidence:.2f}   {text}")
    print(f"\nTry it:  finetune-bert predict --model {result.output} \"What a wonderful film\"")
