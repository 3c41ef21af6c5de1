"""The output lock: one run per folder, its holder named, a dead holder's lock taken over, never two winners."""

import json
import os
import socket
import subprocess
import sys

import pytest

from finetune_bert.errors import UserError
from finetune_bert.lock import LOCK_NAME, OutputLock


def _lock_record(pid, host=None, started=None):
    return json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": started,
                       "since": 1700000000.0, "command": "finetune-bert train --data d.csv"})


def _exited_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_lock_held_by_a_live_run_names_its_pid(tmp_path):
    with OutputLock(tmp_path):
        with pytest.raises(UserError, match=rf"^{tmp_path}: another finetune-bert run is using this folder "
                                            rf"\(pid {os.getpid()} on host .*, since 20.*; wait for it"):
            OutputLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_of_an_exited_process_is_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(_lock_record(_exited_pid()))
    with OutputLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_lock_of_a_reused_pid_is_taken_over(tmp_path):
    # Our pid is alive, but the recorded start time is another process's: the holder is gone.
    (tmp_path / LOCK_NAME).write_text(_lock_record(os.getpid(), started=1))
    with OutputLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["started"] != 1


def test_lock_from_another_host_is_refused(tmp_path):
    (tmp_path / LOCK_NAME).write_text(_lock_record(_exited_pid(), host="other-node"))
    with pytest.raises(UserError, match=r"on host other-node, since .*: finetune-bert train --data d.csv\); "
                                        r"it runs on another host, so whether it is still alive cannot be checked"):
        OutputLock(tmp_path).acquire()
    assert "other-node" in (tmp_path / LOCK_NAME).read_text()


def test_garbled_lock_is_held_by_unknown_and_names_the_file(tmp_path):
    (tmp_path / LOCK_NAME).write_text("{not json")
    with pytest.raises(UserError, match=rf"cannot be identified .* delete {tmp_path / LOCK_NAME}$"):
        OutputLock(tmp_path).check()


def test_release_is_idempotent_and_keeps_a_lock_taken_by_another_run(tmp_path):
    lock = OutputLock(tmp_path).acquire()
    (tmp_path / LOCK_NAME).write_text(_lock_record(1))  # e.g. deleted by hand, then taken by pid 1
    lock.release()
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == 1


_RACER = """
import sys, time
from finetune_bert.errors import UserError
from finetune_bert.lock import OutputLock
while time.time() < float(sys.argv[2]):
    pass
try:
    OutputLock(sys.argv[1]).acquire()
except UserError:
    print("lost")
else:
    print("won")
    time.sleep(2)  # hold it while the others try
"""


def test_two_runs_racing_for_a_stale_lock_do_not_both_win(tmp_path):
    import time
    (tmp_path / LOCK_NAME).write_text(_lock_record(_exited_pid()))
    start = str(time.time() + 1.5)
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path), start], stdout=subprocess.PIPE,
                               text=True) for _ in range(4)]
    results = sorted(r.communicate(timeout=60)[0].strip() for r in racers)
    assert results == ["lost", "lost", "lost", "won"]
