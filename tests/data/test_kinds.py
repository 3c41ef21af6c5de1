"""The other task kinds' data: label sets, numeric targets and text pairs, read and checked; every bad row
named by file, line and column."""

import json
import subprocess

import numpy as np
import pytest

from conftest import PYTHON, _env, toy_multilabel_rows, toy_pair_rows, toy_regression_rows, toy_rows, write_csv
from finetune_bert.data.dataset import load_dataset
from finetune_bert.data.kinds import label_sets_hint, strata
from finetune_bert.data.labels import LabelSpec, label_set, target
from finetune_bert.data.splits import Split
from finetune_bert.errors import UserError
from finetune_bert.training.config import TrainConfig


def cfg(path, **kw):
    return TrainConfig(data=str(path), output="unused", **kw)


def test_label_cells_read_as_sets_lists_and_numbers():
    assert label_set("joy; love ;;joy", ";") == (("joy", "love"), None)
    assert label_set(["joy", 3, "3"], ";") == (("joy", 3), None)  # '3' and 3 are one label, as classes are
    assert label_set("a|b", "|") == (("a", "b"), None)
    assert label_set({"a": 1}, ";")[1] is not None and label_set([["a"]], ";")[1] is not None
    assert target(" 7 ") == (7.0, None) and target(3.5) == (3.5, None)
    for bad in ("nan", "inf", float("nan"), "seven", True, [1]):
        assert target(bad)[0] is None and "number" in target(bad)[1]
    assert LabelSpec("multi-label").missing() == ((), None)  # an empty cell: no label, allowed
    assert LabelSpec("regression").missing() == (None, "target is missing")
    assert "pass --task multi-label" in LabelSpec().read(["a", "b"])[1]


def test_label_sets_read_as_classes_are_refused_with_the_hint(tmp_path):
    rows = [{"text": r["text"], "labels": r["labels"] or "pos"} for r in toy_multilabel_rows(200, seed=3)]
    data = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(UserError, match=r"d\.csv: the label column 'labels' looks like label sets, not classes: "
                                        r"\d+ of its \d+ distinct values hold ';' \(the first at line \d+: .*\); "
                                        r"pass --task multi-label"):
        load_dataset(cfg(data))
    ds = load_dataset(cfg(data, task="multi-label"))
    assert ds.label_names == ["neg", "pos", "tech"] and ds.task == "multi-label"
    # one class whose name holds the separator is not a label set
    lone = Split("train", "x", ["a", "b", "c"], ["R&B;soul", "pop", "pop"], ["line 2", "line 3", "line 4"])
    assert label_sets_hint(lone, ";", "genre") is None


def test_multi_label_encodes_multi_hot_rows_and_allows_rows_without_labels(tmp_path):
    rows = toy_multilabel_rows(120, seed=4)
    ds = load_dataset(cfg(write_csv(tmp_path / "d.csv", rows), task="multi-label"))
    hot = ds.encode_labels(ds.train)
    assert hot.shape == (len(ds.train), 3) and hot.dtype == np.float32
    assert (hot.sum(axis=1) == 0).any() and (hot.sum(axis=1) > 1).any()
    for row, labels in zip(hot, ds.train.labels):
        assert {ds.label_names[i] for i in np.flatnonzero(row)} == set(labels)


def test_a_label_not_in_train_is_an_error_naming_file_line_and_column(tmp_path):
    train = write_csv(tmp_path / "train.csv", toy_multilabel_rows(80, seed=5))
    test = write_csv(tmp_path / "test.csv", [{"text": "great camera", "labels": "pos;sports"}])
    with pytest.raises(UserError, match=r"test\.csv: line 2, column 'labels': label 'sports' does not occur in the "
                                        r"training data"):
        load_dataset(cfg(train, test_data=str(test), task="multi-label"))


def test_label_names_that_never_occur_in_train_are_refused(tmp_path):
    rows = [{"text": f"text {i}", "labels": "0;1" if i % 2 else "1"} for i in range(40)]
    data = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(UserError, match=r"--label-names names labels that never occur in the training data: "
                                        r"'grief' \(id 2\)"):
        load_dataset(cfg(data, task="multi-label", label_names="joy,love,grief"))
    assert load_dataset(cfg(data, task="multi-label", label_names="joy,love")).label_names == ["joy", "love"]


@pytest.mark.parametrize("cell, reason", [("seven", "target 'seven' is not a number"),
                                          ("nan", "target 'nan' is not a finite number"),
                                          ("inf", "target 'inf' is not a finite number"),
                                          ("", "target is missing")])
def test_bad_regression_targets_name_file_line_and_column(tmp_path, cell, reason):
    rows = toy_regression_rows(30, seed=6)
    rows[4]["rating"] = cell
    data = write_csv(tmp_path / "r.csv", rows)
    with pytest.raises(UserError, match=rf"r\.csv: line 6, column 'rating': {reason}"):
        load_dataset(cfg(data, task="regression"))


def test_a_constant_target_is_refused(tmp_path):
    rows = [{"text": r["text"], "rating": 4} for r in toy_regression_rows(30)]
    with pytest.raises(UserError, match=r"every training target is 4 .*regression needs targets that vary"):
        load_dataset(cfg(write_csv(tmp_path / "c.csv", rows), task="regression"))


def test_regression_targets_are_standardised_and_validation_spans_them(tmp_path):
    ds = load_dataset(cfg(write_csv(tmp_path / "r.csv", toy_regression_rows(300, seed=7)), task="regression"))
    z = ds.encode_labels(ds.train)
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std()) - 1) < 1e-4
    assert ds.label_names == ["rating"] and ds.integer_targets
    assert len(set(strata(ds.val, "regression"))) >= 4  # deciles of the target, not one end of it


def test_pairs_found_by_their_usual_names_and_an_empty_second_text_named(tmp_path):
    rows = toy_pair_rows(40)
    ds = load_dataset(cfg(write_csv(tmp_path / "p.csv", rows)))
    assert ds.train.pairs is not None and ds.train.columns.pair == "sentence2"
    rows[2]["sentence2"] = "  "
    with pytest.raises(UserError, match=r"p\.csv: line 4, column 'sentence2': pair text is empty"):
        load_dataset(cfg(write_csv(tmp_path / "p.csv", rows)))
    renamed = [{"q": r["sentence1"], "a": r["sentence2"], "label": r["label"]} for r in toy_pair_rows(40)]
    ds = load_dataset(cfg(write_csv(tmp_path / "n.csv", renamed), text_column="q", text_pair_column="a"))
    assert ds.train.pairs[0] and ds.train.columns[::2] == ("q", "a")


def test_single_texts_and_pairs_in_one_run_are_refused(tmp_path):
    train = write_csv(tmp_path / "train.csv", toy_pair_rows(40))
    test = write_csv(tmp_path / "test.csv", [{"text": r["text"], "label": 1} for r in toy_rows(10)])
    with pytest.raises(UserError, match=r"test\.csv: has no second text column, but .*train\.csv is read as text "
                                        r"pairs \('sentence1' and 'sentence2'\)"):
        load_dataset(cfg(train, test_data=str(test), text_column=None))


def test_the_cli_says_a_bad_target_in_one_line_and_exits_2(tmp_path, tiny_model):
    rows = toy_regression_rows(30, seed=8)
    rows[9]["rating"] = "n/a"
    data = write_csv(tmp_path / "r.csv", rows)
    done = subprocess.run([PYTHON, "-m", "finetune_bert.cli", "train", "--task", "regression", "--data", str(data),
                           "--model", str(tiny_model), "--output", str(tmp_path / "o")], capture_output=True,
                          text=True, env=_env(), timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (f"error: {data}: line 11, column 'rating': target 'n/a' is not a "
                                                    "number; fix the data or pass --on-bad-rows skip")
    assert not (tmp_path / "o").exists()


def test_the_data_report_counts_labels_per_text_and_the_target(tmp_path):
    from finetune_bert.data.report import build_report, format_report
    ds = load_dataset(cfg(write_csv(tmp_path / "d.csv", toy_multilabel_rows(100, seed=9)), task="multi-label"))
    report = build_report(ds, {}, 32, "head+tail", True)
    split = report["splits"]["train"]
    assert split["labels_per_text"]["several"] > 0 and split["co_occurring"][0]["rows"] > 0
    assert sum(split["classes"].values()) == sum(len(x) for x in ds.train.labels)
    assert "labels per text: mean" in format_report(report)
    ds = load_dataset(cfg(write_csv(tmp_path / "r.csv", toy_regression_rows(100)), task="regression"))
    text = format_report(build_report(ds, {}, 32, "head+tail", True))
    assert "target: mean" in text and "rows ()" not in text
    json.dumps(build_report(ds, {}, 32, "head+tail", True))
