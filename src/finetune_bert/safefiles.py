"""Writing the user's files safely: atomic replacement, up-front output checks, one-line disk errors, a run lock.

Everything finetune-bert writes where a user will look goes through here, so that a file is either the old
one or the new one, never half of each; a disk problem (full, read-only, file-size limit) is one line naming
the file; and an output that would overwrite an input, a device or a folder is refused before any work.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import stat
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from finetune_bert.errors import UserError

LOCK_NAME = ".finetune-bert.lock"
MARKER = ".finetune-bert"  # the file listing what finetune-bert wrote in a folder (see output.py)

_REASONS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded: disk full for this user",
    errno.EFBIG: "file too large for this file system or the file-size limit (ulimit -f)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied: operation not permitted, the file or folder may be immutable",
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "is a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def _reason(exc: OSError) -> str:
    nice = _REASONS.get(exc.errno)
    plain = exc.strerror or str(exc) or type(exc).__name__
    return f"{nice}; {plain}" if nice else plain


def disk_error(exc: OSError, path, doing: str) -> UserError:
    """The one-line message for an OSError met while `doing` something to `path`."""
    return UserError(" ".join(f"{path}: cannot {doing} ({_reason(exc)})".split()))


def as_os_error(exc: BaseException) -> OSError | None:
    """`exc` as an OSError, also when a native library wrapped one in its own type, else None.

    safetensors reports a failed write as SafetensorError("... (os error 27)"), not as an OSError."""
    if isinstance(exc, OSError):
        return exc
    found = re.search(r"\(os error (\d+)\)", str(exc))
    if found:
        code = int(found.group(1))
        return OSError(code, os.strerror(code))
    return None


def umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask alone must set one)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def public_mode() -> int:
    """0644 minus the umask: what an ordinary new file gets; some writers (safetensors) make 0600."""
    return 0o644 & ~umask()


def fsync_folder(folder) -> None:
    """Make a rename in `folder` durable; file systems that cannot sync a folder are skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EROFS):
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path, mode: str = "w", newline: str | None = None) -> Iterator[Any]:
    """A handle on a hidden temporary file beside `path`, renamed onto it only when the block succeeds."""
    if mode not in ("w", "wt", "wb"):
        raise ValueError(f"atomic_output: mode must be 'w', 'wt' or 'wb', got {mode!r}")
    target = Path(path).expanduser()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise disk_error(exc, target, "write this file") from None
    tmp = Path(name)
    try:
        text = "b" not in mode
        with os.fdopen(fd, mode, encoding="utf-8" if text else None, newline=newline if text else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, public_mode())  # mkstemp makes 0600; a shared folder must stay readable
        os.replace(tmp, target)
    except BaseException as exc:
        _remove_quietly(tmp)
        if isinstance(exc, OSError):
            raise disk_error(exc, target, "write this file") from None
        raise
    try:
        fsync_folder(target.parent)
    except OSError as exc:
        raise disk_error(exc, target.parent, "save the folder") from None


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def write_text_atomic(path, text: str) -> Path:
    with atomic_output(path) as handle:
        handle.write(text)
    return Path(path).expanduser()


def read_marker(folder) -> dict[str, set[str]]:
    """What finetune-bert wrote in `folder`, by its marker: "files" (a run's, ours to replace) and "outputs"
    (what evaluate and predict wrote there: never foreign to a later run, never replaced by one)."""
    try:
        payload = json.loads((Path(folder) / MARKER).read_text())
        return {key: set(payload.get(key, [])) for key in ("files", "outputs")}
    except (OSError, ValueError, TypeError, AttributeError):
        return {"files": set(), "outputs": set()}


def claim(folder, names, key: str = "files") -> None:
    """Add `names` to the folder's marker, made if absent (inspect --output; evaluate and predict outputs in a
    run folder), so that a later run there does not call them foreign."""
    marker = read_marker(folder)
    if set(names) <= marker[key] and (Path(folder) / MARKER).is_file():
        return
    marker[key] |= set(names)
    write_marker(folder, marker["files"], marker["outputs"])


def write_marker(folder, files, outputs=None) -> None:
    """The marker: `files` as given; `outputs` as given, or as the marker already has them (None)."""
    kept = read_marker(folder)["outputs"] if outputs is None else set(outputs)
    payload = {"tool": "finetune-bert", "files": sorted(files), **({"outputs": sorted(kept)} if kept else {})}
    write_text_atomic(Path(folder) / MARKER, json.dumps(payload) + "\n")


def claim_output(path) -> None:
    """An evaluate or predict output written into a folder of finetune-bert's (a model folder), or a folder
    inside one: recorded, so that the run's `--resume` does not call it foreign."""
    target = Path(path).expanduser().resolve()
    for folder in target.parents:  # an output in a new subfolder of a model folder: the subfolder is recorded
        if (folder / MARKER).is_file():
            claim(folder, [target.relative_to(folder).parts[0]], key="outputs")
            return


def same_file(a, b) -> bool:
    """Both exist and are one file: the same path, a symlink to it or a hard link of it."""
    try:
        return os.path.samefile(Path(a).expanduser(), Path(b).expanduser())
    except (OSError, ValueError, TypeError):
        return False


def _nearest_existing(path: Path) -> Path:
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _probe(folder: Path, option: str, path: Path) -> None:
    """Really create a file: root ignores permission bits, and read-only mounts or immutable folders must show."""
    try:
        fd, name = tempfile.mkstemp(prefix=".finetune-bert-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write in folder {folder} ({_reason(exc)})") from None


def _check_parent(path: Path, option: str) -> None:
    folder = _nearest_existing(path)
    if not folder.is_dir():
        raise UserError(f"{option} {path}: {folder} is a file, not a folder")
    _probe(folder, option, path)


def check_output_file(path, option: str, inputs: Iterable = ()) -> Path:
    """Refuse, before any work, an output file that cannot or must not be written. Creates nothing."""
    target = Path(path).expanduser()
    try:
        info = os.stat(target)
    except OSError:
        info = None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise UserError(f"{option} {target}: is a folder; give a file name")
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise UserError(f"{option} {target}: is not a regular file (a device, pipe or socket); "
                        "finetune-bert writes only regular files")
    for source in inputs:
        if source is not None and same_file(target, source):
            raise UserError(f"{option} {target}: is the input {source}; writing it would overwrite the input. "
                            "Choose another file name")
        if source is not None and Path(source).expanduser().is_dir() and \
                Path(source).expanduser().resolve() in target.resolve().parents:
            raise UserError(f"{option} {target}: is inside the data folder {source}, where it would be read as data "
                            "next time. Choose a place outside it")
    _check_parent(target, option)
    return target


def check_output_folder(path, option: str) -> Path:
    """Refuse, before any work, an output folder that is not a folder or cannot be written. Creates nothing."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {folder}: is a file, not a folder")
    if folder.is_dir():
        _probe(folder, option, folder)
    else:
        _check_parent(folder, option)
    return folder


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot): tells a reused pid from the original process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text[text.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _is_zombie(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rindex(")") + 2:].split()[0] == "Z"
    except (OSError, ValueError, IndexError):
        return False


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, but another user's
        return False
    return _is_zombie(pid)


class OutputLock:
    """One run at a time per output folder: a lock file naming its holder, taken over when the holder is gone."""

    def __init__(self, folder):
        self.folder = Path(folder).expanduser()
        self.path = self.folder / LOCK_NAME
        self._held = False

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> OutputLock:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid()),
                  "since": time.time(), "command": " ".join(sys.argv)}
        for _ in range(10):  # each pass either wins, fails, or removed one stale lock
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                raw, holder = self._read()
                if holder is None or not self._stale(holder):
                    raise UserError(self._held_message(holder)) from None
                self._take_over(raw)
                continue
            except OSError as exc:
                raise disk_error(exc, self.path, "create the lock file") from None
            self._write(fd, record)
            return self
        raise UserError(f"{self.folder}: could not take the lock {self.path}: other runs keep taking it; try again")

    def _write(self, fd: int, record: dict) -> None:
        self._held = True  # from here on the file is ours, so release() must remove it even if writing fails
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            self.release()
            raise disk_error(exc, self.path, "write the lock file") from None

    def check(self) -> None:
        """Raise the holder's message if a live run holds the lock; a stale lock is left for acquire()."""
        raw, holder = self._read()
        if raw is None:
            return
        if holder is None or not self._stale(holder):
            raise UserError(self._held_message(holder))

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        _, holder = self._read()
        if holder is not None and holder.get("pid") == os.getpid():  # never remove a lock another run took
            _remove_quietly(self.path)

    def _read(self, path: Path | None = None) -> tuple[bytes | None, dict | None]:
        """(raw bytes or None when absent, the record or None when garbled). Retries briefly: a lock
        just created by O_EXCL is empty until its writer fills it in."""
        raw = None
        for attempt in range(5):
            try:
                raw = (path or self.path).read_bytes()
            except FileNotFoundError:
                return None, None
            except OSError:
                return b"", None
            try:
                holder = json.loads(raw)
                if isinstance(holder, dict) and isinstance(holder.get("pid"), int):
                    return raw, holder
            except ValueError:
                pass
            time.sleep(0.05 * (attempt + 1))
        return raw, None

    @staticmethod
    def _stale(holder: dict) -> bool:
        """Only a holder on this host can be checked: gone, or its pid now belongs to a newer process."""
        if holder.get("host") != socket.gethostname():
            return False
        pid = holder["pid"]
        if _pid_gone(pid):
            return True
        started = holder.get("started")
        now = _start_time(pid)
        return started is not None and now is not None and now != started

    def _take_over(self, stale_raw: bytes | None) -> None:
        """Move the stale lock aside and delete it. Two runs racing here must not both win: if what we moved
        is not the stale lock we judged (another run already replaced it), it is put back."""
        aside = self.folder / f"{LOCK_NAME}.stale-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another run moved it first; retry O_EXCL
        except OSError as exc:
            raise disk_error(exc, self.path, "remove the stale lock file") from None
        raw, _ = self._read(aside)
        if raw != stale_raw:
            try:
                os.link(aside, self.path)  # put it back, unless yet another run holds the name by now
            except OSError:
                pass
        _remove_quietly(aside)

    def _held_message(self, holder: dict | None) -> str:
        if holder is None:
            return (f"{self.folder}: locked by a run that cannot be identified (its lock file is unreadable or garbled); "
                    f"if no finetune-bert run is using this folder, delete {self.path}")
        since = holder.get("since")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
        command = " ".join(str(holder.get("command", "?")).split())
        command = command if len(command) <= 200 else command[:197] + "..."
        where = f"pid {holder['pid']} on host {holder.get('host', '?')}"
        if holder.get("host") != socket.gethostname():
            hint = (f"it runs on another host, so whether it is still alive cannot be checked from here; wait for it "
                    f"to finish, or delete {self.path} if that process is gone")
        else:
            hint = f"wait for it to finish, or delete {self.path} if that process is gone"
        return f"{self.folder}: another finetune-bert run is using this folder ({where}, since {when}: {command}); {hint}"
