"""The model card (README.md) of a trained model folder."""

from __future__ import annotations

from typing import Any


def model_card(cfg, report: dict[str, Any], metrics: dict[str, Any]) -> str:
    names = report["labels"]
    rows = []
    for split in ("validation", "test"):
        m = metrics.get(split)
        if m:
            auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"
            rows.append(f"| {split} | {m['n']} | {m['accuracy']:.4f} | {m['f1_macro']:.4f} | {auc} | {m['log_loss']:.4f} |")
    train_rows = report["splits"]["train"]["rows"]
    c = metrics.get("calibration") or {}
    calibrated = (f"Confidences are calibrated: temperature {c['value']:.3f}, fitted on validation, is folded into "
                  "the classifier, so the pipeline below gives calibrated probabilities too."
                  if c.get("kept") else f"Confidences are the raw softmax ({c['note']})." if c else "")
    return f"""---
library_name: transformers
pipeline_tag: text-classification
base_model: {cfg.model}
tags: [finetune-bert, text-classification]
---

# Text classifier fine-tuned from `{cfg.model}`

Labels: {", ".join(f"`{n}`" for n in names.values())}. Trained with finetune-bert on `{cfg.data}`
({train_rows} training rows), max length {report['max_length']}, truncation `{report['truncation']}`,
{cfg.epochs} epochs, batch {cfg.batch_size} x {cfg.grad_accum}, lr {cfg.lr}, seed {cfg.seed}.

| split | texts | accuracy | macro F1 | ROC-AUC | log loss |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

{calibrated}

## Use

```python
from transformers import pipeline
clf = pipeline("text-classification", model="PATH_TO_THIS_FOLDER", truncation=True)
clf("I loved it")
```

`truncation=True` is needed: without it a text longer than the model's limit crashes the pipeline. The
pipeline skips finetune-bert's cleaning and its `{report['truncation']}` truncation (it keeps the first
tokens), so its predictions can differ from these, made with the same cleaning and truncation as in training:

```python
from finetune_bert import load
load("PATH_TO_THIS_FOLDER").predict("I loved it")
```

`run_config.json` repeats the run; `data_report.txt` describes the data; `metrics.json` has every number;
`report.html` shows them.
"""
