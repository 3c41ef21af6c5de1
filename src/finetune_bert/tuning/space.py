"""The search space of `finetune-bert tune`: which train options are searched, over what, and how a trial
draws them.

The default is grounded in the published recipes (BERT's grid: batch 16/32, lr 2e-5-5e-5, 2-4 epochs;
RoBERTa's GLUE recipe: warm-up 6%, weight decay 0.1; Sun et al. 2019 on IMDB: lr 2e-5, 3-4 epochs): lr
log-uniform in 1e-5-1e-4, batch size {16, 32}, epochs 2-4, warm-up ratio {0, 0.06, 0.1}, weight decay {0,
0.01, 0.1}. The seed is never searched (Dodge et al. 2020: seeds alone move BERT's scores a lot, and a
search over seeds reports luck as a gain); `tune --confirm-seeds` measures the spread instead.

A space file (JSON, or YAML if PyYAML is installed) maps option names to one of
    {"low": 1e-5, "high": 1e-4, "log": true}     a float range (log-uniform with "log")
    {"low": 2, "high": 4}                         an integer range, when both ends are integers
    {"choices": [16, 32]}                         a categorical choice
Every problem in it is reported at once, each naming its entry, before anything runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_bert.errors import UserError

# What may be searched: the options that change training but not the data or its tokens, so a study reads
# and tokenizes the data once. Each with its type, and the least value the option accepts.
SEARCHABLE: dict[str, tuple[type, float | None]] = {
    "lr": (float, 0.0), "batch_size": (int, 1), "epochs": (float, 0.0), "warmup_ratio": (float, 0.0),
    "weight_decay": (float, 0.0), "grad_accum": (int, 1), "max_grad_norm": (float, 0.0),
}


@dataclass(frozen=True)
class Dimension:
    """One searched option: a range (low..high, log-uniform if `log`) or a list of choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if SEARCHABLE[self.name][0] is int or (isinstance(self.low, int) and isinstance(self.high, int)):
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def to_json(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, **({"log": True} if self.log else {})}


DEFAULT_SPACE = (Dimension("lr", 1e-5, 1e-4, log=True), Dimension("batch_size", choices=(16, 32)),
                 Dimension("epochs", 2, 4), Dimension("warmup_ratio", choices=(0.0, 0.06, 0.1)),
                 Dimension("weight_decay", choices=(0.0, 0.01, 0.1)))


def space_json(space: tuple[Dimension, ...]) -> dict[str, Any]:
    return {d.name: d.to_json() for d in space}


def read_space(path: str | None) -> tuple[Dimension, ...]:
    """The default space, or the one in `path`, checked entry by entry."""
    if path is None:
        return DEFAULT_SPACE
    raw = _load(Path(path))
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"--space {path}: expected an object mapping option names to ranges or choices, "
                        "e.g. {\"lr\": {\"low\": 1e-5, \"high\": 1e-4, \"log\": true}}")
    problems, space = [], []
    for name, entry in raw.items():
        found = _entry_problems(name, entry)
        problems += [f"--space {path}: entry {name!r}: {p}" for p in found]
        if not found:
            space.append(_dimension(name, entry))
    if problems:
        raise UserError("; ".join(problems))
    return tuple(space)


def _load(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--space {path}: cannot be read ({exc})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UserError(f"--space {path}: YAML needs PyYAML (pip install pyyaml); or write the space as JSON") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UserError(f"--space {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UserError(f"--space {path}: not valid JSON ({exc})") from None


def _entry_problems(name: str, entry: Any) -> list[str]:
    if name not in SEARCHABLE:
        return [f"not a searchable option; searchable: {', '.join(SEARCHABLE)} (the seed is fixed on purpose)"]
    if not isinstance(entry, dict):
        return ['expected {"low": .., "high": ..} or {"choices": [..]}']
    kind, least = SEARCHABLE[name]
    unknown = sorted(set(entry) - {"low", "high", "log", "choices"})
    if unknown:
        return [f"unknown key(s) {', '.join(unknown)}; use low/high/log or choices"]
    if "choices" in entry:
        return _choice_problems(entry, kind, least)
    if "low" not in entry or "high" not in entry:
        return ["a range needs both low and high (or give choices)"]
    low, high = entry["low"], entry["high"]
    if not all(_is_number(v) for v in (low, high)):
        return [f"low and high must be numbers, got {low!r} and {high!r}"]
    if kind is int and not all(float(v).is_integer() for v in (low, high)):
        return [f"{name} takes whole numbers, got {low!r} and {high!r}"]
    problems = []
    if low > high:
        problems.append(f"low {low} is more than high {high}")
    if least is not None and low < least:
        problems.append(f"low {low} is below {least}, the least {name} can be")
    if not isinstance(entry.get("log", False), bool):
        problems.append("log must be true or false")
    elif entry.get("log") and low <= 0:
        problems.append("a log range needs low > 0")
    return problems


def _choice_problems(entry: dict, kind: type, least: float | None) -> list[str]:
    choices = entry["choices"]
    if set(entry) - {"choices"}:
        return ["give either choices or low/high, not both"]
    if not isinstance(choices, list) or not choices:
        return ["choices must be a non-empty list"]
    bad = [c for c in choices if not _is_number(c) or (kind is int and not float(c).is_integer())
           or (least is not None and c < least)]
    if bad:
        return [f"choices {bad} are not valid values ({kind.__name__}{f', at least {least}' if least is not None else ''})"]
    if len(set(choices)) < len(choices):
        return ["choices repeat a value"]
    return []


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _dimension(name: str, entry: dict) -> Dimension:
    kind = SEARCHABLE[name][0]
    if "choices" in entry:
        return Dimension(name, choices=tuple(kind(c) for c in entry["choices"]))
    low, high = entry["low"], entry["high"]
    if kind is int:
        low, high = int(low), int(high)
    return Dimension(name, low, high, log=bool(entry.get("log", False)))
