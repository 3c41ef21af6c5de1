"""Dataclass configs as argparse options: each field's `help` is its --help line."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, NoReturn

from finetune_bert.console import console
from finetune_bert.errors import UserError
from finetune_bert.options import NotANumber


class Parser(argparse.ArgumentParser):
    """argparse, held to the tool's rules: a problem is one line and exit 2, never the usage block; no
    abbreviated options (`--ov` must not mean --overwrite); '-1e-5' and '-inf' are numbers, not options."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER  # argparse's own misses exponents and inf

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("finetune-bert").strip()
        console.error(f"{message} (see finetune-bert {command + ' ' if command else ''}--help)", name_rank=False)
        raise SystemExit(2)


NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


def number(kind: type) -> Callable[[str], Any]:
    """A type for argparse that never fails: what it cannot read becomes a NotANumber, which the config
    reports together with every other problem."""
    def read(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            return NotANumber(text, "a whole number" if kind is int else "a number")
    read.__name__ = kind.__name__
    return read


def add_config_options(parser: argparse.ArgumentParser, cls) -> None:
    """One option per field of the config dataclass `cls` (an argument without a flag where it is
    `positional`); the usage line names the required ones."""
    required = parser.add_argument_group("required options")
    names = []
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        if "positional" in f.metadata:
            nargs = f.metadata["positional"]
            parser.add_argument(f.name, nargs=nargs, help=help_text, default=[] if nargs == "*" else None)
            names.append(f.name if nargs != "*" else f"[{f.name} ...]")
            continue
        group = required if f.metadata.get("required") else parser
        if f.metadata.get("required"):
            names.append(f"{flag} {f.name.upper()}")
        if isinstance(f.default, bool):
            # Only options that are on by default get a --no- form: --no-debug would mean nothing.
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            group.add_argument(flag, dest=f.name, action=action, default=f.default, help=help_text)
            continue
        choices = f.metadata.get("choices")
        default = "" if f.default is None else f" (default: {f.default})"
        # Bounds and choices are checked by the config's problems(), all at once, not by argparse.
        group.add_argument(*option_flags(f), dest=f.name, type=arg_type(f), default=f.default,
                           help=help_text + default, metavar="{" + ",".join(choices) + "}" if choices else None)
    parser.usage = f"{parser.prog} {' '.join(names)} [options]".replace("  ", " ")


def option_flags(f: dataclasses.Field) -> list[str]:
    """The flags of a field's option: its aliases, then its own name's."""
    return [*f.metadata.get("aliases", ()), "--" + f.name.replace("_", "-")]


def arg_type(f: dataclasses.Field) -> Callable[[str], Any]:
    """The argparse type from the field's declared type ("float", "int | None", "str", ...)."""
    declared = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    base = declared.split("|")[0].strip()
    return {"float": number(float), "int": number(int)}.get(base, str)


def repeated(argv: list[str]) -> list[str]:
    """Options given more than once: argparse keeps the last silently, and '--output a --output b' is a typo."""
    # --clean and --no-clean are one option: given both, the last would win silently.
    flags = ["--" + a.split("=", 1)[0].removeprefix("--").removeprefix("no-")
             for a in itertools.takewhile(lambda a: a != "--", argv) if a.startswith("--")]
    return sorted({f for f in flags if flags.count(f) > 1 and f not in ("--help", "--version")})


def config_from_file(cls, path: str, given: dict[str, Any]):
    """`--config FILE`: the options a JSON file holds (as run_config.json or tune's best_config.json hold them),
    then `given`, the options named on the command line, over them. Each value must have its option's own JSON
    type (no `"lr": true` read as 1.0, no `"clean": "no"` read as on), and a problem in a value from the file
    names the file. A command with an output folder takes it from the command line only: a config file written
    by a run names that run's folder, and training into it again would replace that run."""
    try:
        payload = json.loads(Path(path).expanduser().read_text(encoding="utf-8"), object_pairs_hook=_no_repeats)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"--config {path}: cannot be read as JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise UserError(f"--config {path}: expected a JSON object of {cls.__name__} options")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if unknown := sorted(set(payload) - set(fields)):
        raise UserError(f"--config {path}: unknown option(s) {', '.join(unknown)}")
    if "output" in fields and "output" not in given:
        raise UserError(f"--config {path}: give --output DIR on the command line; with --config, the folder to "
                        "write into is never taken from the file")
    hints = typing.get_type_hints(cls)
    if wrong := [problem for key, value in payload.items() if (problem := type_problem(key, value, hints[key]))]:
        raise UserError(f"--config {path}: " + "; ".join(wrong))
    payload = {k: tuple(v) if isinstance(v, list) else v for k, v in payload.items()}
    cfg = cls(**{**payload, **given})
    from_file = {"--" + k.replace("_", "-") for k in set(payload) - set(given)}
    problems = cfg.problems() if hasattr(cfg, "problems") else []
    if any(p.split(" ", 1)[0] in from_file for p in problems):
        raise UserError("; ".join(f"--config {path}: {p}" if p.split(" ", 1)[0] in from_file else p for p in problems))
    return cfg


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each given once: json keeps the last of a repeated key silently."""
    keys = [k for k, _ in pairs]
    if twice := sorted({k for k in keys if keys.count(k) > 1}):
        raise ValueError(f"{', '.join(map(repr, twice))} given more than once")
    return dict(pairs)


JSON_TYPES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def type_problem(key: str, value: Any, hint: Any) -> str | None:
    """What is wrong with a JSON `value` for a field typed `hint` (bool, int, float, str, tuple, each maybe
    `| None`), or None. Strict: a bool is not a number, 1.0 is not a whole number, "3" is not a number."""
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    nullable = type(None) in kinds
    kinds = tuple(k for k in kinds if k is not type(None))
    if value is None:
        return None if nullable else f"{key!r} must be {_wanted(kinds)}, got null"
    for kind in kinds:
        if kind is bool and isinstance(value, bool):
            return None
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return None
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return None if math.isfinite(value) else f"{key!r} must be a finite number, got {json.dumps(value)}"
        if kind is str and isinstance(value, str):
            return None
        if typing.get_origin(kind) in (tuple, list) and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return None
        if kind not in JSON_TYPES and typing.get_origin(kind) not in (tuple, list):
            return None  # a type no JSON value maps to plainly: the config's own checks judge it
    got = json.dumps(value)
    return f"{key!r} must be {_wanted(kinds)}{' or null' if nullable else ''}, got {got if len(got) <= 40 else got[:37] + '...'}"


def _wanted(kinds: tuple) -> str:
    return " or ".join(JSON_TYPES.get(k, "a list of strings") for k in kinds)
