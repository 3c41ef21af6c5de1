"""`tune`'s options: every train option, plus the study's; and the check of --storage, made before any work."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_bert.errors import UserError
from finetune_bert.options import opt
from finetune_bert.training.config import TrainConfig


@dataclass
class TuneConfig(TrainConfig):
    """`tune`: every train option, fixed for all trials except those the search space names; `output` is the
    study's folder (study.db, trials.csv, best/, ...)."""

    trials: int = opt(20, "Completed trials to reach in total, across reruns and processes sharing the study.",
                      at_least=1)
    timeout: float | None = opt(None, "Start no new trial after this many seconds of this process.", at_least=0)
    storage: str | None = opt(None, "An Optuna RDB URL (sqlite:///..., postgresql://..., mysql://...) shared by every "
                              "process of one study; default sqlite:///OUTPUT/study.db.")
    space: str | None = opt(None, "Search space file (JSON or YAML): option -> {low, high[, log]} or {choices}; "
                            "default lr 1e-5-1e-4 (log), batch size 16/32, epochs 2-4, warm-up 0/0.06/0.1, "
                            "weight decay 0/0.01/0.1; with --lora, lr 1e-4-1e-3 and also LoRA rank 4/8/16 and "
                            "alpha 8/16/32.")
    prune: bool = opt(True, "Stop a trial whose validation metric is below the median of earlier trials at the same "
                      "evaluation (after 3 trials and its first evaluation); --no-prune runs every trial to the end.")
    confirm_seeds: int = opt(3, "After the search, train the best and the default configuration with this many seeds "
                             "each and report the gain as mean +- std (0: skip).", at_least=0)
    heartbeat: int = opt(30, "Seconds between a trial's heartbeats; a trial silent for twice this is taken as dead "
                         "(another host's; on this host a killed trial is found at once) and retried.", at_least=1)

    def problems(self) -> list[str]:
        found = TrainConfig.problems(self)
        if self.nproc_per_node != 1:
            found.append("--nproc-per-node is for train; to search with several processes, run several tune "
                         "commands on one --storage (each trial runs in one process)")
        return found

    def train_config(self, **changes: Any) -> TrainConfig:
        """The train options alone (what a trial, or best_config.json, is)."""
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{**{k: v for k, v in dataclasses.asdict(self).items() if k in names}, **changes})


def check_storage(url: str, folder: Path) -> bool:
    """Refuse, before the data is read and before any folder is made, a storage that cannot hold the study: a
    malformed URL, a server that cannot be reached, an SQLite file (or its folder) that cannot be written.
    Creates nothing; True when the database is an SQLite file inside the study's folder (made with it)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy's ArgumentError, or a ValueError from a bad port
        raise UserError(f"--storage {url}: not a database URL ({first_line(exc)}); e.g. sqlite:///study.db or "
                        "postgresql://user:password@host/name") from None
    if parsed.get_backend_name() == "sqlite":
        return _check_sqlite(url, parsed.database, folder)
    engine = None
    try:  # a connection only: no table is made before the command is sure to run
        engine = create_engine(url)
        with engine.connect():
            pass
    except Exception as exc:  # no such driver, unreachable server, refused login, ...
        raise UserError(f"--storage {url}: cannot open the study there ({type(exc).__name__}: {first_line(exc)})") from None
    finally:
        if engine is not None:
            engine.dispose()
    return False


def _check_sqlite(url: str, database: str | None, folder: Path) -> bool:
    if not database or database == ":memory:" or database.startswith("file:"):
        return False
    db = Path(database).resolve()
    inside = db.parent == folder.resolve() or folder.resolve() in db.parents
    if db.is_dir():
        raise UserError(f"--storage {url}: {db} is a folder, not a database file")
    if db.exists() and not os.access(db, os.R_OK | os.W_OK):
        raise UserError(f"{db}: the study's database is not writable, so the study cannot go on; make it writable "
                        "(chmod u+w), or choose a new --output")
    if not db.parent.is_dir():
        if inside:
            return True
        raise UserError(f"--storage {url}: cannot open the study there (the folder {db.parent} does not exist)")
    if not os.access(db.parent, os.W_OK | os.X_OK):
        raise UserError(f"{db}: its folder {db.parent} is not writable, and SQLite writes its journal beside the "
                        "database; make the folder writable, or choose another --storage or --output")
    return inside


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
