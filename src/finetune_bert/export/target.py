"""Where an export may be written: the model folder's onnx/ owned as train owns its output folder (files
another tool wrote there are never replaced without --overwrite), never an installed package or the hub cache,
or a new folder (--output) that gets a copy of the model beside its export."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path


from finetune_bert.errors import UserError
from finetune_bert.engine.model_folder import TOKENIZER_FILES, ModelFolder
from finetune_bert.engine.onnx_engine import (EXPORT_DIR, MANIFEST, SOURCES, TOOL, WEIGHTS, owned_files, sha256_of)
from finetune_bert.engine.run_info import RUN_FILE
from finetune_bert.safefiles import MARKER, check_output_folder, claim, disk_error, read_marker, write_text_atomic


# Our own transient files (a graph being written, atomic writes' temporaries, write probes): never foreign.
_LEFTOVER = re.compile(r"(model|model\.int8)\.onnx\.partial|\..+\.tmp|\.finetune-bert-probe-.*")


# What --output's copy of a model holds: what loads it (config, weights, tokenizer, how it reads texts) and its
# card; not other formats' weights (pickles, TF, another export), which export never reads.
COPIED = tuple(dict.fromkeys(("config.json", WEIGHTS, RUN_FILE, *SOURCES, "added_tokens.json", "merges.txt",
                              *TOKENIZER_FILES, "README.md")))


def _foreign(folder: Path, ours: set[str]) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir() if p.name not in ours and not _LEFTOVER.fullmatch(p.name))
    except OSError as exc:
        raise disk_error(exc, folder, "list the folder") from None


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")


def export_folder(folder: Path, option: str, overwrite: bool) -> None:
    """onnx/ is ours to write when it is new or holds only what our manifest says we wrote there: another tool's
    export (Optimum's onnx/model.onnx and onnx/tokenizer.json) is refused unless --overwrite."""
    target = folder / EXPORT_DIR
    check_output_folder(target if target.exists() else folder, option)
    if (folder / MARKER).is_file():  # its run's marker is told of the export (own)
        check_output_folder(folder, option)
    if not target.is_dir():
        return
    foreign = _foreign(target, owned_files(folder) or set())
    if foreign and not overwrite:
        raise UserError(f"{option} {folder}: {EXPORT_DIR}/ holds files finetune-bert did not write "
                        f"({_listed(foreign)}), which export would replace; pass --overwrite, or --output DIR to "
                        "export into a new folder")


def output_folder(model: Path, output: Path, overwrite: bool) -> None:
    """--output: a new folder, or one holding only what finetune-bert wrote there (by its marker), unless
    --overwrite; never the model's own folder."""
    if output.resolve() == model.resolve():
        raise UserError(f"--output {output}: is the model's own folder; leave --output out to export into it")
    check_output_folder(output, "--output")
    if output.is_dir() and (foreign := _foreign(output, read_marker(output)["files"] | {MARKER})) and not overwrite:
        raise UserError(f"--output {output}: folder exists and holds files finetune-bert did not write "
                        f"({_listed(foreign)}); choose a new folder or pass --overwrite")
    theirs, ours = output / WEIGHTS, model / WEIGHTS  # ours by the marker, but maybe another model (a run folder)
    if theirs.is_file() and not overwrite and (theirs.stat().st_size != ours.stat().st_size or
                                               sha256_of(theirs) != sha256_of(ours)):
        raise UserError(f"--output {output}: holds another model (its {WEIGHTS} is not {model}'s), which the copy "
                        "would replace; choose a new folder or pass --overwrite")


def copy_model(source: Path, output: Path, name: str) -> ModelFolder:
    """The model's files copied into `output` (owned by its marker before they are written), each whole or
    not at all; hub cache links are followed, so the copy holds the files themselves."""
    names = [n for n in COPIED if (source / n).is_file()]
    try:
        output.mkdir(parents=True, exist_ok=True)
        claim(output, [*names, EXPORT_DIR])
        for n in names:
            partial = output / f".{n}.tmp"
            shutil.copyfile(source / n, partial)
            os.replace(partial, output / n)
    except OSError as exc:
        raise disk_error(exc, output, "copy the model into it") from None
    return ModelFolder(name, str(output))


def own(folder: Path, names: set[str]) -> None:
    """Every file export is about to write in onnx/, listed before any is written (a manifest that is not yet
    an export), so that an export stopped part-way is still ours to replace, never taken for another tool's."""
    target = folder / EXPORT_DIR
    try:
        target.mkdir(exist_ok=True)
    except OSError as exc:
        raise disk_error(exc, target, "write the export") from None
    if (folder / MARKER).is_file():  # a later run in this folder replaces the export with the rest of its files
        claim(folder, [EXPORT_DIR])
    write_text_atomic(target / MANIFEST, json.dumps({"tool": TOOL, "complete": False, "owned": sorted(names)}) + "\n")


def model_folder(model: ModelFolder) -> Path:
    """The local model folder the export is made from (--format and --quantize are ExportConfig's choices)."""
    source = model.path
    if source is None:
        raise UserError(f"--model {model}: export writes beside the model's files, so it needs a local model folder "
                        "(download a hub model first, or fine-tune one with finetune-bert train)")
    if not (source / WEIGHTS).is_file():
        raise UserError(f"--model {model}: has no {WEIGHTS}; export reads weights only from safetensors")
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise UserError(f"export needs onnx and onnxruntime, dependencies of finetune-bert ({exc.name} is missing): "
                        "pip install onnx onnxruntime") from None
    return source
