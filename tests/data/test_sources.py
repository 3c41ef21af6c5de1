"""Data specs: aclImdb-style folders (which files and which split), hub names, reading a file twice."""

import json
import os
import sys

import pytest

from conftest import write_csv
from finetune_bert.errors import UserError
from finetune_bert.data.sources import read_folder_split, read_source, source_chunks


def _message(call):
    with pytest.raises(UserError) as info:
        call()
    return str(info.value)


def _folder(root, splits=("train", "test"), names=("10_7.txt", "2_7.txt")):
    for split in splits:
        for cls, text in (("pos", "great"), ("neg", "awful")):
            (root / split / cls).mkdir(parents=True)
            for name in names:
                (root / split / cls / name).write_text(f"{text} {name}")
    return root


def test_reads_aclimdb_folder(tmp_path):
    _folder(tmp_path)
    (tmp_path / "train" / "unsup").mkdir()
    (tmp_path / "train" / "unsup" / "0_0.txt").write_text("unlabelled")
    (tmp_path / "train" / "urls_pos.txt").write_text("aclImdb keeps its URL lists here")
    rec = read_folder_split(tmp_path, "train")
    assert [r["label"] for r in rec.rows] == ["negative", "negative", "positive", "positive"]
    assert rec.where[0] == "train/neg/2_7.txt"  # natural order: 2 before 10
    assert rec.notes == []  # unsup and the files beside the class folders are aclImdb's own, not texts


def test_a_folder_reads_txt_files_whatever_the_case_and_counts_what_it_does_not_read(tmp_path):
    _folder(tmp_path, splits=("train",))
    (tmp_path / "train" / "pos" / "3_9.TXT").write_text("great too")
    (tmp_path / "train" / "pos" / "notes.md").write_text("not a review")
    (tmp_path / "train" / "neg" / "more").mkdir()
    rec = read_folder_split(tmp_path, "train")
    assert "train/pos/3_9.TXT" in rec.where and len(rec.rows) == 5
    assert rec.notes == [f"{tmp_path / 'train'}: 2 entries in the class folders are not .txt files and were not "
                         "read (the first: train/neg/more)"]


def test_a_folder_without_the_split_asked_for_says_which_split_is_used(tmp_path):
    _folder(tmp_path, splits=("train",))
    records, _, _ = read_source(str(tmp_path), "test")
    assert records.where[0].startswith("train/")
    assert records.notes == [f"{tmp_path} has no test/ split: its train/ split is used"]
    assert read_source(str(tmp_path), "train")[0].notes == []


def test_source_chunks_read_again_and_fall_back_to_one_chunk(tmp_path):
    rows = [{"text": f"review {i}", "label": "a"} for i in range(11)]
    chunks = source_chunks(str(write_csv(tmp_path / "d.csv", rows)), "test", 4)
    assert [len(c.rows) for c in chunks] == [4, 4, 3] and [len(c.rows) for c in chunks] == [4, 4, 3]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    assert [len(c.rows) for c in source_chunks(str(tmp_path / "a.json"), "test", 4)] == [11]


def test_a_pipe_is_refused_where_the_input_is_read_twice(tmp_path):
    fifo = tmp_path / "in.csv"
    os.mkfifo(fifo)
    assert _message(lambda: source_chunks(str(fifo), "test", 4)) == (
        f"{fifo}: is a pipe or device, not a regular file; evaluate and predict read their input twice (every "
        "row is checked before any is scored), so save it to a file first")


def test_hub_name_without_datasets_package_is_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now fails as if not installed
    for call in (lambda: read_source("imdb", "train"), lambda: source_chunks("imdb", "train", 10)):
        message = _message(call)
        assert message.startswith("'imdb' is not a local file or folder") and "\n" not in message
        assert "`datasets` package" in message and "pip install datasets" in message
        assert "local files work without it" in message
