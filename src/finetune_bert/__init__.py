"""finetune-bert: fine-tune BERT-family encoders for text classification.

    from finetune_bert import train, load
    result = train(data="reviews.csv", model="minilm", output="out/")
    load("out/").predict("I loved it")   # Prediction(label='positive', confidence=0.97)
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"
# The public API, imported on first use: `import finetune_bert.cli` must not pay torch's import (1-2 s) for
# a command that never needs it (predict through ONNX: issue 20's first result in under 2 s).
_API = {"train": "launch", "load": "predict", "evaluate": "evaluate", "tune": "tune", "TrainConfig": "config",
        "TuneConfig": "config", "TrainResult": "train", "Classifier": "predict", "Prediction": "predict",
        "Reading": "config", "UserError": "errors"}
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'finetune_bert' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"finetune_bert.{_API[name]}"), name)
    types.ModuleType.__setattr__(sys.modules[__name__], name, value)
    return value


class _Package(types.ModuleType):
    """`train`, `evaluate` and `tune` are both functions of the API and submodules: importing a submodule
    sets the package's attribute of that name to the module, which would hide the function. The API wins,
    as it did when the API was imported eagerly (after its submodules)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
