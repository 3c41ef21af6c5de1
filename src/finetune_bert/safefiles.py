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
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from finetune_bert.errors import UserError

MARKER = ".finetune-bert"  # the file listing what finetune-bert wrote in a folder (see training/run_folder.py)

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
    _refuse_installed(target, option)
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


def refuse_foreign(folder: Path, ours: set[str], overwrite: bool, what: str) -> None:
    """A folder holding files finetune-bert did not write (by its marker, `ours`) is refused unless
    `overwrite`: `what` (e.g. "the study") would be written beside a user's files."""
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in ours and not p.name.startswith(".finetune-bert"))
    if foreign and not overwrite:
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserError(f"--output {folder} holds files finetune-bert did not write ({listed}); choose an empty or new "
                        f"folder, or pass --overwrite to write {what} beside them")


def check_output_folder(path, option: str) -> Path:
    """Refuse, before any work, an output folder that is not a folder or cannot be written. Creates nothing."""
    folder = Path(path).expanduser()
    _refuse_installed(folder, option)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {folder}: is a file, not a folder")
    if folder.is_dir():
        _probe(folder, option, folder)
    else:
        _check_parent(folder, option)
    return folder


def installed_or_cache(path: Path) -> str | None:
    """What `path` lies inside that finetune-bert must never write into, or None: an installed package (a later
    install or uninstall replaces it, and every user of the package would get our files) or the Hugging Face
    cache (hub downloads, shared, replaced by the hub's files)."""
    seen = {Path(os.path.abspath(path)), path.resolve()}
    if any({"site-packages", "dist-packages"} & set(p.parts) for p in seen):
        return "an installed package (site-packages)"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    roots = [(name, "the Hugging Face cache") for name in (os.environ.get("HF_HOME"), os.environ.get("HF_HUB_CACHE"),
                                                           os.environ.get("HUGGINGFACE_HUB_CACHE"),
                                                           os.path.join(cache, "huggingface")) if name]
    roots += [(os.path.join(prefix, lib), "the Python installation") for lib in ("lib", "lib64", "Lib")
              for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}]
    for name, what in roots:
        for root in {Path(os.path.abspath(os.path.expanduser(name))), Path(name).expanduser().resolve()}:
            if any(p == root or root in p.parents for p in seen):
                return f"{what} ({root})"
    return None


def _refuse_installed(path: Path, option: str) -> None:
    if (inside := installed_or_cache(path)) is not None:
        raise UserError(f"{option} {path}: is inside {inside}, which finetune-bert never writes into (a later install "
                        "or download replaces it, and everyone using it would get these files); choose a place of "
                        "your own")
