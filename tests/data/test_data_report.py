"""The data report: class balance, lengths, truncation, duplicates, conflicts, leakage, imbalance."""

import numpy as np

from finetune_bert.data.dataset import Dataset
from finetune_bert.data.splits import Split
from finetune_bert.data.tokens import Encoded
from finetune_bert.data.report import build_report, format_report


def _split(name, texts, labels):
    return Split(name, f"{name}.csv", texts, labels, [f"line {i + 2}" for i in range(len(texts))])


def _enc(lengths):
    return Encoded([np.zeros(min(n, 8), np.int32) for n in lengths], np.array(lengths), None)


def test_report_counts_duplicates_conflicts_overlap_and_truncation():
    train = _split("train", ["a", "a", "b", "b", "c", "d", "e", "f"], ["pos", "pos", "pos", "neg", "neg", "neg", "pos", "neg"])
    val = _split("validation", ["g", "h"], ["pos", "neg"])
    test = _split("test", ["a", "c", "x", "x"], ["pos", "neg", "pos", "pos"])
    ds = Dataset(train, val, test, ["neg", "pos"], ["neg", "pos"])
    report = build_report(ds, {"train": _enc([5, 9, 20, 3, 4, 4, 4, 4])}, 8, "head+tail", True)
    t = report["splits"]["train"]
    assert t["rows"] == 8 and t["classes"] == {"neg": 4, "pos": 4}
    assert t["duplicate_rows"] == 2 and t["conflicting_duplicates"] == 1
    assert t["truncated"] == 2 and t["tokens"]["max"] == 20
    assert report["splits"]["test"]["shared_with_train"] == 2
    assert report["splits"]["test"]["duplicate_rows"] == 1
    assert any("2 distinct test texts also appear in train" in w for w in report["warnings"])
    text = format_report(report)
    assert "duplicate rows 2, conflicting duplicates 1" in text and "2 truncated (25.0%)" in text


def test_report_warns_on_severe_imbalance():
    train = _split("train", [str(i) for i in range(50)], ["pos"] * 45 + ["neg"] * 5)
    ds = Dataset(train, _split("validation", ["v"], ["pos"]), None, ["neg", "pos"], ["neg", "pos"])
    report = build_report(ds, {}, 8, "head", True)
    assert report["splits"]["train"]["imbalance_ratio"] == 9.0
    assert any("imbalanced 9.0:1" in w and "--class-weights auto" in w for w in report["warnings"])


def test_class_weights_auto_is_inverse_frequency():
    import torch
    from finetune_bert.training.kinds import loss_weights

    w = loss_weights("classification", np.array([0] * 90 + [1] * 10), 2, torch.device("cpu"))
    assert torch.allclose(w, torch.tensor([100 / 180, 100 / 20]))


def test_report_describes_train_as_given_before_the_validation_split():
    full = _split("train", ["a", "a", "b", "c", "d", "e"], ["pos", "pos", "neg", "pos", "neg", "neg"])
    train, val = full.subset([0, 1, 2, 3]), full.subset([4, 5])
    test = _split("test", ["a", "e", "z"], ["pos", "neg", "pos"])
    ds = Dataset(train, val, test, ["neg", "pos"], ["neg", "pos"], train_all=full)
    report = build_report(ds, {}, 8, "head", True)
    assert report["train_data"]["rows"] == 6 and report["train_data"]["duplicate_rows"] == 1
    assert report["train_data"]["shared_with_test"] == 2  # 'a' and 'e'; 'e' went to validation
    assert "train data as given: 6 rows (neg 3, pos 3); duplicate rows 1" in format_report(report)


def test_a_report_of_many_classes_stays_one_screen():
    """700 classes: the 20 largest are named with a count of the rest; rare classes make one note, not 300."""
    from finetune_bert.data.report import format_report
    from finetune_bert.data.splits import Split, stratified_split

    labels = [f"c{i}" for i in range(300)] + ["big"] * 400 + ["mid"] * 100
    split = Split("train", "t.csv", [f"text {i}" for i in range(len(labels))], labels, [f"line {i}" for i in
                                                                                        range(len(labels))])
    notes: list[str] = []
    stratified_split(split, 0.1, seed=0, notes=notes)
    assert len(notes) == 1 and notes[0].startswith("300 classes have 1 training example each")
    classes = {f"c{i}": 1 for i in range(300)} | {"big": 400, "mid": 100}
    report = {"labels": dict(enumerate(classes)), "cleaning": "on", "max_length": 32, "truncation": "head+tail",
              "splits": {"train": {"rows": 800, "classes": classes, "source": "t.csv", "duplicate_rows": 0,
                                   "conflicting_duplicates": 0}},
              "skipped_rows": 0, "notes": notes, "warnings": []}
    text = format_report(report)
    assert len(text.splitlines()) < 10
    assert "big 400, mid 100, c0 1" in text and "and 282 smaller classes with 282 rows" in text
    assert "and 282 more (all of them in data_report.json)" in text
