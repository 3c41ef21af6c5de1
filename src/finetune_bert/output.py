"""The output folder: ownership, atomic model saves, the JSONL log, and the model card.

A folder is ours when it holds the marker file, and we only ever replace files the marker lists; a user's
folder with other files in it is refused unless --overwrite, so nothing of theirs is lost.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from finetune_bert.errors import UserError

MARKER = ".finetune-bert"


class RunFolder:
    def __init__(self, path: str, overwrite: bool):
        self.path = Path(path).expanduser()
        self._claim(overwrite)
        self._log = (self.path / "train_log.jsonl").open("a")
        self._tb = _tensorboard(self.path / "tensorboard")

    @staticmethod
    def check(path: str, overwrite: bool) -> set[str]:
        """The files a previous run of ours wrote there; refuses a folder holding anything else."""
        folder = Path(path).expanduser()
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--output {folder}: is a file, not a folder")
        marker = folder / MARKER
        existing = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        try:
            ours = set(json.loads(marker.read_text())["files"]) | {MARKER} if marker.is_file() else {MARKER}
        except (ValueError, KeyError):
            ours = {MARKER}
        foreign = sorted(existing - ours)
        if foreign and not overwrite:
            listed = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise UserError(f"--output {folder}: folder exists and holds files finetune-bert did not write "
                            f"({listed}); choose a new folder or pass --overwrite")
        return ours

    def _claim(self, overwrite: bool) -> None:
        ours = self.check(str(self.path), overwrite)
        self.path.mkdir(parents=True, exist_ok=True)
        self.files = set(ours - {MARKER}) | ({"train_log.jsonl"})
        self._write_marker()

    def _write_marker(self) -> None:
        (self.path / MARKER).write_text(json.dumps({"tool": "finetune-bert", "files": sorted(self.files)}) + "\n")

    def own(self, *names: str) -> None:
        """Record files we are about to write so that a later run may replace them."""
        self.files.update(names)
        self._write_marker()

    def write_text(self, name: str, text: str) -> Path:
        self.own(name)
        target = self.path / name
        tmp = target.with_name(f".{name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
        return target

    def save_model(self, model, tokenizer, run_info: dict[str, Any]) -> None:
        """Write to a temporary folder, fsync, then rename file by file: a crash leaves the old model whole."""
        staging = self.path / ".saving"
        shutil.rmtree(staging, ignore_errors=True)
        from finetune_bert.model import quiet_transformers

        with quiet_transformers():
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        (staging / "finetune_bert.json").write_text(json.dumps(run_info, indent=2, default=str) + "\n")
        names = [p.name for p in staging.iterdir()]
        self.own(*names)
        for name in names:
            with open(staging / name, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(staging / name, self.path / name)
        staging.rmdir()

    def log(self, event: str, **fields: Any) -> None:
        record = {"time": round(time.time(), 3), "event": event, **fields}
        self._log.write(json.dumps(record, default=_jsonable) + "\n")
        self._log.flush()
        if self._tb is not None and "step" in fields:
            for key, value in fields.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(f"{event}/{key}", value, fields["step"])

    def close(self) -> None:
        self._log.close()
        if self._tb is not None:
            self._tb.close()


def _jsonable(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(folder))


def say(message: str) -> None:
    print(message, file=sys.stderr if message.startswith("warning") else sys.stdout, flush=True)


def model_card(cfg, report: dict[str, Any], metrics: dict[str, Any]) -> str:
    names = report["labels"]
    rows = []
    for split in ("validation", "test"):
        m = metrics.get(split)
        if m:
            auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"
            rows.append(f"| {split} | {m['n']} | {m['accuracy']:.4f} | {m['f1_macro']:.4f} | {auc} | {m['log_loss']:.4f} |")
    train_rows = report["splits"]["train"]["rows"]
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

## Use

```python
from transformers import pipeline
clf = pipeline("text-classification", model="PATH_TO_THIS_FOLDER")
clf("I loved it")
```

or, with the same cleaning and truncation as in training:

```python
from finetune_bert import load
load("PATH_TO_THIS_FOLDER").predict("I loved it")
```

`run_config.json` repeats the run; `data_report.txt` describes the data; `metrics.json` has every number.
"""
