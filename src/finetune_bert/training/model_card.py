"""The model card (README.md) of a trained model folder: its hub metadata (card_metadata: base model,
model-index), the metrics table, and how to use the model. It names no local path: the card is what the hub
shows when the folder is pushed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune_bert.training.card_metadata import METRICS, base_model_id, card_metadata, data_sentence


RETURNS = {
    "classification": "every label with its probability (they sum to 1)",
    "multi-label": "every label with its own sigmoid probability (independent: they do not sum to 1); a label "
                   "applies when its probability reaches its threshold in `finetune_bert.json` (`thresholds`)",
    "regression": "the predicted value as `score`, in the targets' units",
}


def _table(task: str, metrics: dict[str, Any]) -> str:
    columns = METRICS[task]
    rows = ["| split | texts | " + " | ".join(c[1] for c in columns) + " |", "| --- " * (len(columns) + 2) + "|"]
    for split in ("validation", "test"):
        m = metrics.get(split)
        if m:
            cells = ["n/a" if m.get(c[0]) is None else f"{m[c[0]]:.4f}" for c in columns]
            rows.append(f"| {split} | {m['n']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _calibrated(task: str, c: dict[str, Any]) -> str:
    if task == "classification":
        return (f"Confidences are calibrated: temperature {c['value']:.3f}, fitted on validation, is folded into "
                "the classifier, so the pipeline below gives calibrated probabilities too."
                if c.get("kept") else f"Confidences are the raw softmax ({c['note']})." if c else "")
    return (c.get("note", "") + ".") if c else ""


def _lora(cfg) -> str:
    if not getattr(cfg, "lora", False):
        return ""
    return (f" LoRA (rank {cfg.lora_rank}, alpha {cfg.lora_alpha:g}, on {cfg.lora_targets}) with the head trained in "
            "full; the adapters are merged into these weights, so this is an ordinary model folder.")


def _base(model: str) -> str:
    """The base model as the card's title names it: its hub id, or a local folder by its name alone."""
    hub_id = base_model_id(model)
    return f"`{hub_id}`" if hub_id else f"a local model (`{Path(model).expanduser().resolve().name}`)"


def _load(where: str) -> str:
    """finetune-bert's load of the model: a hub repository is fetched whole first, since finetune_bert.json (how
    texts are cleaned and cut, thresholds) is read from a folder."""
    if where == "PATH_TO_THIS_FOLDER":
        return f'load("{where}")'
    return f'from huggingface_hub import snapshot_download\nload(snapshot_download("{where}"))'


def model_card(cfg, report: dict[str, Any], metrics: dict[str, Any]) -> str:
    names, task = report["labels"], metrics.get("task", "classification")
    calibrated = _calibrated(task, metrics.get("calibration") or {})
    pairs = report.get("pairs")
    example = 'clf({"text": "I loved it", "text_pair": "It was great"})' if pairs else 'clf("I loved it")'
    where = getattr(cfg, "push_to_hub", None) or "PATH_TO_THIS_FOLDER"
    return f"""---
{card_metadata(cfg, report, metrics).strip()}
---

# Text {"regression" if task == "regression" else "classifier"} ({task}) fine-tuned from {_base(cfg.model)}

{"Target" if task == "regression" else "Labels"}: {", ".join(f"`{n}`" for n in names.values())}. Trained with finetune-bert
{data_sentence(report)}. Max length {report['max_length']}, truncation `{report['truncation']}`,
{cfg.epochs} epochs, batch {cfg.batch_size} x {cfg.grad_accum}, lr {cfg.lr}, seed {cfg.seed}.{_lora(cfg)}

{_table(task, metrics)}

{calibrated}

## Use

```python
from transformers import pipeline
clf = pipeline("text-classification", model="{where}", truncation=True, top_k=None)
{example}
```

It returns {RETURNS[task]}.{f" Each input is a pair: `{pairs[0]}` as `text`, `{pairs[1]}` as `text_pair`." if pairs else ""}

`truncation=True` is needed: without it a text longer than the model's limit crashes the pipeline. The
pipeline skips finetune-bert's cleaning and its `{report['truncation']}` truncation (it keeps the first
tokens), so its predictions can differ from these, made with the same cleaning and truncation as in training:

```python
from finetune_bert import load
{_load(where)}.predict({'("I loved it", "It was great")' if pairs else '"I loved it"'})
```

`metrics.json` has every number, `data_report.txt` describes the data and `report.html` shows them; the
training folder's `run_config.json` repeats the run.
"""
