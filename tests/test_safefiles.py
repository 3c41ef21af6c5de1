"""Safe files: atomic replacement, one-line disk errors, output checks before any work, the run lock."""

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_bert.errors import UserError
from finetune_bert.safefiles import (LOCK_NAME, OutputLock, atomic_output, check_output_file, check_output_folder,
                                     disk_error, same_file, write_text_atomic)


@pytest.fixture
def read_only_folder():
    """make(folder): a folder nobody can create files in, root included (chattr +i: root ignores mode bits)."""
    made = []

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
        except OSError:
            pytest.skip("chattr is not available")
        if done.returncode:
            pytest.skip(f"chattr +i does not work here: {done.stderr.strip()}")
        made.append(folder)
        return folder

    yield make
    for folder in made:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)


def _hidden_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_atomic_output_leaves_old_file_whole_when_writer_fails_half_way(tmp_path):
    target = write_text_atomic(tmp_path / "metrics.json", "old\n")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(target) as handle:
            handle.write("new, half written")
            raise RuntimeError("boom")
    assert target.read_text() == "old\n"
    assert _hidden_leftovers(tmp_path) == []


def test_atomic_output_disk_error_is_one_line_and_keeps_old_file(tmp_path):
    target = write_text_atomic(tmp_path / "metrics.json", "old\n")
    with pytest.raises(UserError) as caught:
        with atomic_output(target) as handle:
            handle.write("new")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(caught.value) == f"{target}: cannot write this file (disk full; No space left on device)"
    assert target.read_text() == "old\n" and _hidden_leftovers(tmp_path) == []


def test_atomic_output_creates_missing_parents(tmp_path):
    target = tmp_path / "a" / "b" / "out.csv"
    with atomic_output(target, newline="") as handle:
        handle.write("x\r\n")
    assert target.read_bytes() == b"x\r\n"


def test_atomic_output_file_is_0644_under_umask_022(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "w.bin", "wb") as handle:
            handle.write(b"\0")
    finally:
        os.umask(old)
    assert (tmp_path / "w.bin").stat().st_mode & 0o777 == 0o644  # mkstemp alone would give 0600


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "disk full"), (errno.EDQUOT, "disk full"), (errno.EFBIG, "file-size limit"),
    (errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied"), (errno.EPERM, "permission denied"),
    (errno.ENOENT, "no such file"), (errno.EISDIR, "is a folder"), (errno.ENOTDIR, "not a folder")])
def test_disk_error_is_one_plain_line(code, words):
    message = str(disk_error(OSError(code, os.strerror(code)), "/out/model", "write the model"))
    assert message.startswith("/out/model: cannot write the model (") and words in message and "\n" not in message


def test_same_file_same_path_symlink_and_hard_link(tmp_path):
    data = write_text_atomic(tmp_path / "data.csv", "a\n")
    (tmp_path / "link.csv").symlink_to(data)
    os.link(data, tmp_path / "hard.csv")
    other = write_text_atomic(tmp_path / "other.csv", "a\n")
    assert same_file(data, data) and same_file(tmp_path / "link.csv", data) and same_file(tmp_path / "hard.csv", data)
    assert not same_file(data, other) and not same_file(tmp_path / "missing.csv", data)


def test_check_output_file_refuses_a_folder(tmp_path):
    with pytest.raises(UserError, match=rf"^--output-file {tmp_path}: is a folder"):
        check_output_file(tmp_path, "--output-file")


def test_check_output_file_refuses_a_device():
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with pytest.raises(UserError, match=r"^--out /dev/full: is not a regular file"):
        check_output_file("/dev/full", "--out")


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_check_output_file_refuses_a_link_to_the_input(tmp_path, link):
    data = write_text_atomic(tmp_path / "data.csv", "text,label\n")
    out = tmp_path / "predictions.csv"
    out.symlink_to(data) if link == "symlink" else os.link(data, out)
    with pytest.raises(UserError, match=rf"^--out {out}: is the input {data}; writing it would overwrite"):
        check_output_file(out, "--out", inputs=[None, data])
    assert data.read_text() == "text,label\n"


def test_check_output_file_refuses_a_file_as_parent(tmp_path):
    write_text_atomic(tmp_path / "notes.txt", "mine")
    with pytest.raises(UserError, match=rf"^--out {tmp_path}/notes.txt/x/p.csv: {tmp_path}/notes.txt is a file"):
        check_output_file(tmp_path / "notes.txt" / "x" / "p.csv", "--out")


def test_check_output_file_refuses_a_read_only_folder(tmp_path, read_only_folder):
    folder = read_only_folder(tmp_path / "ro")
    with pytest.raises(UserError, match=rf"^--out {folder}/new/p.csv: cannot write in folder {folder} \("):
        check_output_file(folder / "new" / "p.csv", "--out")


def test_check_output_file_accepts_missing_parents_and_creates_nothing(tmp_path):
    assert check_output_file(tmp_path / "a" / "b.csv", "--out") == tmp_path / "a" / "b.csv"
    assert list(tmp_path.iterdir()) == []  # neither the parent nor a probe file is left


def test_check_output_folder_refuses_a_file_and_a_read_only_ancestor(tmp_path, read_only_folder):
    write_text_atomic(tmp_path / "f", "mine")
    with pytest.raises(UserError, match=rf"^--output {tmp_path}/f: is a file, not a folder"):
        check_output_folder(tmp_path / "f", "--output")
    folder = read_only_folder(tmp_path / "ro")
    with pytest.raises(UserError, match=rf"^--output {folder}/a/b: cannot write in folder {folder} "):
        check_output_folder(folder / "a" / "b", "--output")


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
from finetune_bert.safefiles import OutputLock
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
