"""The output folder: ownership, a run lock, atomic model saves, and the JSONL log.

A folder is ours when it holds the marker file, and we only ever replace files the marker lists; a user's
folder with other files in it is refused unless --overwrite, and a finished model unless --overwrite or
--resume, so nothing of theirs is lost. Every file is owned (listed) before it is written, so the next run
never mistakes our own output for the user's."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Iterable
import torch
from finetune_bert.training.checkpoint import CHECKPOINT_FILES, complete_checkpoints
from finetune_bert.engine.run_info import RUN_FILE, RunInfo
from finetune_bert.errors import UserError
from finetune_bert.lock import LOCK_NAME, OutputLock
from finetune_bert.engine.model_folder import EVALUATE_FILES
from finetune_bert.safefiles import MARKER, as_os_error, check_output_folder, disk_error, fsync_folder, public_mode, read_marker, write_marker, write_text_atomic


MODEL = "model.safetensors"


# What describes a finished run: removed when a new run publishes its first model, so that a run failing
# after that never leaves the old run's metrics, report or model card beside the new weights.
RUN_RESULTS = ("metrics.json", "README.md", "report.html", "skipped_rows.csv", *sorted(EVALUATE_FILES))


# Our own transient files (the lock, stale locks moved aside, staging, temporaries, write probes): never foreign.
_LEFTOVER = re.compile(r"^\.(saving|finetune-bert-probe-.*|.+\.tmp|" + re.escape(LOCK_NAME[1:]) + r"(\.stale-.*)?)$")


class RunFolder:
    """`tracking`: the run's experiment trackers (training.tracking.Tracking), fed each of its log records."""

    def __init__(self, path: str, overwrite: bool, resume: bool = False, *, tracking: Any = None):
        self.path = Path(path).expanduser()
        self.files: set[str] = set()
        self._staged: dict[str, str | Iterable[bytes]] = {}
        self._previous: set[str] = set()  # what an earlier run wrote here, by the marker
        self._published = False
        self._log = self._lock = None
        self.tracking = tracking
        try:
            self._open(overwrite, resume)
        except BaseException:
            self.close()  # a failure part-way must not leave the lock behind
            raise

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.close(exc)

    @staticmethod
    def check(path: str, overwrite: bool, resume: bool = False) -> set[str]:
        """The files a previous run of ours wrote there. Refuses, before any data is read, a folder holding
        anything else, a finished model, a folder another run is using, or one that cannot be written."""
        folder = check_output_folder(path, "--output")
        if folder.is_dir():
            OutputLock(folder).check()
        return _ours(folder, overwrite, resume)

    def _open(self, overwrite: bool, resume: bool) -> None:
        self.check(str(self.path), overwrite, resume)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, self.path, "create the output folder") from None
        self._lock = OutputLock(self.path).acquire()
        # Again under the lock: another run may have finished a model here since the check.
        self._previous = _ours(self.path, overwrite, resume) - {MARKER}
        self.files = self._previous | {"train_log.jsonl"}
        self._write_marker()
        if overwrite and not resume:  # a new run: the old run's checkpoints and logs must not mix with its own
            self.remove_checkpoints()
            self._remove_old_logs()
        try:
            self._log = (self.path / "train_log.jsonl").open("a", encoding="utf-8")
        except OSError as exc:
            raise disk_error(exc, self.path / "train_log.jsonl", "open the training log") from None

    def _remove_old_logs(self) -> None:
        """The earlier run's training log and TensorBoard events (TensorBoard would draw both runs as one)."""
        try:
            if "train_log.jsonl" in self._previous:
                (self.path / "train_log.jsonl").unlink(missing_ok=True)
            if "tensorboard" in self._previous and (self.path / "tensorboard").is_dir():
                for events in (self.path / "tensorboard").glob("events.out.tfevents.*"):
                    events.unlink()
        except OSError as exc:
            raise disk_error(exc, self.path, "remove the earlier run's logs") from None

    def _write_marker(self) -> None:
        write_marker(self.path, self.files)  # evaluate's and predict's outputs there are kept as they are

    def own(self, *names: str) -> None:
        """Record files we are about to write so that a later run may replace them."""
        self.files.update(names)
        self._write_marker()

    def write_text(self, name: str, text: str) -> Path:
        self.own(name)
        return write_text_atomic(self.path / name, text)

    def stage(self, name: str, text: str | Iterable[bytes]) -> None:
        """Publish `text` as `name` together with the next save_model, so that a run failing before it never
        leaves, say, a new run_config.json beside the old model. Not a str: blocks of bytes, made as they are
        written (each time: it is iterated again if a save fails and another is tried)."""
        self._staged[name] = text

    def save_model(self, model, tokenizer, run_info: RunInfo | dict[str, Any],
                   weights: dict[str, Any] | None = None) -> None:
        """Write to a temporary folder, fsync, then rename file by file: a crash leaves the old model whole.
        `weights`: the state dict to save in place of the model's own (its fp32 masters, engine.weights())."""
        staging = self.path / ".saving"
        try:
            names = self._write_staging(staging, model, tokenizer, run_info, weights)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            error = as_os_error(exc)
            if error is None:
                raise
            raise UserError(f"{disk_error(error, self.path, 'save the model')}; nothing was replaced: the previous "
                            "model in this folder, if any, and the last checkpoint are intact") from None
        self.own(*names)
        try:
            for name in names:
                os.replace(staging / name, self.path / name)
            if not self._published:
                self._remove_old_results(names)
            fsync_folder(self.path)
            staging.rmdir()
        except OSError as exc:
            raise UserError(f"{disk_error(exc, self.path, 'finish replacing the model')}; the last checkpoint "
                            "is intact") from None
        self._staged.clear()
        self._published = True

    def _remove_old_results(self, published: list[str]) -> None:
        """An earlier run's metrics, model card, skipped rows and evaluation describe its model, not this one."""
        for name in RUN_RESULTS:
            if name not in published and (name in self._previous or name in EVALUATE_FILES):
                try:
                    (self.path / name).unlink()
                except FileNotFoundError:
                    pass
                self.files.discard(name)
        self._write_marker()

    def _write_staging(self, staging: Path, model, tokenizer, run_info: RunInfo | dict[str, Any],
                       weights: dict[str, Any] | None) -> list[str]:
        from finetune_bert.engine.model_folder import quiet_transformers

        shutil.rmtree(staging, ignore_errors=True)
        with quiet_transformers():
            model.save_pretrained(staging, state_dict=weights)
            if weights is not None and model.dtype != torch.float32:
                # save_pretrained records the live model's dtype (bf16 weights), and transformers 5 loads a
                # folder in the dtype its config names: the saved weights are fp32, so the config must say so
                model.config.dtype = "float32"
                model.config.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        info = run_info if isinstance(run_info, RunInfo) else RunInfo.of(run_info)
        (staging / RUN_FILE).write_text(info.text(), encoding="utf-8")
        for name, text in self._staged.items():
            if isinstance(text, str):
                (staging / name).write_text(text, encoding="utf-8")
                continue
            with open(staging / name, "wb") as handle:
                for block in text:
                    handle.write(block)
        names = sorted(p.name for p in staging.iterdir())
        mode = public_mode()  # safetensors >= 0.8 writes 0600: a shared model folder would be unreadable
        for name in names:
            fd = os.open(staging / name, os.O_RDONLY)
            try:
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
        return names

    def remove_checkpoints(self) -> None:
        """Delete our checkpoints (--keep-checkpoints 0 after a successful run; an earlier run's, when a new one
        starts with --overwrite). Only the step folders we write: anything else in checkpoints/ stays."""
        root = self.path / "checkpoints"
        if "checkpoints" not in self.files or not root.is_dir():
            return
        try:
            for entry in root.iterdir():
                if _our_checkpoint(entry):
                    shutil.rmtree(entry)
            if not any(root.iterdir()):
                root.rmdir()
        except OSError as exc:
            raise disk_error(exc, root, "remove the checkpoints") from None
        if not root.exists():
            self.files.discard("checkpoints")  # only once gone: a half-removed folder must stay replaceable
            self._write_marker()

    def log(self, event: str, **fields: Any) -> None:
        record = {"time": round(time.time(), 3), "event": event, **fields}
        try:
            self._log.write(json.dumps(record, default=_jsonable) + "\n")
            self._log.flush()
        except OSError as exc:
            raise disk_error(exc, self.path / "train_log.jsonl", "append to the training log") from None
        if self.tracking is not None:
            self.tracking.record(self, event, fields)

    def finished(self, metrics: dict[str, Any]) -> None:
        """The run's final metrics and its report, model card and metrics.json, to its trackers."""
        if self.tracking is not None:
            self.tracking.finish(self, metrics, ("report.html", "README.md", "metrics.json"))

    def close(self, error: BaseException | None = None) -> None:
        """Idempotent, and safe after __init__ failed part-way; the lock is released whatever else fails.
        `error`: what ended the run, if anything did (its trackers record the run as failed or stopped)."""
        log, tracking, lock = self._log, self.tracking, self._lock
        self._log = self.tracking = self._lock = None
        try:
            if log is not None:
                try:
                    log.close()
                except OSError:  # only a failed append is left in the buffer, and log() reported it
                    pass
            if tracking is not None:
                tracking.close(error)
        finally:
            if lock is not None:
                lock.release()


class Follower:
    """The run folder as a process of rank > 0 sees it under torchrun: rank 0 alone writes the folder, holds
    its lock and logs, so every write here is a no-op; `path` is where rank 0 writes (checkpoints to resume)."""

    def __init__(self, path: str):
        self.path = Path(path).expanduser()
        self.files: set[str] = set()

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def own(self, *names: str) -> None:
        pass

    def write_text(self, name: str, text: str) -> Path:
        return self.path / name

    def stage(self, name: str, text: str | Iterable[bytes]) -> None:
        pass

    def save_model(self, *args: Any, **kwargs: Any) -> None:
        pass

    def remove_checkpoints(self) -> None:
        pass

    def log(self, event: str, **fields: Any) -> None:
        pass

    def finished(self, metrics: dict[str, Any]) -> None:
        pass

    def close(self, error: BaseException | None = None) -> None:
        pass


def _our_checkpoint(entry: Path) -> bool:
    """A step folder as checkpoint.save writes it, holding nothing else: a folder of the user's that happens to
    be named like one, or one they put a file in, is never removed."""
    if not entry.is_dir() or not re.fullmatch(r"\.?(tmp-)?step-\d+", entry.name):
        return False
    return all(p.is_file() and p.name in CHECKPOINT_FILES for p in entry.iterdir())


def _ours(folder: Path, overwrite: bool, resume: bool) -> set[str]:
    """The files the marker lists; refuses foreign files unless overwrite, a finished model unless either flag."""
    try:
        existing = {p.name for p in folder.iterdir() if not _LEFTOVER.match(p.name)} if folder.is_dir() else set()
    except OSError as exc:
        raise disk_error(exc, folder, "list the output folder") from None
    marker = read_marker(folder)
    ours = marker["files"] | {MARKER}
    foreign = sorted(existing - ours - marker["outputs"] - EVALUATE_FILES)
    if foreign and not overwrite:
        listed = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise UserError(f"--output {folder}: folder exists and holds files finetune-bert did not write "
                        f"({listed}); choose a new folder or pass --overwrite")
    unfinished = "checkpoints" in ours and "metrics.json" not in existing and complete_checkpoints(folder)
    if MODEL in ours and MODEL in existing and not (overwrite or resume or unfinished):
        raise UserError(f"--output {folder} already holds a trained model; pass --overwrite to replace it, "
                        "--resume to continue its run from its last checkpoint, or choose a new folder")
    if "checkpoints" in ours and not (overwrite or resume) and (found := complete_checkpoints(folder)):
        raise UserError(f"--output {folder} holds the checkpoints of an unfinished run (the newest: {found[-1].name}); "
                        "pass --resume to continue it, --overwrite to start again (its checkpoints are then "
                        "removed), or choose a new folder")
    return ours


def _jsonable(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)
