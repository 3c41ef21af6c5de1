"""From a user's data source to clean, validated, labelled splits.

Sources: files (see readers.py), aclImdb-style folders, Hugging Face hub dataset names. Rows keep their
location so that a bad one can be reported where the user sees it, or skipped with a written record."""

from __future__ import annotations

import difflib
import html
import math
import re
from typing import Any, NamedTuple
from finetune_bert.errors import UserError
from finetune_bert.data.labels import LabelSpec
from finetune_bert.data.readers import Records
from finetune_bert.data.skipped import SkippedRow
from finetune_bert.data.splits import Split


TEXT_COLUMNS = ("text", "review", "sentence", "content")


LABEL_COLUMNS = ("label", "labels", "sentiment", "target", "class")


# A regression target is also found under the names ratings and scores go by.
TARGET_COLUMNS = (*LABEL_COLUMNS, "rating", "score", "value", "stars")


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


# The usual names of a pair's two texts (GLUE, NLI, QA datasets): found without --text-pair-column.
PAIR_COLUMNS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question", "answer"), ("text_a", "text_b"))


class Columns(NamedTuple):
    """The columns a split is read from: the text, the label (None: none), the pair's second text (None)."""

    text: str
    label: str | None = None
    pair: str | None = None


def to_split(records: Records, name: str, text_column: str | None, label_column: str | None,
             clean: bool, need_labels: bool | None, *, skipped: list[SkippedRow], on_bad_rows: str,
             pair_column: str | None = None, pairs: bool = False, spec: LabelSpec = LabelSpec()) -> Split:
    """Validate every row; bad ones either stop the run (all counted) or are skipped and recorded. `pairs`:
    look for a pair's second text (named by `pair_column`, or a usual pair of names); `spec`: the labels' kind."""
    cols = split_columns(records, text_column, label_column, need_labels, pair_column=pair_column, pairs=pairs,
                         task=spec.task)
    split, bad = check_rows(records, name, cols.text, cols.label, clean, optional_labels=not need_labels,
                            pcol=cols.pair, spec=spec)
    split.columns = cols
    kinds = first_label_kinds(split, {})
    if len(kinds) > 1 and need_labels:
        raise mixed_labels_error(records.source, cols.label, kinds)
    report_bad_rows(bad, on_bad_rows, skipped)
    if not split.texts:
        raise UserError(f"{records.source}: no usable rows" + all_skipped(bad[0] if bad else None, len(bad)))
    return split


def split_columns(records: Records, text_column: str | None, label_column: str | None,
                  need_labels: bool | None, *, pair_column: str | None = None, pairs: bool = False,
                  task: str = "classification") -> Columns:
    """The text column, the label column and the pair column: labels required (need_labels True), used if
    there is a label column (False: predict copies it to its output), or never looked for (None: predict
    --ignore-labels); a pair column only with `pairs`."""
    text_column, pcol = _pair_columns(records, text_column, pair_column) if pairs else (text_column, None)
    tcol = pick_column(records, text_column, TEXT_COLUMNS, "text", "--text-column")
    if pcol == tcol:
        raise UserError(f"{records.source}: column {tcol!r} is both the text column and the pair's second text; "
                        "name the other one with --text-column or --text-pair-column")
    lcol = None
    if need_labels is None:
        return Columns(tcol, None, pcol)
    names = TARGET_COLUMNS if task == "regression" else LABEL_COLUMNS
    if need_labels or label_column:
        lcol = pick_column(records, label_column, names, "label", "--label-column")
    elif any(c.strip().lower() in names and c not in (tcol, pcol) for c in records.columns):
        lcol = pick_column(records, None, names, "label", "--label-column", tcol)
    if lcol is not None and lcol in (tcol, pcol):  # the labels would be trained on as the texts, or the texts taken as classes
        which = "the text column" if lcol == tcol else "the pair's second text"
        raise UserError(f"{records.source}: column {lcol!r} is both {which} and the label column; "
                        "name the other one with " + ("--label-column" if text_column else "--text-column"))
    return Columns(tcol, lcol, pcol)


def _pair_columns(records: Records, text_column: str | None, pair_column: str | None) -> tuple[str | None, str | None]:
    """The first text's column (None: found as usual) and the second's: `pair_column` as named, else the one
    usual pair of names (sentence1/sentence2, ...) the columns hold; a named text column picks its partner."""
    if pair_column:
        return text_column, pick_column(records, pair_column, (), "pair text", "--text-pair-column")
    lower = {c.strip().lower(): c for c in records.columns}
    found = [(lower[a], lower[b]) for a, b in PAIR_COLUMNS if a in lower and b in lower
             and (text_column is None or lower[a] == text_column)]
    if len(found) > 1:
        raise UserError(f"{records.source}: {len(found)} column pairs could be the texts "
                        f"({'; '.join(f'{a!r} and {b!r}' for a, b in found)}); name them with --text-column and "
                        "--text-pair-column")
    return found[0] if found else (text_column, None)


def check_rows(records: Records, name: str, tcol: str, lcol: str | None, clean: bool,
               optional_labels: bool = False, *, judge_cleaned: bool | None = None, pcol: str | None = None,
               spec: LabelSpec = LabelSpec()) -> tuple[Split, list[SkippedRow]]:
    """The usable rows as a split, and the bad ones (text, or the pair's second text in `pcol`, missing, not
    a string, or with nothing visible, as cleaned if `judge_cleaned` (default: `clean`); label missing unless
    `optional_labels` or the kind allows it, or not what `spec` reads). Texts are kept cleaned if `clean`:
    predict keeps the text as given and lets the model clean it."""
    judged = clean if judge_cleaned is None else judge_cleaned
    texts, labels, where, bad = [], [] if lcol else None, [], []
    pairs = [] if pcol else None
    for row, loc in zip(records.rows, records.where):
        label, kept = None, []
        for column in (tcol, pcol) if pcol else (tcol,):
            text, problem = _checked_text(row.get(column), clean, judged, "pair text" if column == pcol else "text")
            kept.append(text)
            if problem:
                break
        if problem is None and lcol is not None:
            column, raw = lcol, row.get(lcol)
            if _is_missing(raw):
                label, problem = (None, None) if optional_labels else spec.missing()
            else:
                label, problem = spec.read(raw)
        if problem:
            bad.append(SkippedRow(name, records.source, loc, column, problem, repr(row.get(column))[:200]))
            continue
        texts.append(kept[0])
        if pairs is not None:
            pairs.append(kept[1])
        if labels is not None:
            labels.append(label)
        where.append(loc)
    return Split(name, records.source, texts, labels, where, pairs), bad


def _checked_text(text: Any, clean: bool, judged: bool, what: str) -> tuple[Any, str | None]:
    """A text cell as kept (cleaned if `clean`), or why it is unusable; `what` names it in the reason."""
    problem = _text_problem(text)
    if problem is not None:
        return text, problem.replace("text", what, 1)
    cleaned = clean_text(text) if clean or judged else text
    problem = _nothing_visible(cleaned if judged else text, judged and cleaned != text)
    return (cleaned if clean else text), None if problem is None else problem.replace("text", what, 1)


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
