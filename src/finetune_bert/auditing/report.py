"""The audit's report.html: the summary (rows flagged, noise per class, the joint of given and suggested
labels) and the worst label issues, each with its words coloured by what drove the model that scored it
(Integrated Gradients toward the suggested label, with the fold model that never saw the row). One
self-contained page, no script, as the training report."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from finetune_bert.auditing.issues import Findings
from finetune_bert.console import console
from finetune_bert.evaluation.report_page import STYLE
from finetune_bert.evaluation.words import WORDS_CSS, legend_html, words_html
from finetune_bert.safefiles import write_text_atomic
from finetune_bert.tasks import MULTI_LABEL, REGRESSION


def write_report(folder: Path, cfg, scored, found: Findings, summary: dict[str, Any]) -> None:
    top = found.flagged[:cfg.top].tolist()
    explained = _explained(folder, cfg, scored, found, top) if top else {}
    write_text_atomic(folder / "report.html", _page(scored, found, summary, top, explained))


def _explained(folder: Path, cfg, scored, found: Findings, top: list[int]) -> dict[int, dict[str, Any]]:
    """Row -> its explanation (Explanation.to_json()), kept in OUTPUT/explanations.json: a rerun (another
    --top, --rank-by) reuses them after the fold models' weights are gone."""
    cache = folder / "explanations.json"
    kept = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else {}
    key = {i: f"{scored.rows.where[i]}:{_target(scored, found, i)}" for i in top}
    missing = [i for i in top if key[i] not in kept]
    if missing:
        kept.update({key[i]: e for i, e in _explain(cfg, scored, found, missing).items()})
        write_text_atomic(cache, json.dumps(kept) + "\n")
    return {i: kept[key[i]] for i in top if key[i] in kept}


def _target(scored, found: Findings, i: int) -> Any:
    """What the words of row i are explained toward: the suggested class; for label sets, the label whose
    probability disagrees most with the given set; a regression's value."""
    if scored.task == REGRESSION:
        return None
    if scored.task == MULTI_LABEL:
        given = np.zeros(scored.outputs.shape[1])
        given[list(scored.labels[i])] = 1.0
        return int(np.abs(scored.outputs[i] - given).argmax())
    return int(found.suggested[i])


def _explain(cfg, scored, found: Findings, top: list[int]) -> dict[int, dict[str, Any]]:
    """Row -> explanation, each with the model that scored it; a failure or a fold model already removed
    leaves the words uncoloured (said on the page), never the audit unwritten."""
    from finetune_bert.inference.classifier import load
    from finetune_bert.inference.reading import Reading

    groups: dict[Any, list[int]] = {}
    for i in top:
        groups.setdefault(None if scored.fold is None else int(scored.fold[i]), []).append(i)
    out: dict[int, Any] = {}
    for k, rows in groups.items():
        if k is not None and not (scored.runner.path(k) / "model.safetensors").is_file():
            console.warn(f"fold {k + 1}'s model was removed by an earlier run: its rows' words are not coloured "
                         "(--keep-fold-models keeps them)")
            continue
        clf = scored.model if k is None else load(str(scored.runner.path(k)), reading=Reading(), backend="torch")
        items = [(scored.rows.texts[i], scored.rows.pairs[i]) if scored.rows.pairs is not None else scored.rows.texts[i]
                 for i in rows]
        targets = [_target(scored, found, i) for i in rows]
        try:
            explained = clf.explain(items, target=None if scored.task == REGRESSION else targets,
                                    steps=cfg.explain_steps)
        except Exception as exc:  # the report without colours is still the audit's answer
            console.warn(f"the report's words are not coloured: explaining failed ({type(exc).__name__}: {exc})")
            return {}
        out.update((i, e.to_json()) for i, e in zip(rows, explained))
    return out


def _page(scored, found: Findings, summary: dict[str, Any], top: list[int], explained: dict[int, Any]) -> str:
    esc = html.escape
    parts = [f"<h1>Label audit of {esc(str(summary['data']))}</h1>",
             f"<p class=\"note\">{summary['rows']} rows, each scored by a model that never saw it "
             f"({esc(summary['mode'])}{', ' + str(summary['folds']) + ' folds' if summary['folds'] else ''}; model "
             f"{esc(str(summary['model']))}). Confident learning (cleanlab) flagged <b>{summary['flagged']}</b> "
             f"({100 * summary['flagged_share']:.1f}%), ranked by {esc(found.ranked_by)}.</p>",
             _noise_table(summary), _joint_table(summary), f"<h2>The {len(top)} worst label issues</h2>"]
    if explained:
        parts.append(legend_html(regression=scored.task == REGRESSION))
    shown = scored.shown
    for rank, i in enumerate(top, 1):
        where = f"{scored.rows.source}, {scored.rows.where[i]}"
        head = (f"<p><b>#{rank}</b> {esc(where)}: given <b>{esc(shown.name(scored.labels[i]))}</b>, suggested "
                f"<b>{esc(shown.name(found.suggested[i]))}</b>, label quality {found.quality[i]:.4f}</p>")
        body = (words_html(explained[i]["words"], explained[i]["label"]) + ("" if explained[i]["converged"] else
                                             ' <span class="note">(attributions did not converge)</span>')
                if i in explained else f'<span class="words">{esc(scored.rows.texts[i])}</span>')
        parts.append(f'<div class="issue">{head}<div>{body}</div></div>')
    if top and not explained:
        parts.append('<p class="note">Words are not coloured: the explanation failed (see the audit\'s output).</p>')
    parts.append('<p class="note">Every flagged row is in label_issues.csv; every row\'s out-of-sample '
                 "probabilities in oof_probabilities.csv.</p>")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>Label audit</title><style>{STYLE}{WORDS_CSS}"
            ".issue { margin: 1em 0; padding-bottom: .6em; border-bottom: 1px solid #eee; }</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")


def _noise_table(summary: dict[str, Any]) -> str:
    if summary["task"] == REGRESSION:
        return (f"<p>Residuals' robust standard deviation: {summary['noise_rate'].get('residual_robust_std', 0):.4g}; "
                "a row is flagged beyond three of them.</p>")
    what = "estimated noise rate" if summary["task"] != MULTI_LABEL else "share of rows where given and suggested disagree"
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td class=\"n\">{summary['rows_per_label'].get(k, 0)}</td>"
                   f"<td class=\"n\">{100 * v:.1f}%</td></tr>" for k, v in summary["noise_rate"].items())
    return f"<h2>Per label</h2><table><tr><th>label</th><th>rows</th><th>{what}</th></tr>{rows}</table>"


def _joint_table(summary: dict[str, Any]) -> str:
    joint, names = summary.get("joint"), summary["labels"]
    if not joint:
        return ""
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = "".join(f"<tr><th>{html.escape(n)}</th>" + "".join(f"<td class=\"n\">{100 * x:.2f}%</td>" for x in row)
                   + "</tr>" for n, row in zip(names, joint))
    return ("<h2>Given against suggested</h2><p class=\"note\">Estimated joint distribution (cleanlab): rows are the "
            f"given labels, columns the labels the data suggests.</p><table><tr><th></th>{head}</tr>{body}</table>")
