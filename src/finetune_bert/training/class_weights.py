"""--class-weights: `none`, `auto`, or weights by label name (`negative=1,positive=3`).

Explicit weights are what cross-entropy's `weight=` is (a class's rows count that many times in the loss), and
for label sets each label's BCE `pos_weight` (its positive cells count that many times); a label not named
weighs 1. The text is checked with the other options, before any data is read (its form, each weight a finite
positive number, no label named twice); the names only once the data is read and its labels are known, still
before any model is loaded. A name is a label as the model calls it (`--label-names` where given) or as the data
spells it. Torch-free: the command line's configs check the option without importing it."""

from __future__ import annotations

import math
from typing import Any

from finetune_bert.errors import UserError
from finetune_bert.tasks import REGRESSION

NAMED_FORM = "none, auto, or weights by label name such as negative=1,positive=3"


def parse(spec: str) -> tuple[dict[str, float], list[str]]:
    """The weights by name of an explicit `spec`, and every problem of its form (none and auto: no weights)."""
    if spec in ("none", "auto"):
        return {}, []
    weights: dict[str, float] = {}
    found: list[str] = []
    for item in str(spec).split(","):
        name, sign, number = item.rpartition("=")
        name = name.strip()
        if not sign or not name:
            return {}, [f"--class-weights {spec}: '{item.strip()}' is not NAME=WEIGHT; give {NAMED_FORM}"]
        try:
            weight = float(number)
        except ValueError:
            found.append(f"--class-weights {spec}: the weight of {name} is not a number, got '{number.strip()}'")
            continue
        if not math.isfinite(weight) or weight <= 0:
            found.append(f"--class-weights {spec}: the weight of {name} must be a positive number, got "
                         f"{number.strip()}")
        if name in weights:
            found.append(f"--class-weights {spec}: {name} is given twice")
        weights[name] = weight
    return weights, found


def spec_problems(spec: str, task: str) -> list[str]:
    """What is wrong with --class-weights before the data is read."""
    if task == REGRESSION and spec != "none":
        return [f"--class-weights {spec} weights classes; regression has none"]
    return parse(spec)[1]


def by_name(spec: str, label_names: list[str], raw_labels: list[Any]) -> list[float] | None:
    """Each label's weight in id order (a label not named: 1), or None for `none`/`auto`; a name that is no
    label of the data is a UserError naming the labels there are."""
    weights, found = parse(spec)
    if not weights:
        if found:
            raise UserError("; ".join(found))
        return None
    ids = {str(raw): i for i, raw in enumerate(raw_labels)}
    ids.update({name: i for i, name in enumerate(label_names)})
    unknown = [name for name in weights if name not in ids]
    if unknown:
        raise UserError(f"--class-weights {spec}: {', '.join(unknown)} is no label of the data; its labels: "
                        f"{', '.join(label_names)}")
    out = [1.0] * len(label_names)
    for name, weight in weights.items():
        out[ids[name]] = weight
    return out
