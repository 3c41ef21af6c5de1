"""Label cells to classes: integer spellings, the id order, names, and spelling variants of one class.

Labels are what the data says, no more: only the one canonical spelling of an integer becomes an int, and
labels that differ only in case, Unicode form or invisible characters are caught (or folded on request)
rather than silently becoming separate classes.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import TYPE_CHECKING, Any

from finetune_bert.errors import UserError

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
    first_at: dict[str, str] = {}
    for split in splits:
        for label, loc in zip(split.labels, split.where):
            if isinstance(label, str):
                counts.setdefault(_label_key(label), Counter())[label] += 1
                first_at.setdefault(label, f"{split.source}: {loc}")
    clashes = [c for c in counts.values() if len(c) > 1]
    if not clashes:
        return
    groups = [", ".join(f"{_shown(v)} ({n} rows, first at {first_at[v]})" for v, n in c.most_common()) for c in clashes]
    if not fold:
        more = f" (and {len(groups) - 3} more groups)" if len(groups) > 3 else ""
        raise UserError("labels that differ only in case, Unicode form or invisible characters would become "
                        "separate classes: " + "; ".join(groups[:3]) + more + ". Fix the data, or pass "
                        "--fold-labels to merge each group into its most frequent spelling")
    to = {v: c.most_common(1)[0][0] for c in clashes for v in c}
    for split in splits:
        split.labels = [to.get(x, x) if isinstance(x, str) else x for x in split.labels]
    notes.append("--fold-labels merged " + "; ".join(f"{', '.join(map(_shown, c))} into {_shown(c.most_common(1)[0][0])}"
                                                     for c in clashes))


def _shown(label: str) -> str:
    """A label as the user can tell it apart: repr, with combining and invisible characters escaped."""
    return "'" + "".join(ch if unicodedata.category(ch)[0] not in "MC" else f"\\u{ord(ch):04x}" for ch in label) + "'"
