"""Honesty about a search's gain: the best and the default configuration, each retrained with K fresh seeds.

A search picks the best of N trials on one seed, so its best validation score is biased upward (the winner
of N draws); Dodge et al. 2020 show seeds alone move BERT fine-tuning a lot. Retraining both configurations
with seeds the search never used, on the same validation split, gives each a mean and a spread; the gain is
reported with both, never as one lucky number. Each finished run is recorded in the study, so a rerun after a
crash does only the runs still missing.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from finetune_bert.console import console
from finetune_bert.data.prepared import Prepared
from finetune_bert.training.train import run_training


def confirm_seeds(cfg, study, space, base, prepared: Prepared, folder: Path, *,
                  started: float | None = None) -> dict[str, Any] | None:
    """{"seeds": [...], "best": summary, "default": summary, "gain": ...}; None without a completed trial. No
    training starts once --timeout seconds have passed since `started` (as no trial does): the runs skipped are
    listed under "skipped", and a rerun does them."""
    completed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not completed:
        return None
    configs = {"best": dict(study.best_trial.params), "default": {d.name: getattr(base, d.name) for d in space}}
    seeds = [cfg.seed + i + 1 for i in range(cfg.confirm_seeds)]  # never the search's own seed
    done: dict[str, Any] = dict(study.user_attrs.get("confirm", {}))
    keys = {label: {seed: f"{seed}/{json.dumps(params, sort_keys=True)}" for seed in seeds}
            for label, params in configs.items()}  # by parameters: a continued search may find another best
    todo = {keys[label][seed]: (label, seed) for label in configs for seed in seeds if keys[label][seed] not in done}
    if todo:
        eta = sum(_estimate(completed, configs[label], base) for label, _ in todo.values())
        console.say(f"confirm phase: {len(todo)} trainings, the best and the default configuration with "
                    f"{_seeds(seeds)} each" + (f", about {_duration(eta)} by the trials' times" if eta else ""))
    skipped = []
    for n, (key, (label, seed)) in enumerate(todo.items()):
        if cfg.timeout is not None and started is not None and time.time() - started > cfg.timeout:
            skipped = list(todo.values())[n:]
            break
        done[key] = _one_run(cfg, base, prepared, folder / "confirm" / f"{label}-seed{seed}", seed, configs[label])
        study.set_user_attr("confirm", done)
        console.say(f"confirm {label} configuration, seed {seed}: validation {cfg.metric} {done[key]['validation']:.4f}"
                    + (f", test {done[key]['test']:.4f}" if done[key]["test"] is not None else "")
                    + f" [{n + 1}/{len(todo)}]")
    out: dict[str, Any] = {"seeds": seeds, "metric": cfg.metric, "params": configs}
    if skipped:
        console.say(f"--timeout {cfg.timeout:g} s reached: {len(skipped)} of {len(todo)} confirm trainings skipped ("
                    + ", ".join(f"{label} seed {seed}" for label, seed in skipped)
                    + "), so the gain is not measured; run the same command again to finish them")
        return {**out, "skipped": [f"{label}-seed{seed}" for label, seed in skipped],
                "best": None, "default": None, "gain": None}
    for label in configs:
        runs = [done[keys[label][s]] for s in seeds]
        out[label] = {split: _spread([r[split] for r in runs]) for split in ("validation", "test")}
    out["gain"] = {split: _gain(out["best"][split], out["default"][split]) for split in ("validation", "test")}
    _say_verdict(out)
    return out


def _say_verdict(out: dict[str, Any]) -> None:
    """The confirmation's result on the terminal, as tune_report.md has it."""
    for split in ("validation", "test"):
        if out["gain"][split] is not None:
            console.say(f"gain of the best over the default configuration, {split} {out['metric']}: "
                        f"{verdict(out['gain'][split])} (best {_cell(out['best'][split])}, default "
                        f"{_cell(out['default'][split])}, {_seeds(out['seeds'])})")


def _seeds(seeds: list[int]) -> str:
    return f"{len(seeds)} fresh seed{'s' if len(seeds) > 1 else ''}"


def verdict(gain: dict[str, Any]) -> str:
    """The gain, the larger seed std of the two, and which is larger: "+0.0060 ± 0.0040, within the seed spread"."""
    if gain["spread"] is None:
        return f"{gain['mean']:+.4f}, with one seed: no spread to judge it by"
    return (f"{gain['mean']:+.4f} ± {gain['spread']:.4f}, "
            f"{'beyond' if gain['beyond_spread'] else 'within'} the seed spread")


def _cell(summary: dict[str, Any]) -> str:
    return f"{summary['mean']:.4f} ± {summary['std']:.4f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _estimate(completed, params: dict[str, Any], base) -> float:
    """Seconds one training of `params` should take: the completed trials' seconds per epoch, times its epochs."""
    rates = [t.user_attrs["seconds"] / t.params.get("epochs", base.epochs) for t in completed
             if t.user_attrs.get("seconds") and t.params.get("epochs", base.epochs)]
    return statistics.fmean(rates) * params.get("epochs", base.epochs) if rates else 0.0


def _one_run(cfg, base, prepared: Prepared, out: Path, seed: int, params: dict[str, Any]) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)  # a confirm run cut short starts again: it is one run, not a study
    run = dataclasses.replace(base, output=str(out), seed=seed, resume=False, overwrite=False, **params)
    with console.quiet():
        result = run_training(run, prepared)
    shutil.rmtree(out, ignore_errors=True)  # only its numbers are kept
    test = result.metrics.get("test")
    return {"validation": result.metrics["validation"][cfg.metric], "test": None if test is None else test[cfg.metric]}


def _spread(values: list[float | None]) -> dict[str, float] | None:
    if not values or any(v is None for v in values):
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def _gain(best: dict | None, default: dict | None) -> dict[str, Any] | None:
    """The difference of the means, and whether it exceeds the larger seed spread of the two."""
    if best is None or default is None:
        return None
    gain = best["mean"] - default["mean"]
    if len(best["values"]) < 2:  # one seed measures no spread: nothing to compare the gain with
        return {"mean": gain, "spread": None, "beyond_spread": None}
    spread = max(best["std"], default["std"])
    return {"mean": gain, "spread": spread, "beyond_spread": abs(gain) > spread}
