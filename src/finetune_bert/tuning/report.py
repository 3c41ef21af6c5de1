"""What a study leaves for people and programs: trials.csv, best_config.json, three PNG plots and
tune_report.md, all rewritten (atomically) at the end of every `tune` run from the study itself."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_bert.evaluation.metrics import greater_is_better
from finetune_bert.console import console
from finetune_bert.safefiles import atomic_output, write_text_atomic

PLOTS = {"history.png": "plot_optimization_history", "intermediate.png": "plot_intermediate_values",
         "importance.png": "plot_param_importances"}


def trial_rows(study, space) -> list[dict[str, Any]]:
    """One row a trial: number, state, value, parameters, metric by evaluation, time, steps, retries."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        steps = t.user_attrs.get("steps") or [None, None]
        state = "surplus" if t.user_attrs.get("surplus") else t.state.name.lower()
        rows.append({"number": t.number, "state": state, "value": t.value,
                     **{d.name: t.params.get(d.name) for d in space},
                     "evaluations": json.dumps([t.intermediate_values[k] for k in sorted(t.intermediate_values)]),
                     "seconds": t.user_attrs.get("seconds"), "steps_done": steps[0], "steps_planned": steps[1],
                     "retry_of": t.system_attrs.get("failed_trial"), "failure": t.user_attrs.get("failure")})
    return rows


def pruning_savings(rows: list[dict[str, Any]], base, space) -> dict[str, Any]:
    """Pruned trials, and the share of training examples they did not need: examples a trial would have seen
    had it run to the end (steps x batch x accumulation), against all examples the search planned."""
    names = {d.name for d in space}

    def examples(row: dict[str, Any], key: str) -> int:
        batch = row["batch_size"] if "batch_size" in names else base.batch_size
        accum = row["grad_accum"] if "grad_accum" in names else base.grad_accum
        return (row[key] or 0) * (batch or 0) * (accum or 1)

    ran = [r for r in rows if r["state"] in ("complete", "pruned") and r["steps_planned"]]
    planned = sum(examples(r, "steps_planned") for r in ran)
    saved = sum(examples(r, "steps_planned") - examples(r, "steps_done") for r in ran if r["state"] == "pruned")
    return {"pruned": sum(r["state"] == "pruned" for r in rows), "saved_fraction": saved / planned if planned else 0.0}


@dataclass
class TuneResult:
    output: str
    best_value: float
    best_params: dict[str, Any]
    completed: int
    pruned: int
    confirm: dict[str, Any] | None


def write_outputs(cfg, study, space, folder: Path, confirm: dict[str, Any] | None, seconds: float) -> TuneResult:
    rows = trial_rows(study, space)
    _write_csv(folder / "trials.csv", rows)
    complete = [r for r in rows if r["state"] == "complete"]
    if not complete:
        console.say(f"no trial has completed yet; run the same command again to continue (trials in {folder / 'trials.csv'})")
        return TuneResult(str(folder), float("nan"), {}, 0, sum(r["state"] == "pruned" for r in rows), confirm)
    best = study.best_trial
    # No output: `train --config` takes it from the command line, so that a rerun never trains into the study.
    rerun = {k: v for k, v in cfg.train_config(**best.params, resume=False, overwrite=False).to_json().items()
             if k != "output"}
    write_text_atomic(folder / "best_config.json", json.dumps(rerun, indent=2) + "\n")
    plots = _plots(study, folder)
    savings = pruning_savings(rows, cfg, space)
    elsewhere = model_elsewhere(best, folder)
    write_text_atomic(folder / "tune_report.md", _report(cfg, best, rows, savings=savings, confirm=confirm,
                                                             plots=plots, seconds=seconds, elsewhere=elsewhere))
    console.say(f"best trial {best.number}: validation {cfg.metric} {best.value:.4f} with "
        + ", ".join(f"{k} {short(v)}" for k, v in best.params.items())
        + f"; model in {elsewhere or folder / 'best'}" + (", kept by the process that ran it" if elsewhere else "")
        + f", report in {folder / 'tune_report.md'}")
    return TuneResult(str(folder), best.value, dict(best.params), len(complete), savings["pruned"], confirm)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def _plots(study, folder: Path) -> list[str]:
    """The static plots Optuna draws with matplotlib (offline); one it cannot draw yet (importance needs two
    completed trials with different values) is left out and said."""
    import warnings

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as draw

    made = []
    for name, function in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = getattr(draw, function)(study)
            if name == "intermediate.png":
                axes.set_xlabel("evaluation (the trial's first, second, ...)")  # what tune reports as the step
            figure = getattr(axes, "figure", None) or axes.flat[0].figure
            figure.set_size_inches(8, 5)
            with atomic_output(folder / name, "wb") as handle:  # several processes of one study may draw at once
                figure.savefig(handle, format="png", dpi=100, bbox_inches="tight")
            plt.close(figure)
            made.append(name)
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as exc:
            console.say(f"note: {name} not drawn ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})")
    return made


def model_elsewhere(best, folder: Path) -> str | None:
    """Where the best trial's model is when this folder's best/ does not hold it (None when it does): a
    study shared through --storage keeps each model in the best/ of the --output that ran it, perhaps on
    another machine."""
    record = folder / "best.json"
    held = json.loads(record.read_text()) if record.is_file() else None
    if held is not None and (held["trial"] == best.number or held["value"] == best.value):  # a tie: as good
        return None
    host, kept = (best.user_attrs.get("owner") or {}).get("host"), best.user_attrs.get("kept_in")
    if host and kept:
        return f"{host}:{kept}"  # as scp and rsync name it
    return "the best/ of the --output that ran it" + (f", on {host}" if host else "")


def _report(cfg, best, rows, *, savings, confirm, plots, seconds, elsewhere=None) -> str:
    states = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail", "surplus")}
    lines = ["# Hyperparameter search", "",
             f"Objective: validation {cfg.metric} ({'higher' if greater_is_better(cfg.metric) else 'lower'} is better); "
             f"the test set is never used to choose. {states['complete']} trials completed, {states['pruned']} pruned "
             f"(they saved {100 * savings['saved_fraction']:.0f}% of the training examples planned), {states['fail']} failed"
             + (f", {states['surplus']} surplus" if states["surplus"] else "") + f"; this run took {seconds:.0f} s.", "",
             f"Best: trial {best.number}, validation {cfg.metric} **{best.value:.4f}**, with "
             + ", ".join(f"`{k}` {short(v)}" for k, v in best.params.items()) + ". Its model is "
             + (f"`{elsewhere}`, kept by the process that ran it (this folder's `best/` holds the best trial run "
                "with this --output, if one completed); " if elsewhere else "`best/`; ")
             + "`finetune-bert train --config best_config.json --output NEW` trains it again (same data, seed and options).", ""]
    if confirm:
        lines += _confirm_table(confirm)
    lines += ["| trial | state | value | " + " | ".join(k for k in best.params) + " | seconds |",
              "| --- | --- | --- | " + " | ".join("---" for _ in best.params) + " | --- |"]
    for r in rows:
        value = "" if r["value"] is None else f"{r['value']:.4f}"
        lines.append(f"| {r['number']} | {r['state']} | {value} | " + " | ".join(short(r.get(k)) for k in best.params)
                     + f" | {r['seconds'] or ''} |")
    lines += [""] + [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def _confirm_table(confirm: dict[str, Any]) -> list[str]:
    metric, seeds = confirm["metric"], confirm["seeds"]
    lines = [f"## Gain, over {len(seeds)} fresh seeds ({', '.join(map(str, seeds))})", ""]
    if confirm.get("skipped"):
        return lines + [f"Not measured yet: --timeout stopped the confirmation before {len(confirm['skipped'])} of its "
                        f"trainings ({', '.join(confirm['skipped'])}); run the same command again to finish them.", ""]
    lines += [f"| configuration | validation {metric} | test {metric} |", "| --- | --- | --- |"]

    def cell(s):
        return "n/a" if s is None else f"{s['mean']:.4f} ± {s['std']:.4f}"
    for label in ("best", "default"):
        lines.append(f"| {label} | {cell(confirm[label]['validation'])} | {cell(confirm[label]['test'])} |")
    for split in ("validation", "test"):
        g = confirm["gain"][split]
        if g is not None and g["spread"] is None:
            lines.append(f"\n{split.capitalize()} gain: {g['mean']:+.4f}, with one seed: no spread to judge it by.")
        elif g is not None:
            verdict = "beyond" if g["beyond_spread"] else "within"
            lines.append(f"\n{split.capitalize()} gain: {g['mean']:+.4f}, {verdict} the seed spread (std up to "
                         f"{g['spread']:.4f}).")
    return lines + [""]


def short(value: Any) -> str:
    """A parameter's value as the progress lines and the report print it (floats to 4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
