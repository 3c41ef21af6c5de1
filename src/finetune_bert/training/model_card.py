"""The model card (README.md) of a trained model folder."""

from __future__ import annotations

from typing import Any


# Per kind: the columns of the metrics table (key, heading) and what the pipeline returns.
COLUMNS = {
    "classification": (("accuracy", "accuracy"), ("f1_macro", "macro F1"), ("roc_auc", "ROC-AUC"),
                       ("log_loss", "log loss")),
    "multi-label": (("f1_macro", "macro F1"), ("f1_micro", "micro F1"), ("subset_accuracy", "subset accuracy"),
                    ("roc_auc", "ROC-AUC"), ("map", "mAP")),
    "regression": (("rmse", "RMSE"), ("mae", "MAE"), ("r2", "R²"), ("spearman", "Spearman")),
}
RETURNS = {
    "classification": "every label with its probability (they sum to 1)",
    "multi-label": "every label with its own sigmoid probability (independent: they do not sum to 1); a label "
                   "applies when its probability reaches its threshold in `finetune_bert.json` (`thresholds`)",
    "regression": "the predicted value as `score`, in the targets' units",
}


def _table(task: str, metrics: dict[str, Any]) -> str:
    columns = COLUMNS[task]
    rows = ["| split | texts | " + " | ".join(h for _, h in columns) + " |", "| --- " * (len(columns) + 2) + "|"]
    for split in ("validation", "test"):
        m = metrics.get(split)
        if m:
            cells = ["n/a" if m.get(k) is None else f"{m[k]:.4f}" for k, _ in columns]
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


def model_card(cfg, report: dict[str, Any], metrics: dict[str, Any]) -> str:
    names, task = report["labels"], metrics.get("task", "classification")
    train_rows = report["splits"]["train"]["rows"]
    calibrated = _calibrated(task, metrics.get("calibration") or {})
    pairs = report.get("pairs")
    example = 'clf({"text": "I loved it", "text_pair": "It was great"})' if pairs else 'clf("I loved it")'
    return f"""---
library_name: transformers
pipeline_tag: text-classification
base_model: {cfg.model}
tags: [finetune-bert, text-classification, {task}]
---

# Text {"regression" if task == "regression" else "classifier"} ({task}) fine-tuned from `{cfg.model}`

{"Target" if task == "regression" else "Labels"}: {", ".join(f"`{n}`" for n in names.values())}. Trained with finetune-bert on `{cfg.data}`
({train_rows} training rows), max length {report['max_length']}, truncation `{report['truncation']}`,
{cfg.epochs} epochs, batch {cfg.batch_size} x {cfg.grad_accum}, lr {cfg.lr}, seed {cfg.seed}.{_lora(cfg)}

{_table(task, metrics)}

{calibrated}

## Use

```python
from transformers import pipeline
clf = pipeline("text-classification", model="PATH_TO_THIS_FOLDER", truncation=True, top_k=None)
{example}
```

It returns {RETURNS[task]}.{f" Each input is a pair: `{pairs[0]}` as `text`, `{pairs[1]}` as `text_pair`." if pairs else ""}

`truncation=True` is needed: without it a text longer than the model's limit crashes the pipeline. The
pipeline skips finetune-bert's cleaning and its `{report['truncation']}` truncation (it keeps the first
tokens), so its predictions can differ from these, made with the same cleaning and truncation as in training:

```python
from finetune_bert import load
load("PATH_TO_THIS_FOLDER").predict({'("I loved it", "It was great")' if pairs else '"I loved it"'})
```

`run_config.json` repeats the run; `data_report.txt` describes the data; `metrics.json` has every number;
`report.html` shows them.
"""
