"""What a training run saves beside the weights (finetune_bert.json): how the model reads a text. Written by
training, read by everything that uses the model; its defaults are the ones a model from elsewhere gets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_bert.errors import UserError

RUN_FILE = "finetune_bert.json"


@dataclass(frozen=True)
class RunInfo:
    """How the saved model reads texts. A folder finetune-bert did not train gets these defaults: the
    stock tokenizer cut at 512 tokens, head+tail, texts cleaned, integer labels taken as ids."""

    max_length: int = 512
    truncation: str = "head+tail"
    head_tokens: int = 128
    clean: bool = True
    raw_labels: tuple[Any, ...] | None = None  # the labels as the training data spelled them, in id order
    label_names: tuple[str, ...] | None = None
    base_model: str | None = None
    temperature: float = 1.0  # already folded into the classifier's weights
    task: str = "classification"  # tasks.TASKS; config.json's problem_type says the same to other tools
    pair_column: str | None = None  # text pairs: the second text's column in training ([SEP] and type ids)
    text_column: str | None = None  # the first text's column in training, for predict's files
    # multi-label: each label's decision threshold on its probability (tuned on validation, or --threshold)
    thresholds: tuple[float, ...] | None = None
    label_temperatures: tuple[float, ...] | None = None  # multi-label: one per label, folded into the weights
    target_scale: tuple[float, float] | None = None  # regression: (mean, std) of train, folded into the weights
    integer_targets: bool = False  # regression: every training target was a whole number
    label_separator: str = ";"  # multi-label: between label names in a text cell, as in training

    @classmethod
    def of(cls, payload: dict[str, Any]) -> RunInfo:
        """From finetune_bert.json's object; keys it does not know (a newer version's) are left out."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in payload.items() if k in known}
        for key in ("raw_labels", "label_names", "thresholds", "label_temperatures", "target_scale"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        if "temperature" in values:
            values["temperature"] = float(values["temperature"])
        return cls(**values)

    @classmethod
    def read(cls, folder: Path | None) -> RunInfo:
        """The folder's finetune_bert.json, or the defaults where there is none (a hub id, another tool's model)."""
        path = folder / RUN_FILE if folder is not None else None
        if path is None or not path.is_file():
            return cls()
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: bad JSON or bytes that are not UTF-8
            raise UserError(f"{path}: cannot be read ({exc}); it tells how the model cleans and truncates texts. "
                            "Restore it from the training run, or delete it to use the defaults") from None
        if not isinstance(payload, dict):
            raise UserError(f"{path}: is not a JSON object; restore it from the training run, or delete it")
        try:
            return cls.of(payload)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{path}: a value has the wrong type ({exc}); restore it from the training run, or "
                            "delete it to use the defaults") from None

    def to_json(self) -> dict[str, Any]:
        payload = dataclasses.asdict(self)
        for key in ("raw_labels", "label_names", "thresholds", "label_temperatures", "target_scale"):
            if payload[key] is not None:
                payload[key] = list(payload[key])
        return payload

    def text(self) -> str:
        return json.dumps(self.to_json(), indent=2, default=str) + "\n"
