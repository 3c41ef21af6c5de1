"""What the labels of each task kind need beyond one class per text: label sets (multi-label) and numeric
targets (regression). Each kind's checks name the file and line of the first row at fault."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from finetune_bert.data.splits import Split
from finetune_bert.errors import UserError


def label_sets_hint(train: Split, separator: str, column: str | None) -> str | None:
    """Why a label column read as one class per text looks like label sets (None: it does not). Two signs,
    either enough: most distinct label values hold the separator (GoEmotions' 711 'classes' are mostly
    combinations), or every part of every combined value is also a label on its own."""
    values = Counter(x for x in train.labels if isinstance(x, str))
    combined = [v for v in values if separator in v]
    if len(combined) < 2:
        return None
    alone = set(values) - set(combined)
    parts = {p.strip() for v in combined for p in v.split(separator) if p.strip()}
    if len(combined) * 2 < len(values) and not parts <= alone:
        return None
    first = next(i for i, x in enumerate(train.labels) if isinstance(x, str) and separator in x)
    return (f"{train.source}: the label column{f' {column!r}' if column else ''} looks like label sets, not "
            f"classes: {len(combined)} of its {len(values)} distinct values hold {separator!r} (the first at "
            f"{train.where[first]}: {train.labels[first]!r}); pass --task multi-label (--label-separator to "
            "change the separator)")


def multi_label_mapping(train: Split, names_option: str | None) -> tuple[list[Any], list[str]]:
    """The label set (the union over train, sorted as classes are) and its names; --label-names names integer
    labels in id order, and a named label that never occurs in train is refused: it could never be learned."""
    seen = Counter(x for labels in train.labels for x in labels)
    if not seen:
        raise UserError(f"{train.source}: no row of the training data has a label; multi-label needs at least one")
    kinds = {type(x) for x in seen}
    if len(kinds) > 1:
        raise UserError(f"{train.source}: label names mix text and integers ({', '.join(map(repr, list(seen)[:4]))}); "
                        "use one kind of label throughout")
    if not names_option:
        raw = sorted(seen)
        return raw, [str(x) for x in raw]
    given = [n.strip() for n in names_option.split(",")]
    if kinds != {int} or not all(0 <= x < len(given) for x in seen):
        raise UserError(f"--label-names names integer labels 0..{len(given) - 1} in id order; the labels in "
                        f"{train.source} are {', '.join(map(repr, sorted(seen, key=str)[:5]))}")
    never = [f"{n!r} (id {i})" for i, n in enumerate(given) if i not in seen]
    if never:
        raise UserError(f"{train.source}: --label-names names labels that never occur in the training data: "
                        f"{', '.join(never[:5])}{' ...' if len(never) > 5 else ''}; a model cannot learn them")
    if len(set(given)) != len(given):
        raise UserError(f"label names must be distinct, got {', '.join(given)}")
    return list(range(len(given))), given


def unknown_in_sets(split: Split, known: set) -> list[int]:
    """Rows of a validation or test split holding a label train never had."""
    return [i for i, labels in enumerate(split.labels) if any(x not in known for x in labels)]


def target_scale(train: Split) -> tuple[float, float]:
    """Train's targets' mean and standard deviation: the model learns z-scores, and the scaling is folded
    into the saved head. A constant target is refused: there is nothing to learn."""
    values = np.asarray(train.labels, dtype=np.float64)
    std = float(values.std())
    if not std > 1e-12 * max(1.0, abs(float(values.mean()))):
        raise UserError(f"{train.source}: every training target is {values[0]:g} (from {train.where[0]} on); "
                        "regression needs targets that vary")
    return float(values.mean()), std


def strata(split: Split, task: str) -> list[str]:
    """What the validation split is stratified by: the class; for label sets the row's rarest label (so that
    rare labels reach validation), 'none' for a row without labels; for targets, their decile."""
    if task == "multi-label":
        counts = Counter(x for labels in split.labels for x in labels)
        return [str(min(labels, key=lambda x: (counts[x], str(x)))) if labels else "\0none" for labels in split.labels]
    if task == "regression":
        values = np.asarray(split.labels, dtype=np.float64)
        edges = np.unique(np.quantile(values, np.linspace(0.1, 0.9, 9)))
        return [str(b) for b in np.searchsorted(edges, values, side="right")]
    return [str(x) for x in split.labels]
