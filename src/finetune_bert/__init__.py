"""finetune-bert: fine-tune BERT-family encoders for text classification.

    from finetune_bert import train, load
    result = train(data="reviews.csv", model="minilm", output="out/")
    load("out/").predict("I loved it")   # Prediction(label='positive', confidence=0.97)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
# The public API, imported on first use: the ONNX path of `predict` must start without paying torch's import
# (1-2 s) for a command that never needs it. No submodule shares a name with these, so nothing hides them.
_API = {"train": "training.launch", "load": "inference.classifier", "evaluate": "evaluation.evaluate",
        "tune": "tuning.search", "audit": "auditing.audit", "AuditConfig": "auditing.config",
        "distill": "compression.distill", "prune": "compression.prune", "DistillConfig": "compression.config",
        "PruneConfig": "compression.config", "push": "export.hub", "PushConfig": "export.config",
        "TrainConfig": "training.config", "TuneConfig": "tuning.config",
        "EvaluateConfig": "evaluation.config", "TrainResult": "training.finish", "Classifier": "inference.classifier",
        "Prediction": "inference.classifier", "Reading": "inference.reading", "UserError": "errors"}
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'finetune_bert' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"finetune_bert.{_API[name]}"), name)
    globals()[name] = value
    return value
