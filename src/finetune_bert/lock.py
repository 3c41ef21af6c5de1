"""One run at a time per output folder: a lock file naming its holder (host, pid, process start time),
taken over when the holder is gone. Also how a process is identified and judged gone, which `tune` uses
to find trials whose process was killed."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from finetune_bert.errors import UserError
from finetune_bert.safefiles import _remove_quietly, disk_error

LOCK_NAME = ".finetune-bert.lock"


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


def this_process() -> dict:
    """Who runs here, as a lock file (or a study's trial) records it: host, pid and the process's start time."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid())}


def process_gone(holder: dict) -> bool:
    """Whether the process `this_process()` described is gone. Only one on this host can be checked (False
    otherwise): gone, or its pid now belongs to a newer process."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    pid = holder["pid"]
    if _pid_gone(pid):
        return True
    started = holder.get("started")
    now = _start_time(pid)
    return started is not None and now is not None and now != started


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
        record = {**this_process(), "since": time.time(), "command": " ".join(sys.argv)}
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
        return process_gone(holder)

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
