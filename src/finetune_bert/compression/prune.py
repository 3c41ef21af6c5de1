"""`finetune-bert prune`: a fine-tuned model with its top encoder layers dropped, as a new ordinary model folder.

Without --data the pruned model is written as it is: the source's weights for the layers kept, its head, its
tokenizer and its finetune_bert.json (how it reads texts, its labels), so predict, evaluate, serve and
`transformers.pipeline` take it; the layers above feed nothing any more, so its accuracy is the source's
representations cut short, often much lower. With --data it is then fine-tuned briefly by training.train's
run_training (its model set up from the source's first layers, as distill --student-layers does), and the
output is a training run's folder: calibrated, tested, reported. The source folder is only ever read."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_bert.compression.config import PruneConfig
from finetune_bert.compression.record import check_or_record, locked
from finetune_bert.console import console
from finetune_bert.data.seen import SEEN_FILE
from finetune_bert.engine.layers import keep_layers, pick_layers
from finetune_bert.engine.model_folder import ModelFolder, load_classifier, quiet_transformers
from finetune_bert.engine.run_info import RUN_FILE
from finetune_bert.errors import UserError
from finetune_bert.ranks import launched
from finetune_bert.safefiles import MARKER, claim, fsync_folder, public_mode, read_marker, write_marker, write_text_atomic
from finetune_bert.training.finish import TrainResult
from finetune_bert.training.run_folder import RunFolder
from finetune_bert.training.train import checked, preflight, process_settings, run_training

PRUNE_FILE = "prune.json"


@dataclass
class PruneResult:
    output: str
    kept: list[int]  # the source's layers kept, counted from 0
    layers: int      # how many the source had
    trained: TrainResult | None = None  # with --data: the fine-tune's result


def prune(cfg: PruneConfig | None = None, **overrides: Any) -> PruneResult:
    """Write `cfg.model` with only its first `cfg.keep_layers` encoder layers into `cfg.output`, fine-tuned on
    `cfg.data` when given (see the module docstring)."""
    if launched():
        raise UserError("prune runs in one process: start it without torchrun")
    cfg = checked(cfg or PruneConfig(), **overrides)
    process_settings(cfg)
    started = time.time()
    source = ModelFolder.open(cfg.model)
    total = getattr(source.config(cfg.trust_remote_code), "num_hidden_layers", None)
    if total is None or cfg.keep_layers >= total:
        raise UserError(f"--keep-layers {cfg.keep_layers}: {cfg.model} has {total or 'no countable'} encoder layers; "
                        + (f"keep fewer (1 to {total - 1})" if total and total > 1 else "there is nothing to drop"))
    kept = pick_layers(total, cfg.keep_layers)
    if not cfg.data:
        _write_pruned(cfg, source, total)
        result = PruneResult(str(cfg.output), kept, total)
    else:
        prepared = preflight(cfg)  # the output folder checked, every row read, before any model is loaded
        with locked(cfg.output):
            check_or_record(cfg.output, cfg.resume, {"command": "prune", "keep_layers": cfg.keep_layers})
        result = PruneResult(str(cfg.output), kept, total, run_training(cfg, prepared, started=started))
    _record(cfg, result)
    return result


def _write_pruned(cfg: PruneConfig, source: ModelFolder, total: int) -> None:
    """The pruned model saved whole into a staging folder, then moved in file by file (as a training run saves
    its model): a crash leaves the earlier folder's files as they were."""
    RunFolder.check(cfg.output, cfg.overwrite)  # a user's files, a model or a live run there: refused
    notes: list[str] = []
    model = load_classifier(source, None, cfg.trust_remote_code, notes=notes)
    if notes:  # loaded as saved, the one note is a missing head: nothing trained to keep
        raise UserError(f"--model {cfg.model}: has no trained classification head to keep; prune a fine-tuned model, "
                        "or give --data to fine-tune the pruned one")
    keep_layers(model, cfg.keep_layers, "first", option="--keep-layers")
    tokenizer = source.tokenizer(cfg.trust_remote_code)
    with locked(cfg.output) as folder:
        staging = folder / ".saving"
        shutil.rmtree(staging, ignore_errors=True)
        with quiet_transformers():
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        (staging / RUN_FILE).write_text(source.info.text(), encoding="utf-8")
        if source.path is not None and (source.path / SEEN_FILE).is_file():
            # the texts the source learned from are still in what the pruned model knows: audit refuses them
            shutil.copyfile(source.path / SEEN_FILE, staging / SEEN_FILE)
        _publish(folder, staging)
    console.say(f"pruned model saved to {cfg.output}: the first {cfg.keep_layers} of {cfg.model}'s {total} encoder "
                "layers, its head and tokenizer")


def _publish(folder: Path, staging: Path) -> None:
    """Move the staged files into `folder`, owned first; files an earlier run of ours left there (metrics, a
    report, a log) describe another model and are removed. Folders and the user's own files stay."""
    names = sorted(p.name for p in staging.iterdir())
    for name in names:
        os.chmod(staging / name, public_mode())  # safetensors writes 0600: a shared model must stay readable
    claim(folder, names)
    for name in names:
        os.replace(staging / name, folder / name)
    ours = read_marker(folder)["files"]
    stale = {n for n in ours - set(names) - {MARKER} if (folder / n).is_file()}
    for name in stale:
        (folder / name).unlink()
    write_marker(folder, ours - stale)
    fsync_folder(folder)
    staging.rmdir()


def _record(cfg: PruneConfig, result: PruneResult) -> None:
    """prune.json: which of the source's layers the model holds, for whoever reads the folder later."""
    folder = Path(cfg.output).expanduser()
    claim(folder, [PRUNE_FILE])
    write_text_atomic(folder / PRUNE_FILE, json.dumps({"model": str(cfg.model), "layers": result.layers,
                                                       "kept": [i + 1 for i in result.kept],
                                                       "fine_tuned_on": cfg.data}, indent=2) + "\n")
