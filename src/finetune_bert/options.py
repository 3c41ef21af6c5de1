"""What every command's config is made of. Each field's `help` becomes its `--help` line; `problems()`
reports every conflict at once, before any data or model is loaded. The fields several commands share are
declared once here (`debug_option`, `overlap_option`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit


def opt(default: Any, help: str, at_least: float | None = None, required: bool = False, *,
        at_most: float | None = None, choices: tuple[str, ...] | None = None, positional: str | None = None,
        aliases: tuple[str, ...] | None = None) -> Any:
    """A config field whose help text, bounds and choices travel with it.

    `at_least`, `at_most` and `choices` are checked by `range_problems` (None values are "not given" and
    pass), so that the Python API and the command line refuse the same values, all at once; `required`
    fields are listed under "required options" in --help and checked by the config's `problems()`.
    `positional`: an argument without a flag, with this argparse nargs ("?" one, "*" any number). `aliases`:
    other flags for the same option, shown first (distill's --student is its --model).
    """
    meta: dict[str, Any] = {"help": help}
    for key, value in (("at_least", at_least), ("at_most", at_most), ("choices", choices),
                       ("positional", positional), ("aliases", aliases)):
        if value is not None:
            meta[key] = value
    if required:
        meta["required"] = True
    return field(default=default, metadata=meta)


def range_problems(cfg: Any, only: type | None = None, skip: type | None = None) -> list[str]:
    """Every numeric field that is not a finite number or is below its `at_least`, and every missing
    required field, each as one line: all of them at once, so the user fixes them in one go. `only` and
    `skip` limit it to the fields a dataclass declares, or to those it does not."""
    found = []
    skipped = {f.name for f in dataclasses.fields(skip)} if skip else set()
    for f in dataclasses.fields(only or cfg):
        if f.name in skipped:
            continue
        value, flag = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
        if f.metadata.get("required") and (value is None or isinstance(value, str) and not value.strip()):
            found.append(f"{flag} is required")
        if isinstance(value, str) and not value.strip() and not f.metadata.get("required") and f.name != "label_names":
            found.append(f"{flag} must not be empty")  # '' would quietly mean "not given", or the current folder
        if isinstance(value, NotANumber):
            found.append(f"{flag} must be {value.kind}, got {value.text!r}")
        elif "choices" in f.metadata and value is not None and value not in f.metadata["choices"]:
            found.append(f"{flag} must be one of {', '.join(f.metadata['choices'])}, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            found.append(f"{flag} must be a finite number, got {value}")
        elif "at_least" in f.metadata and value < f.metadata["at_least"]:
            found.append(f"{flag} must be at least {f.metadata['at_least']}, got {value}")
        elif "at_most" in f.metadata and value > f.metadata["at_most"]:
            found.append(f"{flag} must be at most {f.metadata['at_most']}, got {value}")
    return found


def finite(value: Any) -> bool:
    """A number the further checks can compare; anything else range_problems has reported already."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class NotANumber:
    """What the command line gives for a number it could not read, so that the config reports it with every
    other problem, in one line, instead of argparse stopping at the first."""

    text: str
    kind: str  # "a whole number" or "a number"


def debug_option() -> Any:
    return opt(False, "Show full tracebacks instead of one-line errors.")


def overlap_option() -> Any:
    return opt(True, "Read and tokenize the next chunk of rows in a worker thread while this one is scored "
                     "(--no-overlap: one after the other; the same results).")


def command_line(cfg: Any, *, leave_out: tuple[str, ...] = ()) -> list[str]:
    """A config as the options that give it back on the command line (the fields not at their default, in
    `--name=value` form, so a value that starts with '-' stays a value); `leave_out`: fields not passed on. The
    processes a launcher starts get the command the user typed, checked, this way."""
    argv: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in leave_out or value == f.default:
            continue
        if "positional" in f.metadata or value is None:  # no `--name=value` gives these back
            raise ValueError(f"command_line: {f.name}={value!r} has no --name=value form")
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        else:
            argv.append(f"{flag}={value}")
    return argv
