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
from pathlib import Path
from typing import Any

from finetune_bert.console import console
from finetune_bert.data.prepared import Prepared
from finetune_bert.training.train import run_training


def confirm_seeds(cfg, study, space, base, prepared: Prepared, folder: Path) -> dict[str, Any] | None:
    """{"seeds": [...], "best": summary, "default": summary, "gain": ...}; None without a completed trial."""
    completed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not completed:
        return None
    configs = {"best": dict(study.best_trial.params), "default": {d.name: getattr(base, d.name) for d in space}}
    seeds = [cfg.seed + i + 1 for i in range(cfg.confirm_seeds)]  # never the search's own seed
    done: dict[str, Any] = dict(study.user_attrs.get("confirm", {}))
    keys = {label: {seed: f"{seed}/{json.dumps(params, sort_keys=True)}" for seed in seeds}
            for label, params in configs.items()}  # by parameters: a continued search may find another best
    for label, params in configs.items():
        for seed in seeds:
            key = keys[label][seed]
            if key not in done:
                done[key] = _one_run(cfg, base, prepared, folder / "confirm" / f"{label}-seed{seed}", seed, params)
                study.set_user_attr("confirm", done)
                console.say(f"confirm {label} configuration, seed {seed}: validation {cfg.metric} {done[key]['validation']:.4f}"
                    + (f", test {done[key]['test']:.4f}" if done[key]["test"] is not None else ""))
    out = {"seeds": seeds, "metric": cfg.metric, "params": configs}
    for label in configs:
        runs = [done[keys[label][s]] for s in seeds]
        out[label] = {split: _spread([r[split] for r in runs]) for split in ("validation", "test")}
    out["gain"] = {split: _gain(out["best"][split], out["default"][split]) for split in ("validation", "test")}
    return out


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
