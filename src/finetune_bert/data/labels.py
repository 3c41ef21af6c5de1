"""Label cells to classes: integer spellings, the id order, names, and spelling variants of one class.

Labels are what the data says, no more: only the one canonical spelling of an integer becomes an int, and
labels that differ only in case, Unicode form or invisible characters are caught (or folded on request)
rather than silently becoming separate classes.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from finetune_bert.errors import UserError
from finetune_bert.tasks import CLASSIFICATION, MULTI_LABEL, REGRESSION

if TYPE_CHECKING:
    from finetune_bert.data.splits import Split


def as_label(value: Any) -> Any:
    """Integer-looking labels become ints so '1' (CSV) and 1 (JSON) are the same class."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        stripped = value.strip()
        # Only the one canonical spelling of an integer: '01', '+1' or a full-width '１' would otherwise
        # silently merge with '1' and be renamed; left as text, they meet the mixed-kinds check instead.
        if re.fullmatch(r"0|-?[1-9][0-9]*", stripped):
            return int(stripped)
        return stripped
    return value


def label_mapping(labels: list[Any], names_option: str | None, hub_names: list[str] | None,
                  source: str) -> tuple[list[Any], list[str]]:
    """Deterministic id order: sorted label values. Names come from the data, --label-names, or the hub."""
    raw = sorted(set(labels), key=lambda x: (isinstance(x, str), x))
    if len(raw) < 2:
        raise UserError(f"{source}: only one class ({raw[0]!r}) in the training data; "
                        "classification needs at least two")
    names = [str(x) for x in raw]
    if names_option and not all(isinstance(x, int) for x in raw):
        raise UserError(f"--label-names names integer labels, in id order; the labels in {source} are text "
                        f"({', '.join(map(str, raw[:5]))}{' ...' if len(raw) > 5 else ''}) and are the names "
                        "already: drop --label-names")
    if names_option:
        given = [n.strip() for n in names_option.split(",")]
        if len(given) != len(raw):
            raise UserError(f"--label-names has {len(given)} names but the data has {len(raw)} classes: "
                            f"{', '.join(map(str, raw))}")
        names = given
    elif hub_names and all(isinstance(x, int) and 0 <= x < len(hub_names) for x in raw):
        names = [hub_names[x] for x in raw]
    if len(set(names)) != len(names):
        raise UserError(f"label names must be distinct, got {', '.join(names)}")
    return raw, names


def _label_key(label: str) -> str:
    """What two spellings of one label share: Unicode-normalised (NFKC: 'é' as one code point or as 'e' and an
    accent), without invisible format characters (a zero-width space), case-folded."""
    folded = unicodedata.normalize("NFKC", label).casefold()
    return "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")


def case_variants(splits: list[Split], fold: bool, notes: list[str]) -> None:
    """Labels that differ only in case ('positive', 'Positive'), Unicode form or invisible characters would
    silently become separate classes: stop with the variants listed, or (--fold-labels) merge each group into
    its most frequent spelling. Surrounding spaces never count: `as_label` strips them."""
    counts: dict[str, Counter] = {}
    for split in splits:  # counted per distinct label first: a row's location is looked up only for a clash
        for label, n in Counter(x for cell in split.labels for x in _names(cell) if isinstance(x, str)).items():
            counts.setdefault(_label_key(label), Counter())[label] += n
    clashes = [c for c in counts.values() if len(c) > 1]
    if not clashes:
        return
    first_at = _first_at(splits, {v for c in clashes for v in c})
    groups = [", ".join(f"{_shown(v)} ({n} rows, first at {first_at[v]})" for v, n in c.most_common()) for c in clashes]
    if not fold:
        more = f" (and {len(groups) - 3} more groups)" if len(groups) > 3 else ""
        raise UserError("labels that differ only in case, Unicode form or invisible characters would become "
                        "separate classes: " + "; ".join(groups[:3]) + more + ". Fix the data, or pass "
                        "--fold-labels to merge each group into its most frequent spelling")
    to = {v: c.most_common(1)[0][0] for c in clashes for v in c}

    def rename(x: Any) -> Any:
        return to.get(x, x) if isinstance(x, str) else x

    for split in splits:
        if hasattr(split.labels, "map"):  # a stored column (data.columns): its distinct values renamed
            split.labels = split.labels.map(rename)
        else:
            split.labels = [tuple(dict.fromkeys(rename(y) for y in x)) if isinstance(x, tuple) else rename(x)
                            for x in split.labels]
    notes.append("--fold-labels merged " + "; ".join(f"{', '.join(map(_shown, c))} into {_shown(c.most_common(1)[0][0])}"
                                                     for c in clashes))


def _names(cell: Any) -> tuple:
    """A label cell's names one by one: a label set's, or the one class."""
    return cell if isinstance(cell, tuple) else (cell,)


def _first_at(splits: list[Split], wanted: set[str]) -> dict[str, str]:
    """Where each of the `wanted` labels first occurs: 'source: line N'."""
    found: dict[str, str] = {}
    for split in splits:
        for i, cell in enumerate(split.labels):
            for label in _names(cell):
                if label in wanted and label not in found:
                    found[label] = f"{split.source}: {split.where[i]}"
            if len(found) == len(wanted):
                return found
    return found


def _shown(label: str) -> str:
    """A label as the user can tell it apart: repr, with combining and invisible characters escaped."""
    return "'" + "".join(ch if unicodedata.category(ch)[0] not in "MC" else f"\\u{ord(ch):04x}" for ch in label) + "'"


@dataclass(frozen=True)
class LabelSpec:
    """How a label cell is read for a task kind: one class, a set of label names (`separator` between them in
    text cells, or a JSON list), or a number."""

    task: str = CLASSIFICATION
    separator: str = ";"

    def read(self, raw: Any) -> tuple[Any, str | None]:
        """A present (non-empty) label cell as this kind reads it, or why it cannot be read."""
        if self.task == MULTI_LABEL:
            return label_set(raw, self.separator)
        if self.task == REGRESSION:
            return target(raw)
        if isinstance(raw, (list, tuple)):
            return None, "label is a list, not a single class (several labels per text: pass --task multi-label)"
        if isinstance(raw, dict):
            return None, "label is an object, not a single class"
        return as_label(raw), None

    def missing(self) -> tuple[Any, str | None]:
        """An empty label cell: no label at all for multi-label (allowed), missing otherwise."""
        if self.task == MULTI_LABEL:
            return (), None
        return None, "target is missing" if self.task == REGRESSION else "label is missing"


def label_set(raw: Any, separator: str) -> tuple[tuple[Any, ...] | None, str | None]:
    """A multi-label cell: names split on `separator` (text) or a list's items (JSON, Parquet), each read as
    `as_label` reads a class; empty names are dropped, a repeated one counted once, the order kept."""
    if isinstance(raw, (list, tuple)):
        items = list(raw)
    elif isinstance(raw, str):
        items = raw.split(separator)
    elif isinstance(raw, dict) or isinstance(raw, float) and not raw.is_integer():
        return None, f"label cell is {type(raw).__name__} {raw!r}, not label names"
    else:
        items = [raw]
    if any(isinstance(x, (list, tuple, dict)) for x in items):
        return None, "label list holds a list or an object, not label names"
    names = [as_label(x) for x in items if x is not None and not (isinstance(x, str) and not x.strip())]
    return tuple(dict.fromkeys(names)), None


def target(raw: Any) -> tuple[float | None, str | None]:
    """A regression target: a finite number, written as one (int, float, or text such as '7' or '3.5')."""
    if isinstance(raw, bool) or isinstance(raw, (list, tuple, dict)):
        return None, f"target {raw!r} is not a number"
    try:
        value = float(raw.strip()) if isinstance(raw, str) else float(raw)
    except (TypeError, ValueError):
        return None, f"target {raw!r} is not a number"
    if not math.isfinite(value):
        return None, f"target {raw!r} is not a finite number"
    return value, None
