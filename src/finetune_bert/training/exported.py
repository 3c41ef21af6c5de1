"""A trained model's ONNX fp32 export, written at the end of a run (and beside tune's best model) so that
predict, evaluate and serve find the fastest exact backend on a CPU without AMX (inference.backends.choose).

The export is `finetune-bert export`'s own, parity-checked against torch within 1e-4, made from the saved
folder, not from the engine in memory: what is exported is what a later load reads. The model is trained and
saved by then, and torch runs it whatever happens here, so an export that fails (an architecture torch.onnx
cannot trace, onnx not installed, a full disk) is a warning, never a failed run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from finetune_bert.console import console
from finetune_bert.engine.onnx_engine import EXPORT_DIR, FILES, export_command


def export_at_end(run: Any, cfg: Any, main: bool) -> dict[str, Any]:
    """metrics.json's {"export": ...} of a finished run (`run`: its RunFolder), or {} where it is not written:
    --no-export, or a rank other than 0 under torchrun (rank 0 alone writes the folder)."""
    if not cfg.export or not main:
        return {}
    run.own(EXPORT_DIR)  # in the run's marker before it is written, as every file of the run is
    return {"export": write_export(run.path)}


def write_export(folder: Path) -> dict[str, Any]:
    """Export `folder` (a finished model folder) to `folder`/onnx/ and say so in one line, or warn why not.
    Returns what metrics.json records: the graph and its measured gap to torch, or the error."""
    from finetune_bert.export.onnx import export

    started = time.time()
    try:
        with console.quiet():  # export's own summary is for the export command; a run says one line
            manifest = export(model=str(folder))
    except Exception as exc:  # the model is saved and runs with torch: the run has succeeded
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        console.warn(f"the ONNX export was not written ({type(exc).__name__}: {reason}); the model is saved and "
                     f"runs with torch; to try again: {export_command(str(folder))}")
        return {"written": False, "error": f"{type(exc).__name__}: {reason}"}
    seconds = time.time() - started
    gap = manifest["onnx"]["max_abs_logit_diff"]
    path = folder / EXPORT_DIR / FILES["onnx"]
    console.say(f"ONNX export written to {path} in {seconds:.1f}s (max |logit - torch's| {gap:.1e}): predict "
                "runs it by default on a CPU without AMX")
    return {"written": True, "file": f"{EXPORT_DIR}/{FILES['onnx']}", "max_abs_logit_diff": gap,
            "seconds": round(seconds, 1)}
