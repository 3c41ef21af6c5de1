"""Any scikit-learn classification or regression metric by name, for `--metric`: which names are accepted,
what each is called in a metrics dict, which way is better, and its value from the outputs a kind's metrics
already hold.

The names a user types are scikit-learn's: a function of sklearn.metrics with or without `_score`
(`balanced_accuracy_score`, `balanced_accuracy`) and its scorer names (`get_scorer_names()`: `f1_weighted`,
`roc_auc_ovr`, `neg_mean_absolute_error`). Each becomes one canonical name, the key of its value: `_score`
dropped, and a `neg_` scorer named after its function and lower-is-better (`neg_log_loss` is `log_loss`), so a
number is never shown negated. Where scikit-learn computes what this tool already reports, the name is that
metric (`mean_absolute_error` is `mae`, `root_mean_squared_error` is `rmse`), one value under one key.

Which way is better comes from scikit-learn: a scorer's sign (greater_is_better), and for a function with no
scorer its name (`*_loss`, `*_error`, `*_deviance` are lower-is-better). Whether it fits a task kind comes from
the module that defines it (`_classification`, `_ranking`: classification and multi-label; `_regression`) and
from a dry run on a few made-up outputs of that kind's shape: what scikit-learn refuses (a binary-only metric
on three classes, a ranking metric on single labels) is refused in one line before any model is loaded.

What a metric is given (see docs/metrics.md): the true labels, and either the decisions (the predicted class;
multi-label, the label-indicator matrix at the decision thresholds; regression, the predictions in the targets'
units) or, for a metric that reads scores (a scorer's predict_proba/decision_function, a function's `y_score`,
`y_proba`, `pred_decision`), the probabilities: the positive class's for two classes, else one column per class
(with `labels=` every class, where the function takes it), and one sigmoid per label. An `average` whose
default is 'binary' (f1, precision, recall, jaccard) becomes 'macro' beyond binary classification.

Numpy and the standard library only: the command line's configs check names without importing torch, and
scikit-learn is imported only for a name that is not this tool's own."""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from finetune_bert.errors import UserError
from finetune_bert.tasks import CLASSIFICATION, LOWER_IS_BETTER, METRICS, MULTI_LABEL, REGRESSION, TASKS

FAMILIES = {"sklearn.metrics._classification": CLASSIFICATION, "sklearn.metrics._ranking": CLASSIFICATION,
            "sklearn.metrics._scorer": CLASSIFICATION, "sklearn.metrics._regression": REGRESSION}
# second parameters of the functions that read scores (probabilities) rather than decisions
SCORE_PARAMETERS = ("y_score", "y_proba", "y_prob", "pred_decision")
# what returns curves, tables or several numbers, not one score
NOT_ONE_NUMBER = ("_curve", "_report", "_matrix", "_support", "_at_thresholds", "class_likelihood_ratios")
LOWER_SUFFIXES = ("_loss", "_error", "_deviance")
# scikit-learn's names of metrics this tool reports under its own
OURS = {"mean_absolute_error": "mae", "root_mean_squared_error": "rmse"}
BUILT_IN = frozenset(m for kind in TASKS for m in METRICS[kind])


@dataclass(frozen=True)
class Named:
    """One scikit-learn metric: `name` is its key in a metrics dict."""

    name: str
    function: Callable[..., Any]
    kwargs: tuple[tuple[str, Any], ...]
    scores: bool  # reads probabilities rather than decisions
    greater_is_better: bool
    family: str  # CLASSIFICATION (which serves multi-label too) or REGRESSION


def _strip(name: str) -> str:
    return OURS.get(name, name.removesuffix("_score"))


def _functions(metrics) -> dict[str, Named]:
    """sklearn.metrics' functions of one true and one predicted array that give one number."""
    found = {}
    for name in metrics.__all__:
        function = getattr(metrics, name)
        family = FAMILIES.get(getattr(function, "__module__", ""))
        if family is None or not inspect.isfunction(function) or any(s in name for s in NOT_ONE_NUMBER):
            continue
        params = list(inspect.signature(function).parameters)
        if len(params) >= 2 and params[0] in ("y_true", "y1"):
            found[name] = Named(_strip(name), function, (), params[1] in SCORE_PARAMETERS,
                                not name.endswith(LOWER_SUFFIXES), family)
    return found


@functools.lru_cache(maxsize=1)
def catalogue() -> tuple[dict[str, Named], dict[str, str]]:
    """Every metric by canonical name, and every name a user may type -> its canonical name."""
    import sklearn.metrics as metrics

    functions = _functions(metrics)
    found = {m.name: m for m in functions.values()}
    typed = {**{name: m.name for name, m in functions.items()}, **{m.name: m.name for m in functions.values()}}
    for name in metrics.get_scorer_names():
        scorer = metrics.get_scorer(name)
        function = getattr(scorer, "_score_func", None)
        if FAMILIES.get(getattr(function, "__module__", "")) is None:
            continue  # clustering
        key = _strip(function.__name__) if name.startswith("neg_") else _strip(name)
        # a scorer's own settings: its keyword arguments, what it reads (predict: decisions), its sign
        found[key] = Named(key, function, tuple(sorted(getattr(scorer, "_kwargs", {}).items())),
                           getattr(scorer, "_response_method", "predict") != "predict",
                           getattr(scorer, "_sign", 1) > 0, FAMILIES[function.__module__])
        typed[name] = typed[key] = key
    return found, typed


def canonical(name: str) -> str:
    """The key a typed name's value has (the name itself when unknown, for `problems` to say so)."""
    if name in BUILT_IN:
        return name
    typed = catalogue()[1]
    return typed.get(name, typed.get(name.removesuffix("_score"), name))


def lookup(name: str | None, task: str) -> Named | None:
    """The scikit-learn metric to add to `task`'s metrics, or None (none asked, or one the kind reports)."""
    if name is None or name in METRICS.get(task, ()) or canonical(name) in METRICS.get(task, ()):
        return None
    return catalogue()[0].get(canonical(name))


def greater_is_better(name: str) -> bool:
    if name in BUILT_IN:
        return name not in LOWER_IS_BETTER
    named = catalogue()[0].get(canonical(name))
    return named is None or named.greater_is_better


def _family(task: str) -> str:
    return REGRESSION if task == REGRESSION else CLASSIFICATION


@functools.lru_cache(maxsize=None)
def valid_names(task: str) -> list[str]:
    """The canonical names that may score `task`, the kind's own first (each tried on made-up outputs)."""
    return [*METRICS[task], *sorted(n for n, m in catalogue()[0].items() if m.family == _family(task)
                                    and n not in METRICS[task] and any(dry_run(m, task, k) is None
                                                                       for k in _sizes(task)))]


def _sizes(task: str) -> tuple[int, ...]:
    """The classes (two, or more) or labels of the made-up outputs a metric is tried on before data is read."""
    return (2, 3) if task == CLASSIFICATION else (3,)


def problems(name: str | None, task: str) -> list[str]:
    """Before any data is read: a name that is unknown (the closest first, then every valid one), that scores
    another kind, or that scikit-learn refuses on outputs of this kind's shape."""
    if name is None or task not in METRICS or canonical(name) in METRICS[task]:
        return []
    named = catalogue()[0].get(canonical(name))
    owners = [t for t in TASKS if canonical(name) in METRICS[t]] or ([named.family] if named else [])
    if not owners:
        return [_unknown(name, task)]
    if named is None or named.family != _family(task):
        return [f"--metric {name} scores {' and '.join(owners)}, not {task}; for {task}: "
                f"{', '.join(METRICS[task])}, or a scikit-learn {_family(task)} metric by name"]
    refusals = [dry_run(named, task, k) for k in _sizes(task)]
    return [f"--metric {name} does not score {task}: {refusals[-1]}"] if all(refusals) else []


def _unknown(name: str, task: str) -> str:
    fitting, typed = valid_names(task), catalogue()[1]
    close = difflib.get_close_matches(name, fitting + [t for t, key in typed.items() if key in fitting], n=6,
                                      cutoff=0.6)
    close = list(dict.fromkeys(typed.get(t, t) for t in close))
    rest = [n for n in fitting if n not in close]
    return (f"--metric {name} is not a {task} metric" + (f"; closest: {', '.join(close)}" if close else "")
            + f"; valid: {', '.join(rest)} (scikit-learn's function names with _score, and its scorer names "
              "such as neg_log_loss, are accepted too)")


def data_problem(name: str | None, task: str, classes: int) -> str | None:
    """Once the data is read: a classification metric scikit-learn refuses for this many classes."""
    named = lookup(name, task) if task == CLASSIFICATION else None
    refusal = None if named is None else dry_run(named, task, classes)
    return None if refusal is None else f"--metric {name} does not score {classes}-class classification: {refusal}"


def dry_run(named: Named, task: str, k: int) -> str | None:
    """scikit-learn's refusal of `named` on a few made-up outputs of `task` with `k` classes or labels, or None."""
    n = 4 * k
    scores = None
    if task == REGRESSION:
        true, decided = np.linspace(1.0, 4.0, n), np.linspace(1.5, 3.5, n)
    elif task == MULTI_LABEL:
        true = (np.arange(n)[:, None] + np.arange(k)[None, :]) % 2
        decided = true.copy()
        decided[::3] = 1 - decided[::3]
        scores = 0.25 + 0.5 * decided
    else:
        true = np.arange(n) % k
        decided = true.copy()
        decided[::3] = (decided[::3] + 1) % k
        scores = np.full((n, k), 0.4 / (k - 1))
        scores[np.arange(n), decided] = 0.6
    try:
        _call(named, true, decided, scores, task)
    except (ValueError, TypeError, IndexError) as exc:
        return _reason(exc)
    return None


def _reason(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _call(named: Named, true: np.ndarray, decided: np.ndarray, scores: np.ndarray | None, task: str) -> float:
    kwargs = dict(named.kwargs)
    params = inspect.signature(named.function).parameters
    k = scores.shape[1] if scores is not None and scores.ndim == 2 else 0
    binary = task == CLASSIFICATION and k == 2
    if "average" in params and kwargs.get("average", params["average"].default) == "binary" and not binary:
        kwargs["average"] = "macro"
    given = decided
    if named.scores:
        given = scores[:, 1] if binary else scores
        if task == CLASSIFICATION and not binary and "labels" in params:
            kwargs.setdefault("labels", list(range(k)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ill-defined cases (no predicted sample) are scored as scikit-learn does
        return float(named.function(true, given, **kwargs))


def value(named: Named, true: np.ndarray, decided: np.ndarray, scores: np.ndarray | None, *,
          task: str) -> float | None:
    """`named` on these outputs, None where it is undefined (NaN); what scikit-learn refuses is a UserError.
    `true`: class ids, a label-indicator matrix or values; `decided` likewise; `scores`: probabilities (n, k)
    or (n, K), None for regression."""
    try:
        result = _call(named, true, decided, scores, task)
    except (ValueError, TypeError, IndexError) as exc:
        raise UserError(f"--metric {named.name} cannot score these outputs; scikit-learn says: {_reason(exc)}") \
            from None
    return result if math.isfinite(result) else None
