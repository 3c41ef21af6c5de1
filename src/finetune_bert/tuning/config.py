"""`tune`'s options: every train option, plus the study's; and the check of --storage, made before any work."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
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

    def to_json(self) -> dict[str, Any]:
        # what is printed and logged (the config line, a tracker's parameters): no password of --storage's
        return {**TrainConfig.to_json(self), "storage": self.storage and shown(self.storage)}

    def train_config(self, **changes: Any) -> TrainConfig:
        """The train options alone (what a trial, or best_config.json, is)."""
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{**{k: v for k, v in dataclasses.asdict(self).items() if k in names}, **changes})


def check_storage(url: str, folder: Path) -> bool:
    """Refuse, before the data is read and before any folder is made, a storage that cannot hold the study: a
    malformed URL, a missing driver, a server that cannot be reached, a refused login, a missing database, an
    SQLite file (or its folder) that cannot be written.
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
    target, engine = make_url(driver_url(url)), None
    # libpq waits out the operating system's TCP retries (minutes) for a host that drops packets
    timeout = {"connect_timeout": 10} if target.get_backend_name() == "postgresql" and \
        "connect_timeout" not in target.query else {}
    try:  # a connection only: no table is made before the command is sure to run
        engine = create_engine(target, connect_args=timeout)
        with engine.connect():
            pass
    except Exception as exc:  # no such driver, unreachable server, refused login, ...
        raise UserError(f"--storage {shown(url)}: {_connection_problem(target, exc)}") from None
    finally:
        if engine is not None:
            engine.dispose()
    return False


def driver_url(url: str) -> str:
    """`url` as SQLAlchemy is to open it. postgresql:// (or postgres://) names no driver, and SQLAlchemy's
    default for it is psycopg2 before 2.1 and psycopg 3 since: it gets whichever of the two is installed,
    psycopg 3 (the postgres extra) first. Any other URL is left as it is."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    for module in ("psycopg", "psycopg2"):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{module}://{rest}"
    raise UserError(f"--storage {shown(url)}: PostgreSQL needs a driver: pip install 'finetune-bert[postgres]'")


def _connection_problem(target, exc: BaseException) -> str:
    """Why the database could not be opened, in words: no driver, the server unreachable, the login refused,
    no such database; otherwise the driver's own first line."""
    if isinstance(exc, ImportError):  # a driver named in the URL (postgresql+psycopg2://, mysql://) is missing
        extra = "pip install 'finetune-bert[postgres]' and name no driver (postgresql://...), or install that one" \
            if target.get_backend_name() == "postgresql" else "install it, or name an installed driver in the URL"
        return f"its database driver is not installed ({first_line(exc)}); {extra}"
    text = first_line(getattr(exc, "orig", None) or exc)  # the driver's error, without SQLAlchemy's wrapping
    # libpq: 'connection failed: connection to server at "host", port 5432 failed: FATAL:  <the reason>'
    reason = re.sub(r"^FATAL:\s*", "", text.rsplit(" failed: ", 1)[-1])
    where = f"{target.host or 'localhost'}" + (f":{target.port}" if target.port else "")
    said = reason.lower()
    if re.search(r"authentication failed|no password supplied|access denied|role \".*\" does not exist", said):
        return (f"the server at {where} refused user '{target.username}' ({reason}); check the user and the "
                "password (in the URL, or PGPASSWORD, or ~/.pgpass)")
    if re.search(r"database \".*\" does not exist|unknown database", said):
        return (f"the server at {where} has no database '{target.database}'; create it first (createdb "
                f"{target.database}, or CREATE DATABASE {target.database};)")
    if re.search(r"connection refused|translate host|resolve host|timeout expired|no route to host|"
                 r"network is unreachable|can't connect", said):
        return (f"cannot reach a database server at {where} ({reason}); is it running, and does it accept "
                "connections from this machine?")
    return f"cannot open the study there ({type(exc).__name__}: {text})"


def shown(url: str) -> str:
    """The URL as a message prints it: a password in it as ***."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL: nothing in it to hide
        return url


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
