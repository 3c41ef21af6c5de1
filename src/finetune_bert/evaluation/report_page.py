"""`report.html`: one self-contained page a person reads after training, instead of JSON.

Written by `train` (DIR/report.html) and `evaluate` (NAME.html beside NAME.json), and rebuilt by
`finetune-bert report DIR|NAME.json` from the files alone: metrics.json (or the evaluation's JSON),
run_config.json, data_report.txt and train_log.jsonl. Figures are PNGs inlined as data: URIs, the style is
inline, there is no script and no link to load: the page opens offline, from an e-mail or a CI artifact.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
from pathlib import Path
from typing import Any

from finetune_bert.evaluation import figures
from finetune_bert.console import console
from finetune_bert.errors import UserError, refuse
from finetune_bert.evaluation.config import ReportConfig
from finetune_bert.evaluation.explained import NOT_EXPLAINED
from finetune_bert.evaluation.words import WORDS_CSS, legend_html, words_html
from finetune_bert.tasks import CLASSIFICATION, DEFAULT_METRIC, MULTI_LABEL, REGRESSION

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f3f3f3; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; display: block; margin: .6em 0; } .note { color: #555; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: 12px; }
td.text { max-width: 620px; font-size: 12px; }
""" + WORDS_CSS


class Html(str):
    """A table cell drawn already (coloured words): put in the page as it is, not escaped again."""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]], text_column: int | None = None) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            kind = "text" if i == text_column else ("n" if isinstance(value, (int, float)) or value is None else "")
            cells.append(f'<td class="{kind}">{value if isinstance(value, Html) else _esc(_fmt(value))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _image(png: bytes, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _page(title: str, sections: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + _esc(title) + "</title>"
            f"<style>{STYLE}</style></head><body><h1>{_esc(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n")


def _summary(splits: dict[str, dict[str, Any]]) -> str:
    keys = ("accuracy", "f1_macro", "roc_auc", "log_loss", "ece", "brier")
    rows = [[name, m["n"], *(m.get(k) for k in keys)] for name, m in splits.items() if m]
    return "<h2>Results</h2>" + _table(["split", "texts", "accuracy", "macro F1", "ROC-AUC", "NLL", "ECE", "Brier"], rows)


def _per_class(m: dict[str, Any], split: str) -> str:
    rows = [[name, c["precision"], c["recall"], c["f1"], c["support"]] for name, c in m["per_class"].items()]
    rows.append(["macro avg", m["precision_macro"], m["recall_macro"], m["f1_macro"], m["n"]])
    return (f"<h2>Per class ({_esc(split)})</h2>" + _table(["class", "precision", "recall", "F1", "support"], rows)
            + _image(figures.confusion(m["confusion_matrix"], m["labels"]), f"confusion matrix, {split}"))


def _calibration(calibration: dict[str, Any] | None) -> str:
    """Before/after table and reliability diagrams, from metrics.json's "calibration" (train) section."""
    if not calibration:
        return ""
    out = [f"<h2>Calibration</h2><p>{_esc(calibration['note'])}. Temperature used: "
           f"<b>{calibration['value']:.3f}</b> (folded into the saved classifier).</p>"]
    rows, panels = [], []
    for split in ("validation", "test"):
        if split not in calibration:
            continue
        pair = calibration[split]
        for when in ("before", "after"):
            m = pair[when]
            rows.append([split, when, m["log_loss"], m["ece"], m["brier"]])
    out.append(_table(["split", "calibration", "NLL", "ECE", "Brier"], rows))
    shown = "test" if "test" in calibration else "validation"
    for when in ("before", "after"):
        m = calibration[shown][when]
        panels.append((f"{shown}, {when} calibration", m["reliability"], m["ece"]))
    out.append(_image(figures.reliability(panels), f"reliability diagram, {shown}, before and after calibration"))
    return "".join(out)


def _uncalibrated(m: dict[str, Any]) -> str:
    """evaluate of a calibrated model: the same data before calibration (logits * T), beside after."""
    if "uncalibrated" not in m:
        return ("<h2>Calibration</h2><p class=\"note\">This model carries no temperature (trained with "
                "--no-calibrate, or not by finetune-bert): its confidences are the raw softmax.</p>"
                + _image(figures.reliability([("reliability", m["reliability"], m["ece"])]), "reliability diagram"))
    u = m["uncalibrated"]
    rows = [["before", u["log_loss"], u["ece"], u["brier"]], ["after", m["log_loss"], m["ece"], m["brier"]]]
    return (f"<h2>Calibration</h2><p>Temperature {m['temperature']:.3f}, fitted by train on validation and "
            "folded into the classifier.</p>" + _table(["calibration", "NLL", "ECE", "Brier"], rows)
            + _image(figures.reliability([("before calibration", u["reliability"], u["ece"]),
                                          ("after calibration", m["reliability"], m["ece"])]),
                     "reliability diagram before and after calibration"))


def _confidence(m: dict[str, Any]) -> str:
    out = ["<h2>Confidence and length</h2>",
           _image(figures.confidence_histogram(m["confidence_histogram"]), "confidence of correct and wrong predictions")]
    if m.get("by_length"):
        out.append(_image(figures.by_length(m["by_length"]), "accuracy by text length"))
    return "".join(out)


def _text(row: dict[str, Any]) -> Any:
    """A listed row's text: its words coloured by its explanation when it has one, else the shortened text."""
    explained = row.get("explanation")
    if not explained:
        return row["text"]
    late = "" if explained.get("converged", True) else ' <span class="note">(attributions did not converge)</span>'
    return Html(words_html(explained["words"], explained["label"]) + late)


def _words_note(rows: list[dict[str, Any]], m: dict[str, Any], regression: bool = False) -> str:
    """What the text column shows: coloured words and their legend, or shortened texts (and why not coloured)."""
    if any("explanation" in r for r in rows):
        return (" Each text's words are coloured by what moved the model toward its wrong answer (the words it "
                "read; hover a word for its weight).</p>" + legend_html("the predicted " + ("value" if regression
                                                                                           else "label"),
                                                                      regression=regression))
    why = f" Words not coloured: {_esc(m[NOT_EXPLAINED])}." if m.get(NOT_EXPLAINED) else ""
    return f" Texts shortened.{why}</p>"


def _mistakes(rows: list[dict[str, Any]] | None, m: dict[str, Any] | None = None) -> str:
    if rows is None:
        return ""
    if not rows:
        return "<h2>Most confident mistakes</h2><p>No mistakes.</p>"
    table = [[r["row"], _text(r), r["true_label"], r["predicted"], r["confidence"]] for r in rows]
    return (f"<h2>The {len(rows)} most confident mistakes</h2><p class=\"note\">Wrong predictions made with the "
            "highest confidence: label errors in the data, or what the model has not learned." + _words_note(rows, m or {})
            + _table(["row", "text", "true label", "predicted", "confidence"], table, text_column=1))


def _largest_errors(rows: list[dict[str, Any]] | None, m: dict[str, Any] | None = None) -> str:
    """A regression's largest errors, as confident mistakes are shown for a classifier."""
    if not rows:
        return ""
    table = [[r["row"], _text(r), r["true"], r["predicted"], r["error"]] for r in rows]
    return (f"<h2>The {len(rows)} largest errors</h2><p class=\"note\">The predictions furthest from their "
            "targets: a wrong target in the data, or what the model has not learned." + _words_note(rows, m or {}, True)
            + _table(["row", "text", "true", "predicted", "error"], table, text_column=1))


# What each kind's results table shows: (heading, key in the metrics dict); "at_0.5.x" reads a nested key.
SUMMARY_COLUMNS = {
    MULTI_LABEL: [("micro F1", "f1_micro"), ("macro F1", "f1_macro"), ("macro F1 at 0.5", "at_0.5.f1_macro"),
                  ("weighted F1", "f1_weighted"), ("subset accuracy", "subset_accuracy"),
                  ("Hamming loss", "hamming_loss"), ("ROC-AUC", "roc_auc"), ("mAP", "map"), ("BCE", "loss")],
    REGRESSION: [("RMSE", "rmse"), ("MAE", "mae"), ("R²", "r2"), ("Pearson", "pearson"), ("Spearman", "spearman"),
                 ("within 1", "within_1")],
}
# The keys a metrics dict of each kind must hold for its page to be drawn.
DRAWN_FROM = {CLASSIFICATION: {"n", "accuracy", "confusion_matrix", "confidence_histogram"},
              MULTI_LABEL: {"n", "per_class", "at_0.5", "thresholds"},
              REGRESSION: {"n", "rmse", "scatter", "residuals", "target"}}


def _task(m: dict[str, Any]) -> str:
    return m.get("task", CLASSIFICATION)  # metrics written before the task kinds are classification's


def _task_summary(splits: dict[str, dict[str, Any]], task: str) -> str:
    columns = [c for c in SUMMARY_COLUMNS[task] if any(c[1] in m for m in splits.values())
               or c[1].startswith("at_0.5.")]
    rows = [[name, m["n"], *((m["at_0.5"] if key.startswith("at_0.5.") else m).get(key.removeprefix("at_0.5."))
                             for _, key in columns)] for name, m in splits.items() if m]
    return "<h2>Results</h2>" + _table(["split", "texts", *(heading for heading, _ in columns)], rows)


def _per_label(m: dict[str, Any], split: str) -> str:
    """Multi-label: each label's threshold and scores at it, its F1 at 0.5, and the bars of both F1s."""
    half = m["at_0.5"]["f1_per_label"]
    rows = [[name, c["threshold"], c["precision"], c["recall"], c["f1"], half[name], c["support"], c["roc_auc"],
             c["average_precision"]] for name, c in m["per_class"].items()]
    per_text = m["labels_per_text"]
    return (f"<h2>Per label ({_esc(split)})</h2><p class=\"note\">A label is predicted when its probability "
            "reaches its threshold, tuned on validation for the label's best F1. Labels per text: "
            f"{per_text['true']:.2f} true, {per_text['predicted']:.2f} predicted.</p>"
            + _table(["label", "threshold", "precision", "recall", "F1", "F1 at 0.5", "support", "ROC-AUC",
                      "average precision"], rows)
            + _image(figures.label_f1(m["labels"], [c["f1"] for c in m["per_class"].values()],
                                      [half[name] for name in m["labels"]]), f"F1 per label, {split}"))


def _label_calibration(calibration: dict[str, Any] | None, labels: list[str]) -> str:
    """Multi-label calibration, from what train records: "temperatures" (one per label), and for each split
    the mean "before"/"after" measures calibration.label_measures gives; what is absent is not shown."""
    if not calibration:
        return ""
    out = ["<h2>Calibration</h2>"]
    if calibration.get("note"):
        out.append(f"<p>{_esc(calibration['note'])}</p>")
    rows = [[split, when, pair[when]["log_loss"], pair[when]["ece"], pair[when]["brier"]]
            for split, pair in calibration.items() if isinstance(pair, dict) and "before" in pair
            for when in ("before", "after")]
    if rows:
        out.append(_table(["split", "calibration", "NLL (mean over labels)", "ECE", "Brier"], rows))
    if calibration.get("temperatures"):
        out.append(_table(["label", "temperature"], [list(r) for r in zip(labels, calibration["temperatures"])]))
    return "".join(out)


def _regression(m: dict[str, Any], split: str) -> str:
    t = m["target"]
    return (f"<h2>Predictions ({_esc(split)})</h2>"
            + _image(figures.regression(m["scatter"], m["residuals"]), f"predicted against true and errors, {split}")
            + _table(["target", "mean", "std", "min", "max"], [["true values", t["mean"], t["std"], t["min"], t["max"]]]))


def _task_results(m: dict[str, Any], shown: str, splits: dict[str, dict[str, Any]],
                  calibration: dict[str, Any] | None) -> list[str]:
    """The result sections of a multi-label or regression page; classification's are unchanged."""
    task = _task(m)
    if task == MULTI_LABEL:
        return [_task_summary(splits, task), _per_label(m, shown), _label_calibration(calibration, m["labels"])]
    return [_task_summary(splits, task), _regression(m, shown)]


def _read_log(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training and validation records; after a resume, the records it replays replace the earlier ones."""
    train: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    if not path.is_file():
        return train, evals
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if record.get("event") == "resume":
            train = [r for r in train if r["step"] <= record.get("step", 0)]
            evals = [r for r in evals if r["step"] <= record.get("step", 0)]
        elif record.get("event") == "train" and record.get("loss") is not None:
            train.append(record)
        elif record.get("event") == "eval":
            evals.append(record)
    return train, evals


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object, or {} for a file that is missing, unreadable or not an object (a list of predictions)."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _chosen(metric: str, splits: dict[str, dict[str, Any]]) -> str:
    """The value of the metric that picked the model on each split that has it (a scikit-learn metric by name
    is in no results table)."""
    values = [f"{name.split(' ')[0]} {m[metric]:.4f}" for name, m in splits.items()
              if m and isinstance(m.get(metric), (int, float))]
    return f" ({', '.join(values)})" if values else ""


def run_report(folder: Path) -> str:
    """The report of a finished training run, from its folder's files."""
    folder = Path(folder)
    metrics, config = _read_json(folder / "metrics.json"), _read_json(folder / "run_config.json")
    shown = "test" if metrics.get("test") else "validation"
    m = metrics[shown]
    train, evals = _read_log(folder / "train_log.jsonl")
    metric = config.get("metric", DEFAULT_METRIC[_task(m)])
    data_report = (folder / "data_report.txt").read_text(encoding="utf-8") if (folder / "data_report.txt").is_file() else ""
    splits = {"validation (best step)": metrics["validation"], "test": metrics.get("test") or {}}
    if _task(m) == CLASSIFICATION:
        results = [_summary(splits), _per_class(m, shown), _calibration(metrics.get("calibration")), _confidence(m)]
    else:
        results = _task_results(m, shown, splits, metrics.get("calibration"))
    sections = [f"<p class=\"note\">{_esc(config.get('model', ''))} fine-tuned into {_esc(folder)}; best model at "
                f"step {metrics.get('best_step')} by validation {_esc(metric)}{_chosen(metric, splits)}; training "
                f"{metrics['train']['seconds']} s, "
                f"{metrics['train']['steps']} steps.</p>", *results,
                "<h2>Training</h2>" + _image(figures.curves(train, evals, metric), "training curves"),
                _mistakes(metrics.get("mistakes"), metrics), _largest_errors(metrics.get("largest_errors"), metrics),
                "<h2>Configuration</h2>" + _table(["option", "value"], [[k, json.dumps(v)] for k, v in config.items()]),
                f"<h2>Data</h2><pre>{_esc(data_report)}</pre>"]
    return _page(f"finetune-bert report: {folder.name}", sections)


def evaluation_report(m: dict[str, Any], name: str) -> str:
    """The report of one `evaluate` (its metrics dict)."""
    reading = m.get("reading") or {}
    how = ", ".join(f"{k} {v}" for k, v in reading.items() if v is not None)
    sections = [f"<p class=\"note\">{_esc(m.get('model'))} on {_esc(m.get('data'))} ({m['n']} texts"
                f"{'; ' + _esc(how) if how else ''}); metrics in {_esc(name)}.</p>",
                *([_summary({"evaluation": m}), _per_class(m, "evaluation"), _uncalibrated(m), _confidence(m)]
                  if _task(m) == CLASSIFICATION else _task_results(m, "evaluation", {"evaluation": m}, None)),
                _mistakes(m.get("mistakes"), m), _largest_errors(m.get("largest_errors"), m)]
    return _page(f"finetune-bert evaluation: {Path(str(m.get('data'))).name}", sections)


def rebuild(target: str) -> Path:
    """`finetune-bert report DIR|NAME.json`: write DIR/report.html, or NAME.html beside an evaluation."""
    from finetune_bert.safefiles import claim, read_marker, write_text_atomic

    path = Path(target).expanduser()
    if path.is_file() and path.suffix == ".json":
        m = _read_json(path)
        if not DRAWN_FROM.get(_task(m), DRAWN_FROM[CLASSIFICATION]) <= set(m):
            raise UserError(f"{target}: not the metrics of `finetune-bert evaluate` (predictions written by `predict`, "
                            "or metrics of an older version: evaluate again to get a report)")
        return write_text_atomic(path.with_suffix(".html"), _drawn(target, lambda: evaluation_report(m, path.name)))
    if not path.is_dir():
        raise UserError(f"{target}: no such folder; give a training run's output folder or an evaluation's .json")
    metrics = _read_json(path / "metrics.json")
    if "metrics.json" not in read_marker(path)["files"] or not metrics.get("validation"):
        raise UserError(f"{target}: not a finished finetune-bert training run (no metrics.json of ours); give the "
                        "--output folder of a `train` that finished, or an evaluation's .json")
    drawn = metrics.get("test") or metrics["validation"]
    if not DRAWN_FROM.get(_task(drawn), DRAWN_FROM[CLASSIFICATION]) <= set(drawn):
        raise UserError(f"{target}: its metrics.json was written by an older finetune-bert, without what the report "
                        "draws; run `finetune-bert evaluate --model DIR --data FILE` to get a report of this model")
    out = write_text_atomic(path / "report.html", _drawn(target, lambda: run_report(path)))
    claim(path, ["report.html"])
    return out


def _drawn(target: str, draw) -> str:
    """The page, or one line when the metrics are valid JSON of another shape than finetune-bert writes (edited
    by hand, or damaged)."""
    try:
        return draw()
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise UserError(f"{target}: its metrics do not have the shape finetune-bert writes ({type(exc).__name__}: "
                        f"{str(exc)[:120]}); evaluate or train again to get them") from None


def report(cfg: ReportConfig | None = None, **overrides: Any) -> Path:
    """`finetune-bert report`: rebuild the page, and say where it is."""
    cfg = dataclasses.replace(cfg or ReportConfig(), **overrides)
    refuse(cfg.problems())
    written = rebuild(cfg.target)
    console.say(f"report written to {written}")
    return written
