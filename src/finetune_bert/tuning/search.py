"""`finetune-bert tune`: hyperparameter search with Optuna that survives kill -9 and never lies about its gain.

The study lives in an Optuna RDB storage (SQLite at OUTPUT/study.db by default), so rerunning the same
command continues it until `--trials` trials have *completed* in total, and several processes (machines,
with a shared database URL) can run one study together. A trial whose process died is found and retried with
the same parameters from its own last checkpoint: at once when the process ran on this host (its pid and
start time are recorded with the trial), through Optuna's heartbeat otherwise. The objective is one named
validation metric, never the test set; the data is read, checked and tokenized once for the whole study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import gc
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from finetune_bert.training import checkpoint, tracking
from finetune_bert.training.checkpoint import TrainState
from finetune_bert.tuning.config import TuneConfig, check_storage, driver_url, first_line
from finetune_bert.evaluation.metrics import greater_is_better, is_better
from finetune_bert.ranks import launched
from finetune_bert.errors import TrainingInterrupted, UserError
from finetune_bert.lock import process_gone, this_process
from finetune_bert.console import console
from finetune_bert.safefiles import check_output_folder, claim, read_marker, refuse_foreign, write_text_atomic
from finetune_bert.tuning.space import Dimension, FreshSampler, read_space, space_json, space_size
from finetune_bert.data.prepared import Prepared
from finetune_bert.training.job import prepare
from finetune_bert.training.train import process_settings, checked, run_training
from finetune_bert.training.exported import write_export
from finetune_bert.tuning.report import TuneResult, short, write_outputs

STUDY_NAME = "finetune-bert"
# What a study folder holds (recorded in its marker, so that a rerun may replace them)
TUNE_FILES = ("study.db", "trials.csv", "best_config.json", "tune_report.md", "history.png", "intermediate.png",
              "importance.png", "best.json", ".best.lock", "best", "trials", "confirm")
# Train options that a rerun of the study may change without changing what its trials compute.
FREE_OPTIONS = {"output", "overwrite", "resume", "debug", "num_threads", "keep_checkpoints", "save_every",
                "save_minutes", "log_every"}


class _Pruned(Exception):
    """Raised by a trial's evaluation hook to stop the run: the pruner judged it worse than the median."""


def tune(cfg: TuneConfig | None = None, **overrides: Any) -> TuneResult:
    """Search `cfg`'s space for the best validation `cfg.metric`; the best model ends in OUTPUT/best."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # heartbeats are "experimental" in Optuna since 2.9: the warning would be printed to every user
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if launched():
        raise UserError("tune runs each trial in one process: start it without torchrun (several tune commands "
                        "on one --storage share a study, one per GPU or machine)")
    cfg = checked(cfg or TuneConfig(), **overrides)
    process_settings(cfg)
    space = read_space(cfg.space, cfg.train_config())
    folder = _check_folder(cfg)
    url = cfg.storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    in_folder = check_storage(url, folder)
    started = time.time()
    # keep_checkpoints 0: a trial keeps the one checkpoint its own resume needs, and removes it when it ends
    # trials draw no report (seconds of figures each) and write no ONNX export; the model kept in best/ gets
    # both (_keep_if_best)
    base = cfg.train_config(output=str(folder / "trials"), keep_checkpoints=0, resume=False, overwrite=False,
                            report=False, export=False)
    prepared = prepare(base)  # bad data stops here, before the study's folder is made
    fingerprint = _fingerprint(cfg, space, prepared)
    if in_folder:  # its database is made inside it
        _make_folder(folder)
    study = _setup_study(cfg, url, folder, space, fingerprint)
    if not in_folder:  # made once a study elsewhere accepted this run: a refused run leaves no folder behind
        _make_folder(folder)
    console.say(prepared.report_text)
    if (size := space_size(space)) is not None and size < cfg.trials:
        console.warn(f"the search space holds {size} distinct configuration{'s' if size != 1 else ''}, fewer than "
                     f"--trials {cfg.trials}: once each has been tried, trials repeat them")
    with _storage_errors(url), tracking.study_run(cfg, folder):  # each trial a child of the study's tracked run
        # Trials never see the test split: their objective is validation alone (the confirm runs score test).
        _Search(cfg, study, space, base, prepared.without("test"), folder).run(started)
        confirm = None
        if cfg.confirm_seeds:
            from finetune_bert.tuning.confirm import confirm_seeds
            confirm = confirm_seeds(cfg, study, space, base, prepared, folder, started=started)
        return write_outputs(cfg, study, space, folder, confirm, time.time() - started)


def _check_folder(cfg: TuneConfig) -> Path:
    """The study's folder: new, empty, or one a study of ours wrote (its marker lists study files)."""
    folder = check_output_folder(cfg.output, "--output")
    if folder.is_dir():
        ours = read_marker(folder)["files"]
        if "train_log.jsonl" in ours:
            raise UserError(f"--output {folder} holds a training run, not a study; choose another folder for tune")
        refuse_foreign(folder, ours, cfg.overwrite, "the study")
    return folder


def _make_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    claim(folder, TUNE_FILES)  # before they exist, as a run folder owns its files


def _fingerprint(cfg: TuneConfig, space: tuple[Dimension, ...], prepared: Prepared) -> dict[str, Any]:
    """What makes two runs of `tune` one study: the data, every fixed train option, the space and the metric."""
    ds = prepared.ds
    fixed = {k: v for k, v in checkpoint.fingerprint(cfg.train_config(), ds.train.texts, ds.train.labels,
                                                     ds.val.texts).items() if k not in FREE_OPTIONS}
    searched = {d.name for d in space}
    return {**{k: v for k, v in fixed.items() if k not in searched}, "space": space_json(space)}


@contextlib.contextmanager
def _storage_errors(url: str) -> Iterator[None]:
    """A database that became read-only after the checks: Optuna reports it as "invalid data in the commit";
    said as what it is."""
    try:
        yield
    except Exception as exc:
        chain, seen = [], exc
        while seen is not None and len(chain) < 10:
            chain.append(str(seen))
            seen = seen.__cause__ or seen.__context__
        if not any("readonly database" in text for text in chain):
            raise
        where = url.split("///", 1)[-1] if url.startswith("sqlite") else f"--storage {url}"
        raise UserError(f"{where}: the study's database is not writable, so the study cannot go on; make it "
                        "writable, or choose a new --output") from None


def _setup_study(cfg: TuneConfig, url: str, folder: Path, space: tuple[Dimension, ...],
                 fingerprint: dict[str, Any]):
    import optuna
    from optuna.storages import RDBStorage

    # SQLite under several processes: wait for the write lock instead of failing with "database is locked"
    # (optuna#4994); every other RDB has row locks of its own.
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    direction = "maximize" if greater_is_better(cfg.metric) else "minimize"
    for attempt in range(5):
        try:
            with _storage_errors(url):
                storage = RDBStorage(driver_url(url), engine_kwargs=engine, heartbeat_interval=cfg.heartbeat,
                                     grace_period=2 * cfg.heartbeat, heartbeat_stale_trial_callback=_retry)
                study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction=direction,
                                            load_if_exists=True, sampler=FreshSampler(space, cfg.seed),
                                            pruner=_pruner(cfg))
            break
        except UserError:
            raise
        except Exception as exc:  # sqlalchemy's errors (unreachable server, bad URL, no such driver)
            # Two processes starting one study at once race to create its tables (IntegrityError on
            # alembic_version, or OperationalError "table ... already exists" when both create the schema):
            # the loser finds them made a moment later.
            raced = type(exc).__name__ == "IntegrityError" or "already exists" in str(exc)
            if raced and attempt < 4:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise UserError(f"--storage {url}: cannot open the study there ({type(exc).__name__}: {first_line(exc)})") from None
    if study.direction.name.lower() != direction:
        raise UserError(f"--storage {url}: the study there was made to {study.direction.name.lower()} its metric, and "
                        f"--metric {cfg.metric} is to {direction}; use that study's --metric, or a new --output/--storage")
    saved = study.user_attrs.get("fingerprint")
    if saved is None:
        with _storage_errors(url):
            study.set_user_attr("fingerprint", fingerprint)
    elif diff := checkpoint.differences(saved, fingerprint):
        raise UserError(f"--output {folder}: its study was made with other arguments, data or search space; "
                        f"differences: {'; '.join(diff)}. Use the original arguments, or a new --output")
    return study


def _pruner(cfg: TuneConfig):
    import optuna

    if not cfg.prune:
        return optuna.pruners.NopPruner()
    # Compared at the same evaluation (the first, the second, ...), after 3 complete trials.
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0, interval_steps=1)


def _retry(study, trial) -> None:
    """A trial that died (stale heartbeat, or its process gone): queue it again with the same parameters and
    folder, so it resumes from its own checkpoint. Its dead owner is not copied: a live process takes it."""
    import optuna

    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    study.add_trial(optuna.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={k: v for k, v in trial.user_attrs.items() if k != "owner"},
        system_attrs={"failed_trial": history[0], "retry_history": history}))


def retry_dead_trials(study) -> int:
    """Fail and retry every RUNNING trial whose process ran on this host and is gone; how many there were."""
    import optuna
    from optuna.trial import TrialState

    storage, found = study._storage, 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("owner")
        if not owner or not process_gone(owner):
            continue
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                _retry(study, storage.get_trial(trial._trial_id))
                found += 1
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process failed it first
    return found


class _Search:
    """The search loop: one trial at a time until `trials` have completed, whoever completed them."""

    def __init__(self, cfg: TuneConfig, study, space: tuple[Dimension, ...], base, prepared: Prepared, folder: Path):
        self.cfg, self.study, self.space, self.base, self.prepared, self.folder = cfg, study, space, base, prepared, folder
        self.failures = 0
        self.seconds: list[float] = []  # this process's trials, for the ETA

    def counts(self) -> tuple[int, int]:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        return done, len(trials) - done

    def run(self, started: float) -> None:
        from tqdm.auto import tqdm

        # On a terminal, an overall bar with tqdm's ETA; in a log, the "[k/N trials completed]" lines instead.
        self.bar = tqdm(total=self.cfg.trials, initial=min(self.counts()[0], self.cfg.trials), unit="trial",
                        desc="tune", dynamic_ncols=True, disable=not sys.stderr.isatty())
        try:
            self._run(started)
        finally:
            self.bar.close()

    def _run(self, started: float) -> None:
        import optuna

        while True:
            if retry_dead_trials(self.study):
                console.say("found a trial whose process is gone: it is retried from its own last checkpoint")
            done, running = self.counts()
            if done >= self.cfg.trials:
                return
            if self.cfg.timeout is not None and time.time() - started > self.cfg.timeout:
                console.say(f"--timeout {self.cfg.timeout:g} s reached: {done} of {self.cfg.trials} trials completed; "
                    "run the same command again to continue")
                return
            if done + running >= self.cfg.trials:  # other processes run the last trials: wait for them
                optuna.storages.fail_stale_trials(self.study)
                time.sleep(min(2.0, self.cfg.heartbeat / 2))
                continue
            began = time.time()
            try:
                self.study.optimize(self.objective, n_trials=1, catch=(_TrialFailed,), gc_after_trial=True)
            except TrainingInterrupted:
                self._requeue_interrupted()
                raise TrainingInterrupted(f"stopped: the trial's checkpoint is saved; run the same command again to "
                                          f"continue the study in {self.folder} (that trial resumes from it)") from None
            self.seconds.append(time.time() - began)
            self._after_trial()

    def _requeue_interrupted(self) -> None:
        """Ctrl-C or SIGTERM inside a trial: Optuna has marked it FAIL; queue it again, so that the next run
        resumes it from the checkpoint the interrupted training just saved."""
        from optuna.trial import TrialState

        last = self.study.get_trials(deepcopy=False)[-1]
        if last.state == TrialState.FAIL and last.user_attrs.get("owner") == this_process():
            _retry(self.study, last)

    def _after_trial(self) -> None:
        from optuna.trial import TrialState

        last = self.study.get_trials(deepcopy=False)[-1]
        self.failures = self.failures + 1 if last.state == TrialState.FAIL else 0
        if self.failures >= 3:
            raise UserError(f"3 trials in a row failed; the last: {last.user_attrs.get('failure', 'unknown reason')}")
        done, _ = self.counts()
        self.bar.n = min(done, self.cfg.trials)
        self.bar.refresh()
        left = max(0, self.cfg.trials - done)
        eta = sum(self.seconds) / len(self.seconds) * left
        if self.bar.disable:  # the bar shows the same on a terminal
            console.say(f"[{done}/{self.cfg.trials} trials completed]" + (f" about {eta / 60:.1f} min to go" if left else ""))

    def objective(self, trial) -> float:
        import optuna

        params = {d.name: d.suggest(trial) for d in self.space}
        name = trial.user_attrs.get("folder") or f"trial-{trial.number:04d}"
        trial.set_user_attr("folder", name)
        trial.set_user_attr("owner", this_process())
        if self._surplus(trial):
            trial.set_user_attr("surplus", True)  # another process completed the last trial meanwhile
            raise optuna.TrialPruned()
        out = self.folder / "trials" / name
        cfg = dataclasses.replace(self.base, output=str(out), resume=out.exists(), **params)
        resumed = bool(checkpoint.complete_checkpoints(out))
        console.say(f"trial {trial.number}{' (resumed from its checkpoint)' if resumed else ''}: "
            + ", ".join(f"{k} {short(v)}" for k, v in params.items()))
        return self._train(trial, cfg, out)

    def _surplus(self, trial) -> bool:
        done, running = self.counts()
        return done + running > self.cfg.trials and trial.number == max(
            t.number for t in self.study.get_trials(deepcopy=False) if t.state.name == "RUNNING")

    def _train(self, trial, cfg, out: Path) -> float:
        import optuna

        metric, started = self.cfg.metric, time.time()

        def on_eval(state: TrainState, metrics: dict[str, Any]) -> None:
            trial.set_user_attr("steps", [state.step, state.total_steps])
            value = metrics[metric]
            if value is None:
                return
            trial.report(value, len(state.history))
            if self.cfg.prune and trial.should_prune():
                raise _Pruned(f"at evaluation {len(state.history)} (step {state.step} of {state.total_steps})")
        try:
            with console.quiet():
                result = run_training(cfg, self.prepared, on_eval=on_eval)
        except _Pruned as stop:
            self._drop(out)
            trial.set_user_attr("seconds", round(time.time() - started, 1))
            console.say(f"trial {trial.number}: pruned {stop}")
            raise optuna.TrialPruned(str(stop)) from None
        except UserError as exc:  # out of memory even at micro-batch 1, NaN steps in a row, ...
            self._drop(out)
            trial.set_user_attr("failure", str(exc))
            console.say(f"trial {trial.number}: failed: {exc}")
            raise _TrialFailed(str(exc)) from None
        finally:
            gc.collect()
            _empty_cuda_cache()
        value = result.metrics["validation"][metric]
        trial.set_user_attr("seconds", round(time.time() - started, 1))
        kept = self._keep_if_best(out, trial.number, value)
        if kept:  # for the processes of this study with another --output (another machine): where its model is
            trial.set_user_attr("kept_in", str((self.folder / "best").resolve()))
        console.say(f"trial {trial.number}: validation {metric} {value:.4f} in {time.time() - started:.0f}s"
            + (" (best so far: kept in best/)" if kept else ""))
        return value

    def _keep_if_best(self, out: Path, number: int, value: float) -> bool:
        """OUTPUT/best becomes this trial's model folder if it beats the one there; otherwise the trial's folder
        goes. Under a lock file, since several processes may finish trials at once."""
        with open(self.folder / ".best.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = self.folder / "best.json"
            held = json.loads(record.read_text()) if record.is_file() else None
            if held is not None and not is_better(self.cfg.metric, value, held["value"]):
                self._drop(out)
                return False
            best, old = self.folder / "best", self.folder / ".best-old"
            shutil.rmtree(old, ignore_errors=True)
            if best.exists():
                best.rename(old)
            out.rename(best)
            write_text_atomic(record, json.dumps({"trial": number, "value": value}) + "\n")
            if self.cfg.report:
                from finetune_bert.evaluation.report_page import rebuild
                rebuild(str(best))
            if self.cfg.export:
                with console.quiet():  # a failure still warns
                    write_export(best)
            shutil.rmtree(old, ignore_errors=True)
            return True

    @staticmethod
    def _drop(out: Path) -> None:
        shutil.rmtree(out, ignore_errors=True)


class _TrialFailed(Exception):
    """A trial that cannot run (its reason is in the trial's `failure` attribute); the study goes on."""


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
