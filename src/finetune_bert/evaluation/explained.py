"""The mistakes a report lists, explained: each one's words weighted toward what the model wrongly answered (the
predicted class, or a regression's predicted value), so that the page can colour them (words.py).

Only the listed rows are explained (at most 20, one batched call), once, by the command that has the model:
`train` at its end and `evaluate`. The explanation is kept in the row itself, in metrics.json or the
evaluation's JSON, so that `finetune-bert report` draws the same page from the files alone, without a model.
An ONNX backend cannot explain: the rows then carry no explanation and the metrics say why, for the page.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from finetune_bert.console import console
from finetune_bert.errors import UserError
from finetune_bert.tasks import REGRESSION

# The key of the metrics that says why the listed rows carry no explanation (absent when they do).
NOT_EXPLAINED = "mistakes_not_explained"


def explain_rows(clf, rows: list[dict[str, Any]], items: list[Any], metrics: dict[str, Any]) -> float:
    """Add to each row its "explanation" (Explanation.to_json()) toward its "predicted" label (a regression: its
    value), `items` being the rows' whole inputs (texts, or (text, text_pair) tuples); or, when the model cannot
    explain, the reason under metrics[NOT_EXPLAINED]. Returns the seconds it took."""
    if not rows:
        return 0.0
    started = time.perf_counter()
    if clf.model is None:
        metrics[NOT_EXPLAINED] = (f"--backend {clf.backend} cannot explain (onnxruntime gives no gradients); "
                                  "evaluate with --backend torch to colour the words")
        return 0.0
    targets = None if clf.task == REGRESSION else [row["predicted"] for row in rows]
    try:
        found = clf.explain(items, target=targets)
    except UserError as exc:  # a tokenizer without offsets, say: the report lists the rows uncoloured
        metrics[NOT_EXPLAINED] = str(exc)
        console.warn(f"the report's mistakes are not coloured: {exc}")
        return time.perf_counter() - started
    for row, explanation in zip(rows, found):
        row["explanation"] = explanation.to_json()
    return time.perf_counter() - started


def metrics_text(metrics: dict[str, Any]) -> str:
    """json.dumps(metrics, indent=2), but each explanation's words on one line: a list of [word, weight] pairs
    indented would take four lines a word, thousands for the listed mistakes."""
    packed: dict[str, str] = {}
    nonce = uuid.uuid4().hex

    def pack(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (keep(v) if k == "words" and isinstance(v, list) else pack(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [pack(v) for v in value]
        return value

    def keep(words: list) -> str:
        key = f"words-{nonce}-{len(packed)}"
        packed[json.dumps(key)] = json.dumps(words)
        return key

    text = json.dumps(pack(metrics), indent=2)
    for key, words in packed.items():
        text = text.replace(key, words, 1)
    return text + "\n"
