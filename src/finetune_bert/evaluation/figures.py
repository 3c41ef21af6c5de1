"""The report's figures, drawn with matplotlib (Agg, no display) as PNG bytes.

Each function takes plain numbers (lists and dicts as metrics.json holds them), so a report can be rebuilt
from the files of a run folder alone, long after the model was trained.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

WIDE, TALL = (9.0, 3.4), (4.6, 3.8)


def _figure(size: tuple[float, float], columns: int = 1):
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110)  # not pyplot: no global state, safe in a server thread
    return fig, [fig.add_subplot(1, columns, i + 1) for i in range(columns)]


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def curves(train: list[dict[str, Any]], evals: list[dict[str, Any]], metric: str) -> bytes:
    """Left: training loss and validation loss by step, the learning rate on a second axis. Right: the
    validation metric by step."""
    fig, (left, right) = _figure(WIDE, 2)
    if train:
        left.plot([r["step"] for r in train], [r["loss"] for r in train], label="training loss", color="#1f77b4")
    if evals:
        left.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="validation loss",
                  color="#d62728")
    left.set_xlabel("step")
    left.set_ylabel("loss")
    if train and all("lr" in r for r in train):
        lr = left.twinx()
        lr.plot([r["step"] for r in train], [r["lr"] for r in train], "--", color="#7f7f7f", label="learning rate")
        lr.set_ylabel("learning rate")
        lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    if train or evals:
        left.legend(loc="upper right", fontsize=8)
    left.set_title("loss and learning rate")
    values = [(r["step"], r.get(metric)) for r in evals if r.get(metric) is not None]
    if values:
        right.plot(*zip(*values), "o-", color="#2ca02c")
    right.set_xlabel("step")
    right.set_ylabel(f"validation {metric}")
    right.set_title(f"validation {metric}")
    return _png(fig)


def confusion(matrix: list[list[int]], names: list[str]) -> bytes:
    """Rows true, columns predicted; colour by the row's share, each cell with its count and share."""
    cm = np.asarray(matrix, dtype=float)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, (ax,) = _figure(TALL)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{int(cm[i, j])}\n{100 * share[i, j]:.1f}%", ha="center", va="center", fontsize=9,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=30 if len(names) > 3 else 0)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    return _png(fig)


def reliability(panels: list[tuple[str, dict[str, Any], float]]) -> bytes:
    """One reliability diagram per (title, bins, ECE): accuracy against mean confidence per confidence bin,
    each bar labelled with its number of texts (a bin of few texts says little)."""
    fig, axes = _figure((4.4 * len(panels), 3.9), len(panels))
    for ax, (title, bins, ece) in zip(axes, panels):
        k = bins["bins"]
        edges = np.linspace(0, 1, k + 1)
        count = np.asarray(bins["count"])
        centers = (edges[:-1] + edges[1:]) / 2
        shown = count > 0
        ax.bar(centers[shown], np.asarray(bins["accuracy"])[shown], width=1 / k, edgecolor="black",
               color="#4c72b0", label="accuracy")
        ax.plot(np.asarray(bins["confidence"])[shown], np.asarray(bins["accuracy"])[shown], "o", color="#dd8452",
                markersize=3, label="mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        for x, n in zip(centers[shown], count[shown]):
            ax.text(x, 1.01, str(int(n)), ha="center", va="bottom", fontsize=6, rotation=90)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.15)
        ax.set_xlabel("confidence (top label)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}: ECE {100 * ece:.2f}%", fontsize=10)
        ax.legend(loc="upper left", fontsize=7)
    return _png(fig)


def confidence_histogram(hist: dict[str, Any]) -> bytes:
    """How confident the model was, correct predictions and mistakes stacked."""
    k = hist["bins"]
    edges = np.linspace(0, 1, k + 1)
    fig, (ax,) = _figure((6.0, 3.4))
    correct, wrong = np.asarray(hist["correct"]), np.asarray(hist["wrong"])
    ax.bar(edges[:-1], correct, width=1 / k, align="edge", color="#55a868", edgecolor="black", label="correct")
    ax.bar(edges[:-1], wrong, width=1 / k, align="edge", bottom=correct, color="#c44e52", edgecolor="black",
           label="wrong")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel("confidence (top label)")
    ax.set_ylabel("texts")
    ax.set_title("confidence of correct and wrong predictions")
    ax.legend(fontsize=8)
    return _png(fig)


def by_length(rows: list[dict[str, Any]]) -> bytes:
    """Accuracy per bucket of text length in tokens, each bar with its number of texts."""
    fig, (ax,) = _figure((6.0, 3.4))
    labels = [f"{r['from']}-{r['to']}" if r["to"] is not None else f"{r['from']}+" for r in rows]
    accuracy = [r["accuracy"] for r in rows]
    ax.bar(range(len(rows)), accuracy, color="#8172b3", edgecolor="black")
    for i, r in enumerate(rows):
        ax.text(i, r["accuracy"] + 0.01, f"n={r['n']}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)), labels)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("text length in tokens (before truncation)")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy by text length")
    return _png(fig)


def label_f1(names: list[str], tuned: list[float], at_half: list[float]) -> bytes:
    """Multi-label: each label's F1 at its tuned threshold beside its F1 at 0.5, one pair of horizontal bars
    per label (horizontal: GoEmotions' 28 names stay readable), the first label at the top."""
    k = len(names)
    fig, (ax,) = _figure((7.5, max(2.6, 0.32 * k + 1.2)))
    y = np.arange(k)
    ax.barh(y - 0.2, tuned, height=0.4, color="#4c72b0", label="tuned threshold")
    ax.barh(y + 0.2, at_half, height=0.4, color="#dd8452", label="threshold 0.5")
    ax.set_yticks(y, names, fontsize=8 if k > 12 else 9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1")
    ax.set_title("F1 per label")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def regression(scatter: list[list[float]], residuals: dict[str, Any]) -> bytes:
    """Left: predicted against true for the points metrics kept, with the line of perfect predictions.
    Right: the histogram of prediction errors (predicted - true)."""
    fig, (left, right) = _figure(WIDE, 2)
    points = np.asarray(scatter, dtype=float).reshape(-1, 2)
    left.scatter(points[:, 0], points[:, 1], s=6, alpha=0.5, color="#4c72b0", edgecolors="none")
    if len(points):
        lo, hi = float(points.min()), float(points.max())
        left.plot([lo, hi], [lo, hi], "--", color="gray", label="predicted = true")
        left.legend(loc="upper left", fontsize=8)
    left.set_xlabel("true")
    left.set_ylabel("predicted")
    left.set_title(f"predicted against true ({len(points)} texts)")
    edges, count = np.asarray(residuals["edges"]), np.asarray(residuals["count"])
    right.bar(edges[:-1], count, width=np.diff(edges), align="edge", color="#8172b3", edgecolor="black")
    right.axvline(0, color="gray", linestyle="--")
    right.set_xlabel("predicted - true")
    right.set_ylabel("texts")
    right.set_title("errors")
    return _png(fig)
