"""What the model card says about where a model comes from, in the form the Hugging Face hub reads: the base
model as a hub id, the data by name, rows and content hash, and the metrics as `model-index` results.

The metadata is written by huggingface_hub's own ModelCardData and EvalResult, so the hub's evaluation widget
and leaderboards read what the library that parses them writes. Nothing here names a local path: a card is
published, and a path says nothing on the hub while it tells the world how someone's disk is laid out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_bert.engine.model_folder import HUB_IDS
from finetune_bert.engine.onnx_engine import sha256_of
from finetune_bert.engine.run_info import RUN_FILE

# Per kind, the metrics of the card's table and of its model-index, in order: (key in metrics.json, the table's
# heading, the hub's metric type, its arguments). The types are the `evaluate` library's metric ids where one
# exists (f1, roc_auc, mae, r_squared, spearmanr), as the hub's leaderboards match them; ours where none does.
METRICS: dict[str, tuple[tuple[str, str, str, dict[str, Any] | None], ...]] = {
    "classification": (("accuracy", "accuracy", "accuracy", None), ("f1_macro", "macro F1", "f1", {"average": "macro"}),
                       ("roc_auc", "ROC-AUC", "roc_auc", None), ("log_loss", "log loss", "log_loss", None)),
    "multi-label": (("f1_macro", "macro F1", "f1", {"average": "macro"}),
                    ("f1_micro", "micro F1", "f1", {"average": "micro"}),
                    ("subset_accuracy", "subset accuracy", "accuracy", None),  # exact match of the whole label set
                    ("roc_auc", "ROC-AUC", "roc_auc", {"average": "macro"}), ("map", "mAP", "map", None)),
    "regression": (("rmse", "RMSE", "rmse", None), ("mae", "MAE", "mae", None), ("r2", "R²", "r_squared", None),
                   ("spearman", "Spearman", "spearmanr", None)),
}
TASK_TYPE, TASK_NAME = "text-classification", "Text Classification"  # every kind: the pipeline that runs it
SPLITS = ("test", "validation")
_HUB_SPLIT = re.compile(r"^(?P<name>.+)\[(?P<split>[^\[\]]+)\]$")  # data.sources names a hub split "imdb[test]"
_MAX_HOPS = 8  # a model fine-tuned from a model fine-tuned from ...: where to stop looking for the first


@dataclass(frozen=True)
class Source:
    """One data source as a card names it: its name (a file's or folder's name, or a hub dataset id), the hub
    dataset id and split read when it is one, and the local file to hash."""

    name: str
    hub_id: str | None = None
    file: Path | None = None
    split: str | None = None


def source(spec: str) -> Source:
    """A split's source as the data report records it: a path, or a hub dataset's "name[split]"."""
    path = Path(spec).expanduser()
    if path.exists():
        return Source(path.resolve().name, file=path if path.is_file() else None)
    found = _HUB_SPLIT.match(spec)
    if found and _repo_id(found["name"]):
        return Source(found["name"], hub_id=found["name"], split=found["split"])
    return Source(path.name or spec)  # gone since the run: its name alone


def base_model_id(model: str | None, hops: int = 0) -> str | None:
    """The hub id of the model a run started from, or None where none can be given. An alias is its bundled
    model's id; a folder of ours is its own base model's (recorded in finetune_bert.json), followed back; another
    folder gives its config's `_name_or_path`. A name read from a file (`hops` > 0) counts as a hub id only when
    this machine's hub cache holds it: a recorded relative path ("runs/x") would read as an id, and no path may
    reach a card. A name given to this run (`hops` 0) that is no folder was loaded from the hub."""
    if not model or hops > _MAX_HOPS:
        return None
    if model in HUB_IDS:
        return HUB_IDS[model]
    path = Path(model).expanduser()
    if path.is_dir():
        recorded = _recorded(path / RUN_FILE, "base_model")
        if recorded is not None:
            return base_model_id(recorded, hops + 1)
        return base_model_id(_recorded(path / "config.json", "_name_or_path"), hops + 1)
    if hops == 0:
        return model if not model.startswith((".", "/", "~")) and _repo_id(model) else None
    return model if _repo_id(model) and _in_hub_cache(model) else None


def _recorded(file: Path, key: str) -> str | None:
    try:
        value = json.loads(file.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):  # absent, not JSON, not an object: nothing recorded
        return None
    return value if isinstance(value, str) and value.strip() else None


def _repo_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def eval_results(report: dict[str, Any], metrics: dict[str, Any], chosen: str | None = None) -> list:
    """The test and validation metrics as huggingface_hub EvalResults, each with its split and data; `chosen`:
    the metric the model was selected by (--metric), listed too when the kind's table lacks it."""
    from huggingface_hub import EvalResult

    task, results = metrics.get("task", "classification"), []
    listed = METRICS[task]
    if chosen and chosen not in {key for key, *_ in listed}:
        listed = (*listed, (chosen, chosen, chosen, None))
    for split in SPLITS:
        measured, read = metrics.get(split) or {}, report["splits"].get(split)
        if not measured or not read:
            continue
        data = source(read["source"])
        for key, name, kind, args in listed:
            if measured.get(key) is not None:
                results.append(EvalResult(task_type=TASK_TYPE, task_name=TASK_NAME, dataset_type=data.hub_id or data.name,
                                          dataset_name=data.name, dataset_split=split, metric_type=kind,
                                          metric_value=round(float(measured[key]), 4), metric_name=name,
                                          metric_args=args))
    return results


def card_metadata(cfg: Any, report: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The card's YAML front matter (without its --- lines)."""
    from huggingface_hub import ModelCardData

    name = model_name(cfg)
    hub_data = sorted({s.hub_id for s in (source(r["source"]) for r in report["splits"].values()) if s.hub_id})
    data = ModelCardData(base_model=base_model_id(cfg.model), library_name="transformers",
                         pipeline_tag=TASK_TYPE, datasets=hub_data or None,
                         tags=["finetune-bert", TASK_TYPE, metrics.get("task", "classification")],
                         eval_results=eval_results(report, metrics, getattr(cfg, "metric", None)) or None,
                         model_name=name)
    return data.to_yaml()


def model_name(cfg: Any) -> str:
    """The name of the repository the model is pushed to, or of its folder."""
    repo = getattr(cfg, "push_to_hub", None)
    return repo.split("/")[-1] if repo else Path(cfg.output).expanduser().resolve().name


def data_sentence(report: dict[str, Any]) -> str:
    """"on `train.csv` (rows, sha256) ...; tested on ...": each data file by its name, rows and sha256 (each
    file hashed once, a block at a time), never its path."""
    hashes: dict[Path, str] = {}

    def named(spec: str, rows: int) -> str:
        data = source(spec)
        if data.file is not None and data.file.resolve() not in hashes:
            hashes[data.file.resolve()] = sha256_of(data.file)
        digest = f", sha256 `{hashes[data.file.resolve()]}`" if data.file is not None else ""
        return f"`{data.name}` ({f'its {data.split} split, ' if data.split else ''}{rows} rows{digest})"

    splits = report["splits"]
    whole = report.get("train_data", splits["train"])
    said = f"on {named(whole['source'], whole['rows'])}"
    val = splits.get("validation")
    if val and val["source"] == whole["source"] and "train_data" in report:
        said += f": {splits['train']['rows']} rows to train on, {val['rows']} held out for validation"
    elif val:
        said += f"; validated on {named(val['source'], val['rows'])}"
    if splits.get("test"):
        said += f"; tested on {named(splits['test']['source'], splits['test']['rows'])}"
    return said
