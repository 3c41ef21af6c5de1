"""The metrics as text tables for a terminal, one per task kind, and `format_any` choosing by the dict's "task".

Apart from the metric classes so that metrics.py (which picks a class per kind) and task_metrics.py can both
reach them without importing each other.
"""

from __future__ import annotations

from typing import Any

from finetune_bert.tasks import CLASSIFICATION, MULTI_LABEL, REGRESSION

# Label names longer than this are cut in the multi-label table: GoEmotions has 28 labels, and a line per
# label should still fit an 80-column terminal.
NAME_WIDTH = 24


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_metrics(m: dict[str, Any], title: str = "") -> str:
    names = m["labels"]
    width = max(12, *(len(n) + 2 for n in names))
    lines = [title] if title else []
    lines.append(f"{'':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for name in names:
        c = m["per_class"][name]
        lines.append(f"{name:<{width}}{c['precision']:>10.4f}{c['recall']:>10.4f}{c['f1']:>10.4f}{c['support']:>10}")
    lines.append(f"{'macro avg':<{width}}{m['precision_macro']:>10.4f}{m['recall_macro']:>10.4f}"
                 f"{m['f1_macro']:>10.4f}{m['n']:>10}")
    auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"
    lines.append(f"accuracy {m['accuracy']:.4f}   roc_auc {auc}   log_loss {m['log_loss']:.4f}"
                 + (f"   ece {m['ece']:.4f}   brier {m['brier']:.4f}" if "ece" in m else ""))
    lines.append("confusion matrix (rows: true, columns: predicted)")
    lines.append(f"{'':<{width}}" + "".join(f"{n:>{width}}" for n in names))
    for name, row in zip(names, m["confusion_matrix"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def _short(name: str) -> str:
    return name if len(name) <= NAME_WIDTH else name[:NAME_WIDTH - 1] + "…"


def format_multilabel(m: dict[str, Any], title: str = "") -> str:
    """One row per label (all of them, however many: each is one short line), then the averages."""
    width = min(NAME_WIDTH, max(12, *(len(n) for n in m["labels"]))) + 2
    lines = [title] if title else []
    lines.append(f"{'':<{width}}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}{'threshold':>11}")
    for name in m["labels"]:
        c = m["per_class"][name]
        lines.append(f"{_short(name):<{width}}{c['precision']:>10.4f}{c['recall']:>8.4f}{c['f1']:>8.4f}"
                     f"{c['support']:>9}{c['threshold']:>11.3f}")
    lines.append(f"f1 micro {m['f1_micro']:.4f}   macro {m['f1_macro']:.4f}   weighted {m['f1_weighted']:.4f}   "
                 f"subset accuracy {m['subset_accuracy']:.4f}   hamming loss {m['hamming_loss']:.4f}   "
                 f"roc_auc {_number(m['roc_auc'])}   mAP {_number(m['map'])}")
    h = m["at_0.5"]
    lines.append(f"at threshold 0.5: f1 micro {h['f1_micro']:.4f}   macro {h['f1_macro']:.4f}   weighted "
                 f"{h['f1_weighted']:.4f}   subset accuracy {h['subset_accuracy']:.4f}   hamming loss "
                 f"{h['hamming_loss']:.4f}")
    per_text = m["labels_per_text"]
    lines.append(f"labels per text: true {per_text['true']:.2f}, predicted {per_text['predicted']:.2f}")
    return "\n".join(lines)


def format_regression(m: dict[str, Any], title: str = "") -> str:
    lines = [title] if title else []
    within = f"   within 1: {100 * m['within_1']:.1f}%" if "within_1" in m else ""
    lines.append(f"rmse {m['rmse']:.4f}   mae {m['mae']:.4f}   r2 {_number(m['r2'])}   pearson "
                 f"{_number(m['pearson'])}   spearman {_number(m['spearman'])}{within}   ({m['n']} texts)")
    t = m["target"]
    if t["mean"] is not None:
        lines.append(f"target: mean {t['mean']:.4g}, std {t['std']:.4g}, range {t['min']:.4g} to {t['max']:.4g}")
    return "\n".join(lines)


def format_any(m: dict[str, Any], title: str = "") -> str:
    """The table of a metrics dict of any kind (a dict without "task" is classification's, as older runs wrote)."""
    task = m.get("task", CLASSIFICATION)
    if task == MULTI_LABEL:
        return format_multilabel(m, title)
    if task == REGRESSION:
        return format_regression(m, title)
    return format_metrics(m, title)
