"""What a distillation or a pruned fine-tune was started with, kept beside its checkpoints (OUTPUT/compression.json).

A checkpoint's own fingerprint (training.checkpoint) pins train's options and data; what only these commands
have (the teacher and its outputs, the unlabelled texts, the loss's mix, which layers the model keeps) is pinned
here, so that --resume continues a run only with what it was started with, and refuses anything else by name."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from finetune_bert.errors import UserError
from finetune_bert.lock import OutputLock
from finetune_bert.safefiles import claim, write_text_atomic
from finetune_bert.training import checkpoint

RECORD = "compression.json"


@contextmanager
def locked(output: str) -> Iterator[Path]:
    """The output folder (made if new), with its run lock held: no other run writes in it meanwhile."""
    folder = Path(output).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    with OutputLock(folder):
        yield folder


def check_or_record(output: str, resume: bool, settings: dict[str, Any]) -> None:
    """Resuming from a checkpoint: `settings` (plain JSON values) must be those its run was started with.
    Otherwise the run starts afresh, and `settings` are recorded as its own. Called with the output folder's
    lock held, after train's own checks of the folder."""
    folder = Path(output).expanduser()
    path = folder / RECORD
    found = checkpoint.complete_checkpoints(folder) if resume else []
    if found:
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise UserError(f"--resume: {found[-1]} has no readable record of its distillation or pruning settings "
                            f"({path}); it was made by another command, or the record was removed. Use a new "
                            "--output, or --overwrite to start again") from None
        now = json.loads(json.dumps(settings))
        if diff := [f"{k}: checkpoint has {saved.get(k)!r}, now {now.get(k)!r}" for k in sorted(set(saved) | set(now))
                    if saved.get(k) != now.get(k)]:
            raise UserError(f"--resume: {found[-1]} was made with other settings or a teacher giving other outputs; "
                            f"differences: {'; '.join(diff)}. Use the original arguments, or a new --output")
        return
    folder.mkdir(parents=True, exist_ok=True)
    claim(folder, [RECORD])  # listed before it is written: a later run must never call it foreign
    write_text_atomic(path, json.dumps(settings, indent=2) + "\n")
