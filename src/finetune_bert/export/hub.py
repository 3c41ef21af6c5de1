"""`finetune-bert push DIR REPO` and `train --push-to-hub REPO`: a trained model folder uploaded to the Hugging
Face hub through huggingface_hub (create_repo, then upload_folder).

What goes up is chosen by `upload_plan`, a pure function of the folder's file names: what a hub model repository
needs (weights, config, tokenizer, the card, finetune_bert.json for predict's reading, metrics and reports) and an
ONNX export only when it is current, since a graph older than the weights gives other numbers than they do.
Checkpoints, logs, our marker, lock and staging files, and run_config.json (it holds local paths and repeats the
run here, not on the hub) stay local; the text files that go up (the reports, say) have the local paths that
run_config.json names replaced by their file names. Every problem the hub call would meet late (no token, the
hub offline, a repository name it refuses) is found before it; a failed upload is one line that says what is
still where.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from glob import escape
from pathlib import Path
from typing import Any, Iterable, Iterator

from finetune_bert.console import console
from finetune_bert.engine.model_folder import TOKENIZER_FILES, ModelFolder
from finetune_bert.engine.onnx_engine import (EXPORT_DIR, FILES, WEIGHTS, export_command, find_export, owned_files,
                                              read_manifest)
from finetune_bert.engine.run_info import RUN_FILE
from finetune_bert.errors import UserError, refuse
from finetune_bert.export.config import PushConfig
from finetune_bert.lock import OutputLock

# The files of a model folder that a hub repository holds: loading (config, weights, tokenizer), reading texts as
# training did (finetune_bert.json), and what the card refers to (metrics.json, the reports).
MODEL_FILES = frozenset({"config.json", "generation_config.json", WEIGHTS, f"{WEIGHTS}.index.json", RUN_FILE,
                         *TOKENIZER_FILES, "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                         "merges.txt", "README.md", "metrics.json", "report.html", "data_report.json",
                         "data_report.txt"})
_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")
# Why the rest stays local, by its first path part; anything else is not a file of the model.
LEFT_OUT = {"checkpoints": "checkpoints, for --resume", "tensorboard": "training logs", "mlruns": "training logs",
            "train_log.jsonl": "the training log", "run_config.json": "repeats the run here; it names local paths",
            "seen_texts.txt": "hashes of the training texts, for audit", "skipped_rows.csv": "rows of your data",
            "adapter": "the LoRA adapter: push it to a repository of its own", EXPORT_DIR: "no current ONNX export"}


@dataclass(frozen=True)
class Plan:
    """What a push uploads (paths relative to the folder) and what it leaves, with why."""

    files: tuple[str, ...]
    left_out: tuple[tuple[str, str], ...]

    def summary(self, repo: str) -> str:
        left = "; ".join(f"{name} ({why})" for name, why in self.left_out)
        return f"uploading {len(self.files)} files to {repo}: {', '.join(self.files)}" + \
            (f"; left out: {left}" if left else "")


def upload_plan(names: Iterable[str], export: Iterable[str] = (), export_note: str | None = None) -> Plan:
    """The files to upload among `names` (every file under the folder, relative, with '/'): the model's own files
    at the top level, and the files of `export`, an ONNX export found current (none: onnx/ stays local, for
    `export_note`'s reason). Everything else is left out, said once per top-level entry."""
    current = {f"{EXPORT_DIR}/{name}" for name in export}
    files, left = [], {}
    for name in sorted(set(names)):
        top = name.split("/", 1)[0]
        if name in current or "/" not in name and (name in MODEL_FILES or _SHARD.fullmatch(name)):
            files.append(name)
            continue
        if top.startswith("."):
            why = "finetune-bert's own marker, lock or staging file"
        else:
            why = export_note if top == EXPORT_DIR and export_note else LEFT_OUT.get(top, "not a file of the model")
        left.setdefault(top + ("/" if "/" in name else ""), why)
    return Plan(tuple(files), tuple(left.items()))


def folder_plan(folder: Path) -> Plan:
    """`upload_plan` of a model folder on disk: its files listed, its ONNX export checked current."""
    names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    export, note = _current_export(folder)
    return upload_plan(names, export, note)


def _current_export(folder: Path) -> tuple[set[str], str | None]:
    """The files of onnx/ to upload, or none and why: every graph its manifest lists must be the one written, from
    these weights (find_export, as predict checks it at load)."""
    manifest = read_manifest(folder)
    if manifest is None:
        return set(), "not an export finetune-bert wrote" if (folder / EXPORT_DIR).is_dir() else None
    backends = [b for b, name in FILES.items() if name in manifest.get("files", ())]
    try:
        if any(find_export(folder, b, str(folder)) is None for b in backends):
            return set(), "an incomplete ONNX export"
    except UserError:
        return set(), f"its ONNX export is older than the weights or damaged; renew it: {export_command(str(folder))}"
    return {name for name in owned_files(folder) or () if (folder / EXPORT_DIR / name).is_file()}, None


def push_problems(repo: str, option: str) -> list[str]:
    """What stops a push before any network call: a repository name the hub refuses, offline mode, no token."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    found = []
    try:
        validate_repo_id(repo)
    except HFValidationError:
        found.append(f"{option} {repo}: not a hub repository name: user/name or name, of letters, digits, '-', '_' "
                     "and '.'")
    if constants.HF_HUB_OFFLINE:
        found.append(f"{option}: the Hugging Face hub is offline here (HF_HUB_OFFLINE is set); unset it to push")
    elif get_token() is None:
        found.append(f"{option}: no Hugging Face token; set HF_TOKEN, or log in once with `hf auth login`")
    return found


def push(cfg: PushConfig | str | None = None, repo: str | None = None, **overrides: Any) -> str:
    """Upload a trained model folder to a hub repository (made if needed); returns the commit's
    URL. Takes a PushConfig, or its options as keywords; `push(folder, repo)` is the same."""
    if isinstance(cfg, str):
        cfg, overrides = None, {"folder": cfg, **overrides}
    cfg = dataclasses.replace(cfg or PushConfig(), **overrides, **({"repo": repo} if repo is not None else {}))
    refuse(cfg.problems())
    folder = _trained_folder(cfg.folder)  # the folder first: a problem of the user's own input, fixed first
    refuse(push_problems(cfg.repo, "push"))
    plan = folder_plan(folder)
    console.say(plan.summary(cfg.repo))
    try:
        url = upload(folder, cfg.repo, plan, cfg)
    except HubFailure as exc:
        raise UserError(f"{cfg.folder} was not pushed to {cfg.repo}: {exc}") from None
    console.say(f"pushed to https://huggingface.co/{cfg.repo} ({url})")
    return url


def push_after_training(folder: str, repo: str) -> str:
    """train --push-to-hub: the finished run's folder uploaded; a failure says the model is safe, and how to
    push it later."""
    plan = folder_plan(Path(folder))
    console.say(plan.summary(repo))
    try:
        url = upload(Path(folder), repo, plan, PushConfig(folder, repo))
    except HubFailure as exc:
        raise UserError(f"the model is saved in {folder}, but pushing it to {repo} failed: {exc}. Push it later "
                        f"with: finetune-bert push {folder} {repo}") from None
    console.say(f"pushed to https://huggingface.co/{repo} ({url})")
    return url


def _trained_folder(name: str) -> Path:
    """A finished training run's folder: what push uploads must be a model whose run is over."""
    folder = Path(name).expanduser()
    if not (folder / "config.json").is_file() or not (folder / WEIGHTS).is_file():
        raise UserError(f"{name}: not a model folder (no config.json and {WEIGHTS}); push takes train's --output")
    if not (folder / RUN_FILE).is_file():
        raise UserError(f"{name}: not a folder finetune-bert trained (no {RUN_FILE}); upload another tool's model "
                        f"with: hf upload REPO {name}")
    if ModelFolder(name, str(folder)).unfinished:
        raise UserError(f"{name}: its training run has not finished (no metrics.json), so its model is only the "
                        "best so far; push it once the run ends (train --resume continues it)")
    OutputLock(folder).check()  # a run writing here now would change files while they go up
    return folder


# Files that go up as text and may name the run's files by their local paths (the data report, the page).
_TEXT_FILES = frozenset({"README.md", RUN_FILE, "metrics.json", "report.html", "data_report.json", "data_report.txt"})


def local_paths(folder: Path) -> dict[str, str]:
    """Each local path the run named (its data, teacher, model, output...: run_config.json's string values that are
    absolute or under ~), in every spelling a file may hold it (as given, resolved, JSON- and HTML-escaped), with
    the file name that replaces it; the longest first, so a folder never replaces part of a file inside it."""
    try:
        options = json.loads((folder / "run_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    found: dict[str, str] = {}
    for value in (options.values() if isinstance(options, dict) else ()):
        if not isinstance(value, str) or not value.startswith(("/", "~")) or "\n" in value:
            continue
        for path in {value, os.path.expanduser(value), os.path.realpath(os.path.expanduser(value))}:
            if len(path) > 1:
                for spelling in (path, json.dumps(path)[1:-1], html.escape(path)):
                    found[spelling] = Path(path).name or path
    return dict(sorted(found.items(), key=lambda item: -len(item[0])))


def without_local_paths(text: str, paths: dict[str, str]) -> str:
    for path, name in paths.items():
        text = text.replace(path, name)
    return text


@contextlib.contextmanager
def staged(folder: Path, plan: Plan) -> Iterator[Path]:
    """`plan`'s files in a hidden folder beside them, as they go up: the weights and other files linked (no copy),
    the text files rewritten without local paths. Removed at the end."""
    stage = Path(tempfile.mkdtemp(prefix=".push-", dir=folder))
    try:
        paths = local_paths(folder)
        for name in plan.files:
            source, target = folder / name, stage / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if name in _TEXT_FILES and paths:
                text = source.read_text(encoding="utf-8", errors="surrogateescape")
                target.write_text(without_local_paths(text, paths), encoding="utf-8", errors="surrogateescape")
                continue
            try:
                os.link(source, target)
            except OSError:  # a file system without hard links
                shutil.copy2(source, target)
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


class HubFailure(Exception):
    """The hub call failed; its message is the reason, in one line."""


def upload(folder: Path, repo: str, plan: Plan, cfg: PushConfig) -> str:
    """create_repo (exist_ok) and upload_folder of `plan`'s files as `staged` (a model's few files make one
    commit); a previous push's ONNX files that are not in this one are deleted with it, so the repository never
    keeps a graph of other weights."""
    from huggingface_hub import HfApi

    api = HfApi()
    message = cfg.commit_message or f"Upload {Path(folder).resolve().name}, trained with finetune-bert"
    try:
        api.create_repo(repo, private=True if cfg.private else None, exist_ok=True)
        if cfg.revision:
            api.create_branch(repo, branch=cfg.revision, exist_ok=True)
        with staged(folder, plan) as stage:
            info = api.upload_folder(repo_id=repo, folder_path=stage, revision=cfg.revision, commit_message=message,
                                     allow_patterns=[escape(name) for name in plan.files],
                                     delete_patterns=[f"{EXPORT_DIR}/*"])
    except Exception as exc:  # the hub raises many types: offline, connection, HTTP errors, validation
        raise HubFailure(_reason(exc)) from None
    return info.commit_url


def _reason(exc: Exception) -> str:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if isinstance(exc, OfflineModeIsEnabled):
        return "the Hugging Face hub is offline here (HF_HUB_OFFLINE is set)"
    status = getattr(getattr(exc, "response", None), "status_code", None) if isinstance(exc, HfHubHTTPError) else None
    if status == 401:
        return "the hub refused the token (401); set HF_TOKEN, or log in again with `hf auth login`"
    if status == 403:
        return f"the token may not write to this repository (403: {first})"
    return f"{type(exc).__name__}: {first}"
