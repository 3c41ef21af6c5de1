"""The model card as the Hugging Face hub reads it: huggingface_hub's own parser finds the task, each split's data
and metrics (model-index) and the base model as a hub id; the card names no local path."""

import hashlib
import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, metadata_eval_result

from finetune_bert.training.card_metadata import base_model_id

# The hub's names for each kind's metrics (the `evaluate` library's ids where one exists): (key in metrics.json,
# type, name, args)
HUB_METRICS = {
    "classification": [("accuracy", "accuracy", "accuracy", None), ("f1_macro", "f1", "macro F1", {"average": "macro"}),
                       ("roc_auc", "roc_auc", "ROC-AUC", None), ("log_loss", "log_loss", "log loss", None)],
    "multi-label": [("f1_macro", "f1", "macro F1", {"average": "macro"}), ("f1_micro", "f1", "micro F1", {"average": "micro"}),
                    ("subset_accuracy", "accuracy", "subset accuracy", None),
                    ("roc_auc", "roc_auc", "ROC-AUC", {"average": "macro"}), ("map", "map", "mAP", None)],
    "regression": [("rmse", "rmse", "RMSE", None), ("mae", "mae", "MAE", None), ("r2", "r_squared", "R²", None),
                   ("spearman", "spearmanr", "Spearman", None)],
}


def _expected(folder: Path) -> list[EvalResult]:
    metrics = json.loads((folder / "metrics.json").read_text())
    report = json.loads((folder / "data_report.json").read_text())
    found = []
    for split in ("test", "validation"):
        data = Path(report["splits"][split]["source"]).name
        for key, kind, name, args in HUB_METRICS[metrics["task"]]:
            if metrics[split].get(key) is not None:
                found.append(EvalResult(task_type="text-classification", task_name="Text Classification",
                                        dataset_type=data, dataset_name=data, dataset_split=split, metric_type=kind,
                                        metric_value=round(metrics[split][key], 4), metric_name=name, metric_args=args))
    return found


def test_every_kinds_card_gives_the_hub_its_task_data_and_metrics_and_no_path(trained, trained_kinds, pair_model):
    folders = {"classification": Path(trained.output), **trained_kinds, "pairs": pair_model[0]}
    for kind, folder in folders.items():
        text = (folder / "README.md").read_text()
        card = ModelCard.load(folder / "README.md")  # the hub's own parser: the YAML and its model-index
        assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-classification", kind
        assert card.data.base_model is None, kind  # a random local model: no hub id to give, and never its path
        assert card.data.model_name == folder.name and card.data.eval_results == _expected(folder), kind
        assert "/tmp" not in text and str(folder.parent) not in text and "PATH_TO_THIS_FOLDER" in text, kind
    # one result as the hub's own helper writes it, inside the card's model-index
    metrics = json.loads((folder := Path(trained.output)).joinpath("metrics.json").read_text())
    one = metadata_eval_result(model_pretty_name=folder.name, task_pretty_name="Text Classification",
                               task_id="text-classification", metrics_pretty_name="accuracy", metrics_id="accuracy",
                               metrics_value=round(metrics["test"]["accuracy"], 4), dataset_pretty_name="test.csv",
                               dataset_id="test.csv", dataset_split="test")["model-index"][0]["results"][0]
    index = ModelCard.load(folder / "README.md").data.to_dict()["model-index"][0]
    test = next(r for r in index["results"] if r["dataset"]["split"] == "test")
    assert index["name"] == folder.name and test["task"] == one["task"] and test["dataset"] == one["dataset"]
    assert test["metrics"][0] == {k: v for k, v in one["metrics"][0].items() if k != "verified"}  # we claim none


def test_the_card_names_the_training_file_by_name_rows_and_sha256(trained, toy_data):
    text = (Path(trained.output) / "README.md").read_text()
    for split, rows in (("train", 160), ("test", 40)):
        digest = hashlib.sha256(toy_data[split].read_bytes()).hexdigest()
        assert f"`{toy_data[split].name}` ({rows} rows, sha256 `{digest}`)" in text


def test_base_model_is_a_hub_id_or_nothing_never_a_path(tmp_path, trained, monkeypatch):
    from huggingface_hub import constants

    def ours(name: str, base: str) -> str:  # a folder finetune-bert trained from `base`
        (tmp_path / name).mkdir()
        (tmp_path / name / "finetune_bert.json").write_text(json.dumps({"base_model": base}))
        return str(tmp_path / name)

    assert base_model_id("minilm") == "sentence-transformers/all-MiniLM-L6-v2"
    assert base_model_id("google-bert/bert-base-uncased") == "google-bert/bert-base-uncased"  # loaded from the hub
    assert base_model_id(trained.output) is None  # trained from a random local folder
    assert base_model_id(ours("twice", ours("once", "minilm"))) == "sentence-transformers/all-MiniLM-L6-v2"
    assert base_model_id(ours("gone", "runs/deleted-since")) is None  # a recorded name no hub download explains
    other = tmp_path / "theirs"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_name_or_path": "/home/someone/model"}))
    assert base_model_id(str(other)) is None
    (other / "config.json").write_text(json.dumps({"_name_or_path": "org/encoder"}))
    assert base_model_id(str(other)) is None  # not in this machine's hub cache: maybe a relative path
    snapshot = tmp_path / "hub" / "models--org--encoder" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--org--encoder" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--encoder" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # where huggingface_hub looks
    assert base_model_id(str(other)) == "org/encoder"
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "finetune_bert.json").write_text("{not json")
    assert base_model_id(str(tmp_path / "garbled")) is None


def test_a_card_for_the_hub_shows_the_repository_in_its_snippets(trained):
    from dataclasses import replace

    from finetune_bert.training.config import TrainConfig
    from finetune_bert.training.model_card import model_card

    folder, repo = Path(trained.output), "me/reviews"
    cfg = replace(TrainConfig.from_json(json.loads((folder / "run_config.json").read_text())), push_to_hub=repo)
    text = model_card(cfg, json.loads((folder / "data_report.json").read_text()),
                      json.loads((folder / "metrics.json").read_text()))
    assert f'model="{repo}"' in text and f'load(snapshot_download("{repo}"))' in text
    assert ModelCard(text).data.model_name == "reviews"
