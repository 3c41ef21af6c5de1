"""Dataclass configs as argparse options: each field's `help` is its --help line."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import re
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
        group.add_argument(flag, dest=f.name, type=arg_type(f), default=f.default, help=help_text + default,
                           metavar="{" + ",".join(choices) + "}" if choices else None)
    parser.usage = f"{parser.prog} {' '.join(names)} [options]".replace("  ", " ")


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
    then `given`, the options named on the command line, over them."""
    try:
        payload = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"--config {path}: cannot be read as JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise UserError(f"--config {path}: expected a JSON object of {cls.__name__} options")
    if unknown := sorted(set(payload) - {f.name for f in dataclasses.fields(cls)}):
        raise UserError(f"--config {path}: unknown option(s) {', '.join(unknown)}")
    return cls(**{**payload, **given})
