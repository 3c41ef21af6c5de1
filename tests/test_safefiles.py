"""Safe files: atomic replacement, one-line disk errors, output checks before any work, the run lock."""

import errno
import os
import subprocess
from pathlib import Path

import pytest

from finetune_bert.errors import UserError
from finetune_bert.safefiles import atomic_output, check_output_file, check_output_folder, disk_error, same_file, write_text_atomic


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
