"""`tune --storage postgresql://...` against a real PostgreSQL server: two processes, one of them on another
host name and killed with kill -9, finish one study; and a server that cannot be used is one line.

The module starts a server of its own (initdb into a temporary folder, 127.0.0.1 on a free port) and stops it
at the end; each test gets a database of its own on it. Without the server binaries (Debian's postgresql
package, which `make setup` installs as root) those tests are skipped and say why.
"""

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from finetune_bert.errors import UserError
from test_search import _cli, _space, _tune, data  # noqa: F401  (data: the toy CSVs, a module fixture)

PASSWORD = "tune-secret"


def _binaries() -> Path | None:
    """The folder holding initdb and postgres: from PATH, else the newest Debian install."""
    found = shutil.which("initdb")
    folders = [Path(found).resolve().parent] if found else []
    folders += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True,
                      key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)])
    return next((f for f in folders if (f / "initdb").is_file() and (f / "postgres").is_file()), None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(server: subprocess.Popen, port: int, log: Path):
    import psycopg

    deadline = time.time() + 60
    while True:
        try:
            return psycopg.connect(f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/postgres", autocommit=True)
        except psycopg.OperationalError:
            if server.poll() is not None or time.time() > deadline:
                pytest.fail(f"the PostgreSQL server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def postgres():
    """A server of this module's own; yields a function that makes a new database and returns its URL."""
    folder = _binaries()
    if folder is None:
        pytest.skip("no PostgreSQL server (initdb and postgres in PATH or /usr/lib/postgresql/*/bin): `make setup` "
                    "installs Debian's postgresql as root")
    pytest.importorskip("psycopg", reason="no psycopg: pip install 'finetune-bert[postgres]'")
    root = Path(tempfile.mkdtemp(prefix="finetune-bert-pg-"))
    user = {}
    if os.geteuid() == 0:  # initdb refuses to run as root: the server runs as nobody, in a folder it owns
        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    (root / "password").write_text(PASSWORD + "\n")
    made = subprocess.run([folder / "initdb", "-D", root / "data", "-U", "postgres", "--pwfile", root / "password",
                           "--auth-host=scram-sha-256", "--auth-local=trust", "--no-locale", "-E", "UTF8",
                           "--no-sync"], cwd=root, capture_output=True, text=True, **user)
    assert made.returncode == 0, made.stderr[-2000:]
    port, log = _free_port(), root / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen([folder / "postgres", "-D", root / "data", "-h", "127.0.0.1", "-p", str(port),
                                   "-k", root, "-c", "fsync=off"], cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                  **user)
    admin = None
    try:
        admin = _wait_for(server, port, log)
        names = iter(range(1000))

        def database() -> str:
            name = f"study{next(names)}"
            admin.execute(f"CREATE DATABASE {name}")
            return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/{name}"
        yield database
    finally:
        if admin is not None:
            admin.close()
        server.send_signal(signal.SIGINT)  # fast shutdown: open sessions are ended, not waited for
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(root, ignore_errors=True)


def test_an_unreachable_server_is_one_line_without_the_password_and_leaves_no_folder(tiny_model, data, tmp_path):
    pytest.importorskip("psycopg", reason="no psycopg: pip install 'finetune-bert[postgres]'")
    port = _free_port()  # nothing listens there
    with pytest.raises(UserError) as caught:
        _tune(tiny_model, data, tmp_path / "study", storage=f"postgresql://tuner:{PASSWORD}@127.0.0.1:{port}/study")
    said = str(caught.value)
    assert said.startswith(f"--storage postgresql://tuner:***@127.0.0.1:{port}/study: cannot reach a database server "
                           f"at 127.0.0.1:{port} (Connection refused); is it running"), said
    assert "\n" not in said and PASSWORD not in said and not (tmp_path / "study").exists()


def test_a_refused_login_and_a_missing_database_are_one_line_each(postgres, tmp_path):
    from finetune_bert.tuning.config import check_storage

    url = postgres()
    assert check_storage(url, tmp_path) is False  # a plain postgresql:// URL opens with the installed driver
    with pytest.raises(UserError) as login:
        check_storage(url.replace(PASSWORD, "wrong"), tmp_path)
    with pytest.raises(UserError) as missing:
        check_storage(url.rsplit("/", 1)[0] + "/nosuchdb", tmp_path)
    assert "refused user 'postgres' (password authentication failed" in str(login.value)
    assert "has no database 'nosuchdb'; create it first (createdb nosuchdb" in str(missing.value)
    assert not [e for e in (login, missing) if "\n" in str(e.value) or "wrong" in str(e.value)]


def _other_host() -> list[str]:
    """A command that runs the rest under another host name (a UTS namespace, as root), so that the process
    looks like one on another machine: its death is found by its stale heartbeat only. [] where it cannot."""
    wrap = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', "other-machine"]
    try:
        works = subprocess.run([*wrap, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        works = False
    return wrap if works else []


def test_two_processes_share_a_study_and_a_kill_9_on_one_host_is_retried_by_the_other(tiny_model, data, postgres,
                                                                                        tmp_path):
    import optuna
    from finetune_bert.tuning.config import driver_url

    url, wrap = postgres(), _other_host()
    space = _space(tmp_path / "space.json", {"lr": {"choices": [0.01, 0.02, 0.03]}})
    options = dict(trials=3, epochs=1, space=str(space), metric="loss")  # no ties: one best trial
    shared = ("--storage", url, "--heartbeat", "1", "--no-report")  # no model report: seconds each new best
    killed = _cli(tiny_model, data, tmp_path / "a", *shared, faults_spec="kill@step:4", wrap=wrap, **options)
    other = _cli(tiny_model, data, tmp_path / "b", *shared, **options)
    log, _ = killed.communicate(timeout=300)
    assert killed.returncode == -9, log[-2000:]
    study = optuna.load_study(study_name="finetune-bert", storage=driver_url(url))
    deadline = time.time() + 120
    while True:  # the other process fails it and queues it again (by its heartbeat alone, under another name)
        alive = other.poll() is None
        if [t for t in study.get_trials() if t.state.name == "FAIL"]:
            break
        assert alive and time.time() < deadline, "the dead trial was never failed and retried"
        time.sleep(0.5)
    again = _cli(tiny_model, data, tmp_path / "a", *shared, wrap=wrap, **options)  # the same command, rerun
    logs = [run.communicate(timeout=300)[0] for run in (other, again)]
    assert [other.returncode, again.returncode] == [0, 0], [text[-2000:] for text in logs]
    assert PASSWORD not in log + "".join(logs)  # the config line shows the URL with *** for it
    trials = study.get_trials()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1, states
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    assert not [t for t in trials if t.state.name == "PRUNED" and not t.user_attrs.get("surplus")]
    dead = next(t for t in trials if t.state.name == "FAIL")
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == dead.params
    assert dead.user_attrs["owner"]["host"] == ("other-machine" if wrap else socket.gethostname())
    # each process keeps the best of its own trials in its --output; both name where the study's best is
    best = study.best_trial
    ran_in = Path(best.user_attrs["kept_in"]).parent
    assert json.loads((ran_in / "best.json").read_text())["trial"] == best.number
    for folder, text in ((tmp_path / "b", logs[0]), (tmp_path / "a", logs[1])):
        place = folder / "best" if folder == ran_in else \
            f"{best.user_attrs['owner']['host']}:{ran_in / 'best'}, kept by the process that ran it"
        assert f"; model in {place}, report in" in text, text[-1000:]
