"""--report-to: which experiment trackers a run logs to, checked before anything runs, and `Tracking`, the one
object that hands them the run's log records, its final metrics and its files.

Tracking never breaks training: a library that is missing is refused with the checks of the options, before the
data is read or a folder is written; a tracker that fails once the run is under way (a server that went down, a
full disk) is said in one warning and dropped, and the run goes on (train_log.jsonl and metrics.json hold
everything). Rank 0 alone tracks under torchrun: it alone holds a RunFolder, and the others' Follower logs
nothing. `study_run` makes tune's study a run of its own, the parent of every training run inside it.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from finetune_bert.console import console
from finetune_bert.errors import TrainingInterrupted
from finetune_bert.safefiles import claim, write_text_atomic
from finetune_bert.training.trackers import BACKENDS, FAILED, FINISHED, KILLED, NESTED, Start, Tracker, make

RUN_IDS = "tracking.json"  # each tracker's run id, so that --resume continues the same runs
CHOICES = ("none", *BACKENDS)
NAMES = {"tensorboard": "TensorBoard", "mlflow": "MLflow", "wandb": "Weights & Biases"}
# metrics.json's parts that are tables or figures, not numbers to chart
_NOT_METRICS = {"reliability", "confidence_histogram", "by_length", "reading", "confusion_matrix", "labels"}
_STUDY: contextvars.ContextVar["Tracking | None"] = contextvars.ContextVar("finetune_bert_study", default=None)


def chosen(report_to: str | None) -> tuple[str, ...]:
    """The trackers a run reports to: those named, or by default TensorBoard where it is installed."""
    if report_to is None:
        return ("tensorboard",) if _installed("tensorboard") else ()
    names = dict.fromkeys(n.strip().lower() for n in report_to.split(",") if n.strip())
    return tuple(n for n in names if n in BACKENDS)


def problems(report_to: str | None, mlflow_uri: str | None) -> list[str]:
    """Every problem of --report-to and --mlflow-uri, each one line; a missing library names its extra."""
    names = [n.strip().lower() for n in (report_to or "").split(",") if n.strip()]
    if report_to is not None and report_to.strip() and not names:  # an empty one: range_problems says it
        return ["--report-to names no tracker: none, or some of tensorboard, mlflow, wandb (comma-separated)"]
    if unknown := [n for n in names if n not in CHOICES]:
        return [f"--report-to: no tracker named {', '.join(unknown)}; choose none, or some of tensorboard, mlflow, "
                "wandb (comma-separated)"]
    if "none" in names and len(set(names)) > 1:
        return ["--report-to none means no tracker: drop it or the trackers named with it"]
    found = [f"--report-to {name} needs {NAMES[name]}, which is not installed here: "
             f"pip install 'finetune-bert[{BACKENDS[name][2]}]'" for name in names
             if name in BACKENDS and not _installed(BACKENDS[name][1])]
    if mlflow_uri is not None and "mlflow" not in names:
        found.append("--mlflow-uri says where MLflow logs: add mlflow to --report-to, or drop it")
    if "wandb" in names and not found:
        found += _wandb_credentials()
    return found


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules, which import refuses
        return False


def _wandb_credentials() -> list[str]:
    """Online W&B with no API key would ask for one at the first log record, in the middle of training, or fail
    there without a terminal: refused now. W&B's own lookup (environment, .netrc, settings), without a prompt,
    without the network; where W&B has moved it, wandb.init says what is missing instead."""
    mode = (os.environ.get("WANDB_MODE") or "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return []
    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth

        settings = wandb_setup.singleton().settings
        if not mode and (settings._offline or settings._noop):  # `wandb offline` in a settings file
            return []
        if wbauth.authenticate_session(host=settings.base_url, source="finetune-bert", prompt=False,
                                       update_session=False):
            return []
    except (ImportError, AttributeError, TypeError):
        return []
    except Exception as exc:  # a key that is there but malformed
        return [f"--report-to wandb: {(str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}"]
    return ["--report-to wandb: no W&B API key here; run `wandb login` or set WANDB_API_KEY, or log offline "
            "with WANDB_MODE=offline (docs/tracking-and-hub.md)"]


def process_settings(report_to: str | None) -> None:
    """What MLflow's client does by default that a training run must not: retry a request for minutes (7 tries,
    backing off to 2 minutes) while training waits, and print each run's address on stdout, where results go.
    Set only where the user has not set them."""
    if "mlflow" in chosen(report_to):
        for key, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                           ("MLFLOW_HTTP_REQUEST_TIMEOUT", "15"), ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")):
            os.environ.setdefault(key, value)


class Tracking:
    """The trackers of one run, started by its "resume" or "start" record, written once the run was accepted (a
    --resume that does not match leaves no run behind in any tracker) and before the loop's clock starts; each
    record's numbers are logged as `event/name` at its step, as TensorBoard always drew them. `folder`: the
    RunFolder, or anything with its `path`, `own` and `write_text`."""

    def __init__(self, names: tuple[str, ...], params: dict[str, Any], *, mlflow_uri: str | None = None,
                 parent: Tracking | None = None, role: str = "train"):
        self.names, self.params, self.mlflow_uri, self.parent, self.role = names, params, mlflow_uri, parent, role
        self.live: dict[str, Tracker] = {}
        self.started, self.step = False, 0

    @classmethod
    def of(cls, cfg: Any) -> Tracking | None:
        """A training run's, from its TrainConfig; inside a study (study_run), a trial of it."""
        names = chosen(cfg.report_to)
        parent = _STUDY.get()
        return cls(names, cfg.to_json(), mlflow_uri=cfg.mlflow_uri, parent=parent,
                   role="train" if parent is None else "trial") if names else None

    def record(self, folder: Any, event: str, fields: dict[str, Any]) -> None:
        if not self.started and (event in ("resume", "start") or "step" in fields):
            self.start(folder, resumed=event == "resume")
        if "step" not in fields:
            return
        self.step = fields["step"]
        values = {f"{event}/{k}": float(v) for k, v in fields.items() if k != "step" and _number(v)}
        if values:
            self._each("logging metrics", lambda tracker: tracker.metrics(values, self.step))

    def start(self, folder: Any, *, resumed: bool) -> None:
        self.started = True
        ids = _read_ids(folder.path) if resumed else {}
        for name in self.names:
            parent = self.parent.live.get(name) if self.parent is not None and name in NESTED else None
            if self.parent is not None and name in NESTED and parent is None:
                continue  # the study's own run of it failed (said then): its trials are not logged alone
            tracker = make(name)
            begin = Start(Path(folder.path), self.params, folder.own, ids.get(name), parent, self.mlflow_uri, self.role)
            if self._guarded(tracker, "starting", lambda: tracker.start(begin)):
                self.live[name] = tracker
                if tracker.run_id:  # a run somewhere else than the folder: where
                    console.say(f"logging to {tracker.name}: {_where(tracker)}")
        ids = {name: tracker.run_id for name, tracker in self.live.items() if tracker.run_id}
        if ids:
            try:
                folder.write_text(RUN_IDS, json.dumps(ids, indent=2) + "\n")
            except Exception as exc:  # a disk error: the run goes on; a --resume would start new tracker runs
                console.warn(f"could not record the trackers' run ids in {RUN_IDS} ({_reason(exc)})")

    def finish(self, folder: Any, metrics: dict[str, Any], files: tuple[str, ...]) -> None:
        """The run's final numbers (validation of the best model, test, calibration, train) at its last step,
        and `files` of the folder that exist, as artifacts."""
        values = final_metrics(metrics)
        paths = [Path(folder.path) / name for name in files if (Path(folder.path) / name).is_file()]
        self._each("logging the final metrics", lambda tracker: tracker.metrics(values, self.step))
        self._each("uploading files", lambda tracker: tracker.files(paths))

    def close(self, error: BaseException | None = None) -> None:
        status = FINISHED if error is None else KILLED if isinstance(error, (TrainingInterrupted, KeyboardInterrupt)) \
            else FAILED
        self._each("closing the run", lambda tracker: tracker.close(status))
        self.live.clear()

    def _each(self, doing: str, call: Callable[[Tracker], None]) -> None:
        for name, tracker in list(self.live.items()):
            if not self._guarded(tracker, doing, lambda: call(tracker)):
                del self.live[name]

    def _guarded(self, tracker: Tracker, doing: str, call: Callable[[], None]) -> bool:
        """False, and said once, when the tracker failed: it is not called again in this run."""
        try:
            call()
            return True
        except Exception as exc:
            when = f" at step {self.step}" if self.step else ""
            console.warn(f"{tracker.name} failed while {doing}{when} ({_reason(exc)}); the run goes on without it "
                         "(train_log.jsonl and metrics.json hold everything)")
            return False


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """metrics.json's numbers, flattened to `part/name/...` (per-class and per-label ones included)."""
    found: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key not in _NOT_METRICS:
                    walk(f"{prefix}/{key}", inner)
        elif _number(value):
            found[prefix] = float(value)
    for part in ("validation", "test", "calibration", "train", "best_step", "seconds_total"):
        if part in metrics:
            walk(part, metrics[part])
    return found


@contextlib.contextmanager
def study_run(cfg: Any, folder: Path) -> Iterator[None]:
    """tune's study as a run of its own on the trackers that nest (MLflow; W&B groups), continued when the study
    is: every training run inside (its trials, the confirm runs) becomes its child. At the end, the study's
    outputs that exist as artifacts."""
    names = tuple(n for n in chosen(cfg.report_to) if n in NESTED)
    if not names:
        yield
        return
    study = Tracking(names, cfg.to_json(), mlflow_uri=cfg.mlflow_uri, role="study")
    study.start(_StudyFolder(folder), resumed=True)
    token, error = _STUDY.set(study), None
    try:
        yield
    except BaseException as exc:
        error = exc
        raise
    finally:
        _STUDY.reset(token)
        if error is None:
            best = _read_json(folder / "best.json")
            if best is not None and _number(best.get("value")):
                study._each("logging the best trial", lambda tracker: tracker.metrics({"best/value": best["value"]}, 0))
            study.finish(_StudyFolder(folder), {}, ("tune_report.md", "trials.csv", "best_config.json"))
        study.close(error)


class _StudyFolder:
    """A study's folder as Tracking writes into it: claimed in its marker, as tune owns its files."""

    def __init__(self, path: Path):
        self.path = path

    def own(self, *names: str) -> None:
        claim(self.path, names)

    def write_text(self, name: str, text: str) -> Path:
        self.own(name)
        return write_text_atomic(self.path / name, text)


def _read_ids(folder: Path) -> dict[str, str]:
    ids = _read_json(Path(folder) / RUN_IDS) or {}
    return {k: v for k, v in ids.items() if isinstance(v, str)}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _where(tracker: Any) -> str:
    if tracker.name == "MLflow":
        return f"run {tracker.run_id} in {tracker.uri}"
    mode = f"offline, in {Path(tracker.run.dir).parent}" if tracker.run.offline else tracker.run.url
    return f"run {tracker.run_id} ({mode})"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not (
        isinstance(value, float) and math.isinf(value))


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
