"""The experiment trackers a run can report to (--report-to): TensorBoard, MLflow and Weights & Biases, one class
each behind one small protocol, `Tracker`, and made in one place, `BACKENDS`.

A class here only speaks its library's API; what is logged, when, and what happens when a tracker fails is
training.tracking's. Each library is imported when its tracker starts, never at import time: a run that reports
to none of them pays nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

# MLflow's experiment and W&B's project when the environment names none (MLFLOW_EXPERIMENT_NAME, WANDB_PROJECT)
PROJECT = "finetune-bert"
# What MLflow calls a run that ended well, failed, or was stopped to be resumed; W&B is told the same through
# its exit code
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"


@dataclass(frozen=True)
class Start:
    """What a tracker is told when its run starts. `own(name)` records a name in the run's folder as the run's
    own before anything is written there (run_folder's rule: a later run must not call it foreign)."""

    folder: Path
    params: dict[str, Any]
    own: Callable[[str], None]
    resume: str | None = None     # this tracker's run id in the run being continued (a --resume, a study rerun)
    parent: Any = None            # the same kind of tracker, started for the study this run is a trial of
    mlflow_uri: str | None = None
    role: str = "train"           # "train", "trial" (a run inside a study) or "study"


class Tracker(Protocol):
    """One experiment tracker's side of a run. Any exception it raises is training.tracking's to handle."""

    name: str                     # as the user reads it in a warning
    run_id: str | None            # the tracker's id of the run, kept for a --resume

    def start(self, start: Start) -> None: ...

    def metrics(self, values: dict[str, float], step: int) -> None: ...

    def files(self, paths: list[Path]) -> None: ...

    def close(self, status: str) -> None: ...


class TensorBoard:
    """Scalars in OUTPUT/tensorboard, as `tensorboard --logdir OUTPUT` reads them."""

    name = "TensorBoard"

    def __init__(self) -> None:
        self.run_id, self.writer = None, None

    def start(self, start: Start) -> None:
        from torch.utils.tensorboard import SummaryWriter

        start.own("tensorboard")  # before it exists, or the next --resume would call it foreign
        self.writer = SummaryWriter(str(start.folder / "tensorboard"))

    def metrics(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def files(self, paths: list[Path]) -> None:
        pass  # they are in the folder TensorBoard reads already

    def close(self, status: str) -> None:
        self.writer.close()


class Mlflow:
    """A run in an MLflow tracking store, through MlflowClient (no global active run, so that a study's run and
    its trials' runs are open at once): the store --mlflow-uri or MLFLOW_TRACKING_URI names, else a SQLite store
    in OUTPUT/mlruns (MLflow 3 refuses new file stores; SQLite is the local store it recommends)."""

    name = "MLflow"

    def __init__(self) -> None:
        self.run_id = self.client = self.uri = self.experiment = None

    def start(self, start: Start) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        parent = start.parent
        artifacts = None
        if parent is not None:
            self.uri = parent.uri
        else:
            self.uri = start.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
            if self.uri is None:
                self.uri, artifacts = _local_store(start)
        with _quiet_loggers("mlflow", "alembic"):  # creating a store says each schema migration it runs
            self.client = MlflowClient(self.uri)
            if start.resume and self._resumed(start.resume):
                return
            self.experiment = parent.experiment if parent is not None else self._experiment(artifacts)
            tags = {"mlflow.source.name": "finetune-bert", "finetune_bert.output": str(start.folder),
                    "finetune_bert.role": start.role}
            if parent is not None:
                tags["mlflow.parentRunId"] = parent.run_id
            self.run_id = self.client.create_run(self.experiment, run_name=start.folder.name, tags=tags).info.run_id
        # MLflow's limit on a value is 6000 characters; a path or a list of label names stays well inside
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in sorted(start.params.items())])

    def _resumed(self, run_id: str) -> bool:
        """The run being continued, running again; False when this store does not hold it (then a new one)."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return False
        self.run_id, self.experiment = run_id, run.info.experiment_id
        self.client.update_run(run_id, status="RUNNING")
        return True

    def _experiment(self, artifacts: str | None) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(name, artifact_location=artifacts)

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(_mlflow_name(k), v, now, step) for k, v in values.items()])

    def files(self, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


def _local_store(start: Start) -> tuple[str, str]:
    """OUTPUT/mlruns: the SQLite database and the artifacts beside it (MLflow would put them in the working
    directory otherwise); `mlflow ui --backend-store-uri sqlite:///OUTPUT/mlruns/mlflow.db` shows it."""
    start.own("mlruns")
    store = (start.folder / "mlruns").resolve()
    store.mkdir(exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()


def _mlflow_name(key: str) -> str:
    """A metric name MLflow accepts (letters, digits, `_ - . / :` and spaces): a label's own characters may not be."""
    return re.sub(r"[^\w\-./: ]", "_", key)


class Wandb:
    """A W&B run, online or offline as its environment says (WANDB_MODE). Its files go to OUTPUT/wandb (WANDB_DIR
    elsewhere); a study's trials share the study's folder and group, as W&B groups runs instead of nesting them."""

    name = "W&B"

    def __init__(self) -> None:
        self.run_id = self.run = self.dir = self.group = None

    def start(self, start: Start) -> None:
        import wandb

        parent = start.parent
        self.dir = os.environ.get("WANDB_DIR") or (parent.dir if parent is not None else None)
        if self.dir is None:
            start.own("wandb")
            self.dir = str(start.folder)
        self.group = parent.group if parent is not None else (start.folder.name if start.role == "study" else None)
        mode = os.environ.get("WANDB_MODE") or None  # given, not left to a W&B session set up before it changed
        # console "off": its capture of stdout would wrap our console and progress bar; silent: its banner
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or PROJECT, name=start.folder.name,
                              dir=self.dir, config=start.params, group=self.group, job_type=start.role,
                              id=start.resume, resume="allow" if start.resume else None, mode=mode,
                              reinit="create_new", settings=wandb.Settings(silent=True, console="off"))
        self.run_id = self.run.id
        # our step on the x axis: a resumed run logs steps W&B has seen, which its own counter would drop
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.run.log({"step": step, **values})

    def files(self, paths: list[Path]) -> None:
        """Copied into the run's files folder, which W&B uploads at the run's end (or `wandb sync`, offline)."""
        for path in paths:
            copied = Path(self.run.dir) / path.name
            shutil.copyfile(path, copied)
            self.run.save(str(copied), base_path=self.run.dir, policy="end")

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == FINISHED else 1)


# Every tracker --report-to names, made here alone: name -> (class, the module that must import, the extra that
# installs it). `NESTED`: those that give a study's trials a parent (tuning's study run).
BACKENDS: dict[str, tuple[type, str, str]] = {
    "tensorboard": (TensorBoard, "tensorboard", "tensorboard"),
    "mlflow": (Mlflow, "mlflow", "mlflow"),
    "wandb": (Wandb, "wandb", "wandb"),
}
NESTED = ("mlflow", "wandb")


def make(name: str) -> Tracker:
    return BACKENDS[name][0]()


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """These loggers at WARNING for a while (restored after): a library's INFO lines are not the user's."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)
