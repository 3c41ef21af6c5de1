"""From a user's data source to clean, validated, labelled splits.

Sources: files (see readers.py), aclImdb-style folders, Hugging Face hub dataset names. Rows keep their
location so that a bad one can be reported where the user sees it, or skipped with a written record."""

from __future__ import annotations

import difflib
import html
import math
import re
from typing import Any
from finetune_bert.errors import UserError
from finetune_bert.data.labels import as_label
from finetune_bert.data.readers import Records
from finetune_bert.data.skipped import SkippedRow
from finetune_bert.data.splits import Split


TEXT_COLUMNS = ("text", "review", "sentence", "content")


LABEL_COLUMNS = ("label", "labels", "sentiment", "target", "class")


# ---------------------------------------------------------------- cleaning

_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def clean_text(text: str) -> str:
    """'<br />' becomes a newline and HTML entities their characters; nothing else changes."""
    return html.unescape(_BR.sub("\n", text))


# ---------------------------------------------------------------- columns

def pick_column(records: Records, wanted: str | None, candidates: tuple[str, ...], kind: str,
                option: str, besides: str | None = None) -> str:
    """The named column, or the one column whose name is a candidate (any case); `besides` is already taken.
    Two candidates ('text' and 'review', or 'text' and 'Text') are refused: either could be meant."""
    if wanted:
        if wanted in records.columns:
            return wanted
        raise UserError(_missing_column(records, wanted, kind, option))
    found = [c for c in records.columns if c.strip().lower() in candidates and c != besides]
    if len(found) > 1:
        raise UserError(f"{records.source}: {len(found)} columns could be the {kind} column "
                        f"({', '.join(map(repr, found))}); name one with {option}")
    if found:
        return found[0]
    raise UserError(_missing_column(records, None, kind, option, candidates))


def _missing_column(records: Records, wanted: str | None, kind: str, option: str,
                    candidates: tuple[str, ...] = ()) -> str:
    found = ", ".join(repr(c) for c in records.columns) or "none"
    close = difflib.get_close_matches(wanted or candidates[0], records.columns, n=1, cutoff=0.4)
    hint = f"; did you mean {option} {close[0]!r}?" if close else f"; name it with {option}"
    what = f"{kind} column {wanted!r} not found" if wanted else \
        f"no {kind} column found (looked for {', '.join(candidates)})"
    return f"{records.source}: {what}; columns are {found}{hint}"


# ---------------------------------------------------------------- rows

def _is_missing(value: Any) -> bool:
    """Only a truly empty cell is missing: 'none', 'NA', 'null' and 'nan' can be real class names."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        (isinstance(value, str) and not value.strip())


def _kind(value: Any) -> str:
    name = type(value).__name__
    return {list: "a list", tuple: "a list", dict: "an object"}.get(type(value), f"{'an' if name[0] in 'aeiou' else 'a'} {name}")


def to_split(records: Records, name: str, text_column: str | None, label_column: str | None,
             clean: bool, need_labels: bool | None, *, skipped: list[SkippedRow], on_bad_rows: str) -> Split:
    """Validate every row; bad ones either stop the run (all counted) or are skipped and recorded."""
    tcol, lcol = split_columns(records, text_column, label_column, need_labels)
    split, bad = check_rows(records, name, tcol, lcol, clean, optional_labels=not need_labels)
    kinds = first_label_kinds(split, {})
    if len(kinds) > 1 and need_labels:
        raise mixed_labels_error(records.source, lcol, kinds)
    report_bad_rows(bad, on_bad_rows, skipped)
    if not split.texts:
        raise UserError(f"{records.source}: no usable rows" + all_skipped(bad[0] if bad else None, len(bad)))
    return split


def split_columns(records: Records, text_column: str | None, label_column: str | None,
                  need_labels: bool | None) -> tuple[str, str | None]:
    """The text column and the label column: required (need_labels True), used if there is one (False:
    predict copies it to its output), or never looked for (None: predict --ignore-labels)."""
    tcol = pick_column(records, text_column, TEXT_COLUMNS, "text", "--text-column")
    lcol = None
    if need_labels is None:
        return tcol, None
    if need_labels or label_column:
        lcol = pick_column(records, label_column, LABEL_COLUMNS, "label", "--label-column")
    elif any(c.strip().lower() in LABEL_COLUMNS and c != tcol for c in records.columns):
        lcol = pick_column(records, None, LABEL_COLUMNS, "label", "--label-column", tcol)
    if lcol == tcol:  # the labels would be trained on as the texts, or the texts taken as classes
        raise UserError(f"{records.source}: column {tcol!r} is both the text column and the label column; "
                        "name the other one with " + ("--label-column" if text_column else "--text-column"))
    return tcol, lcol


def check_rows(records: Records, name: str, tcol: str, lcol: str | None, clean: bool,
               optional_labels: bool = False, *, judge_cleaned: bool | None = None) -> tuple[Split, list[SkippedRow]]:
    """The usable rows as a split, and the bad ones (text missing, not a string, or with nothing visible, as
    cleaned if `judge_cleaned` (default: `clean`); label missing unless `optional_labels`, or not a single
    value). Texts are kept cleaned if `clean`: predict keeps the text as given and lets the model clean it."""
    judged = clean if judge_cleaned is None else judge_cleaned
    texts, labels, where, bad = [], [] if lcol else None, [], []
    for row, loc in zip(records.rows, records.where):
        text, label = row.get(tcol), None
        column, problem = tcol, _text_problem(text)
        cleaned = clean_text(text) if problem is None and (clean or judged) else text
        if problem is None:
            problem = _nothing_visible(cleaned if judged else text, judged and cleaned != text)
        if problem is None and lcol is not None:
            column, raw = lcol, row.get(lcol)
            if _is_missing(raw):
                problem = None if optional_labels else "label is missing"
            elif isinstance(raw, (list, tuple, dict)):
                problem = f"label is {_kind(raw)}, not a single class"
            else:
                label = as_label(raw)
        if problem:
            bad.append(SkippedRow(name, records.source, loc, column, problem, repr(row.get(column))[:200]))
            continue
        texts.append(cleaned if clean else text)
        if labels is not None:
            labels.append(label)
        where.append(loc)
    return Split(name, records.source, texts, labels, where), bad


def _text_problem(text: Any) -> str | None:
    """Why a text cell is unusable: a number or a list (a Parquet list column) is never trained on as its
    Python repr."""
    if _is_missing(text):
        return "text is missing" if not isinstance(text, str) else "text is empty"
    if not isinstance(text, str):
        return f"text is {_kind(text)}, not a string"
    return None


def visible(text: str) -> bool:
    """Whether `text` has a character that shows: one of only spaces or zero-width characters gives the model
    nothing but [CLS] [SEP]."""
    return any(ch.isprintable() and not ch.isspace() for ch in text)


def _nothing_visible(text: str, by_cleaning: bool) -> str | None:
    """A text with nothing visible (also once '<br />' tags are cleaned away) is a bad row, as an empty one is."""
    if visible(text):
        return None
    if by_cleaning:
        return "text is empty once cleaned ('<br />' tags and HTML entities removed)"
    return "text has no visible characters (only spaces or invisible ones)"


def first_label_kinds(split: Split, kinds: dict[type, tuple[str, Any]]) -> dict[type, tuple[str, Any]]:
    """Add to `kinds` the (location, label) of the split's first text and first integer label, if new."""
    for kind in (str, int):
        if kind not in kinds and split.labels:
            found = next(((loc, x) for x, loc in zip(split.labels, split.where) if isinstance(x, kind)), None)
            if found:
                kinds[kind] = found
    return kinds


def mixed_labels_error(source: str, lcol: str | None, kinds: dict[type, tuple[str, Any]]) -> UserError:
    (str_at, str_label), (int_at, int_label) = kinds[str], kinds[int]
    return UserError(f"{source}: {str_at}, column '{lcol}': label {str_label!r} is text but {int_at} has the "
                     f"integer label {int_label!r}; use one kind of label throughout")


def report_bad_rows(bad: list[SkippedRow], on_bad_rows: str, skipped: list[SkippedRow]) -> None:
    if not bad:
        return
    if on_bad_rows == "skip":
        skipped.extend(bad)
        return
    raise bad_rows_error(bad[0], len(bad))


def all_skipped(first: SkippedRow | None, count: int, doing: str = "use") -> str:
    """The end of a "no usable rows" message when every row was bad and skipped; `doing` is what the
    command would have done with them (use, score, predict)."""
    if first is None:
        return ""
    return (f": all {count} rows are bad (the first: {first.where}, column '{first.column}': {first.reason}); "
            f"nothing is left to {doing}")


def bad_rows_error(first: SkippedRow, count: int) -> UserError:
    others = f" ({count - 1} more bad rows)" if count > 1 else ""
    return UserError(f"{first.source}: {first.where}, column '{first.column}': {first.reason}{others}; "
                     "fix the data or pass --on-bad-rows skip")
