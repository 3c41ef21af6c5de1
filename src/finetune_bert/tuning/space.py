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
Every problem in it is reported at once, each naming its entry, before anything runs; each entry's bounds and
choices must also be values `train` accepts (the same `TrainConfig.problems()`), so that no trial trains, and
no best_config.json records, what `train` would refuse.

`FreshSampler` draws the trials: TPE, seeded afresh for each trial from (--seed, trial number).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, TPESampler

from finetune_bert.errors import UserError, refuse

# What may be searched: the options that change training but not the data or its tokens, so a study reads
# and tokenizes the data once. Each with its type, and the least value the option accepts.
SEARCHABLE: dict[str, tuple[type, float | None]] = {
    "lr": (float, 0.0), "batch_size": (int, 1), "epochs": (float, 0.0), "warmup_ratio": (float, 0.0),
    "weight_decay": (float, 0.0), "grad_accum": (int, 1), "max_grad_norm": (float, 0.0),
    "lora_rank": (int, 1), "lora_alpha": (float, 0.0), "lora_dropout": (float, 0.0),
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
        if self.whole():
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def whole(self) -> bool:
        """A range of whole numbers: an int option, or both ends written as integers."""
        return SEARCHABLE[self.name][0] is int or (isinstance(self.low, int) and isinstance(self.high, int))

    def distribution(self) -> BaseDistribution:
        """What `suggest` asks Optuna for, as Optuna records it."""
        if self.choices is not None:
            return CategoricalDistribution(list(self.choices))
        if self.whole():
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)

    def extremes(self) -> dict[str, Any]:
        """The values a trial can take that train's rules could refuse: every choice, or both ends of the range
        (train's rules on these options are bounds, so a range whose ends pass passes whole)."""
        if self.choices is not None:
            return {f"choice {c!r}": c for c in self.choices}
        cast = int if self.whole() else float
        return {f"low {self.low!r}": cast(self.low), f"high {self.high!r}": cast(self.high)}

    def to_json(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, **({"log": True} if self.log else {})}


DEFAULT_SPACE = (Dimension("lr", 1e-5, 1e-4, log=True), Dimension("batch_size", choices=(16, 32)),
                 Dimension("epochs", 2, 4), Dimension("warmup_ratio", choices=(0.0, 0.06, 0.1)),
                 Dimension("weight_decay", choices=(0.0, 0.01, 0.1)))
# With --lora: learning rates ten times larger (the adapters start from zero; the LoRA paper's GLUE runs used
# 2e-4-5e-4 on RoBERTa-base), and the adapters' rank and scale (its ablation found ranks 4-16 alike)
LORA_SPACE = (Dimension("lr", 1e-4, 1e-3, log=True), *DEFAULT_SPACE[1:], Dimension("lora_rank", choices=(4, 8, 16)),
              Dimension("lora_alpha", choices=(8.0, 16.0, 32.0)))


def space_json(space: tuple[Dimension, ...]) -> dict[str, Any]:
    return {d.name: d.to_json() for d in space}


def read_space(path: str | None, base=None) -> tuple[Dimension, ...]:
    """The default space, or the one in `path`, checked entry by entry; with `base` (the train options every
    trial shares, a TrainConfig), also checked against train's own rules."""
    if path is None:
        return LORA_SPACE if getattr(base, "lora", False) else DEFAULT_SPACE
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
    if base is not None:
        problems += train_problems(tuple(space), base, f"--space {path}")
    refuse(problems)
    return tuple(space)


def train_problems(space: tuple[Dimension, ...], base, where: str) -> list[str]:
    """What `train` would refuse in a trial of this space: a TrainConfig made at each dimension's extremes, and
    the problems it has that `base` has not (`base` was checked; the same rules, not a copy of them)."""
    known = set(base.problems())
    found = []
    for d in space:
        for label, value in d.extremes().items():
            trial = dataclasses.replace(base, **{d.name: value})
            found += [f"{where}: entry {d.name!r}: {label}: {p}" for p in trial.problems() if p not in known]
    return found


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


def space_size(space: tuple[Dimension, ...]) -> int | None:
    """How many distinct trials the space holds; None when a float range makes it endless."""
    grids = [_points(d.distribution()) for d in space]
    return None if any(g is None for g in grids) else math.prod(len(g) for g in grids)


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial `number` of a study searched with --seed `seed` (numpy's mixing of the pair)."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class FreshSampler(BaseSampler):
    """Optuna's TPE, seeded afresh for each trial from (seed, trial number), that proposes no point the study
    has tried while an untried one is left.

    A sampler seeded once at each start replays its sequence after every restart, and two processes on one
    study draw the same points in step: a study cut short once evaluated each configuration twice. Trial
    numbers are unique within a study, across processes and restarts, so seeds made from them are; a study run
    from start to end in one process still draws the same trials every time."""

    def __init__(self, space: tuple[Dimension, ...], seed: int):
        self.space = {d.name: d.distribution() for d in space if not d.distribution().single()}
        self.seed = seed
        self._tpe = TPESampler(seed=seed)

    def before_trial(self, study, trial) -> None:
        self._tpe = TPESampler(seed=trial_seed(self.seed, trial.number))
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return dict(self.space)  # the whole point drawn at once, so that it can be compared with those tried

    def sample_relative(self, study, trial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        names = sorted(search_space)
        tried = {tuple(t.params.get(n) for n in names) for t in study.get_trials(deepcopy=False)
                 if t.number != trial.number and t.params}
        for _ in range(10):  # TPE's own preference first: a few draws of its
            params = self._draw(study, trial, search_space)
            if tuple(params[n] for n in names) not in tried:
                return params
        grids = [_points(search_space[n]) for n in names]
        if any(g is None for g in grids) or math.prod(len(g) for g in grids) > 100_000:
            return params
        left = [p for p in itertools.product(*grids) if p not in tried]
        if not left:  # every point tried: the space is smaller than --trials (tune said so)
            return params
        pick = np.random.RandomState(trial_seed(self.seed, trial.number)).randint(len(left))
        return dict(zip(names, left[pick]))

    def _draw(self, study, trial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        params = self._tpe.sample_relative(study, trial, search_space)  # {} until TPE's startup trials are done
        return {n: params[n] if n in params else self._tpe.sample_independent(study, trial, n, d)
                for n, d in search_space.items()}

    def sample_independent(self, study, trial, param_name: str, param_distribution: BaseDistribution) -> Any:
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        pass  # the seed of each trial is fixed by its number; nothing to reseed


def _points(distribution: BaseDistribution) -> list | None:
    """Every value a distribution holds, or None for a float range (or an integer one too long to list)."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution) and distribution.high - distribution.low < 100_000:
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    if distribution.single():
        return [distribution.low]
    return None
