"""The token cache: a training file read, checked and tokenized once, then read by every run on it; a new store
for new data or settings; a damaged or foreign one rebuilt; training from it the same as from memory."""

import json

import numpy as np
import pytest

from conftest import toy_rows, write_csv
from finetune_bert.errors import UserError
from finetune_bert.training.config import TrainConfig
from finetune_bert.training.job import prepare


def _prepare(model, data, cache, **changes):
    options = {"max_length": 32, **changes}
    return prepare(TrainConfig(data=str(data), model=str(model), output="unused", token_cache=str(cache), **options))


def _files(cache):
    return {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}


def _same_tokens(a, b):
    for name in ("train", "validation"):
        x, y = a.tokens.splits[name], b.tokens.splits[name]
        assert [r.tolist() for r in x.ids] == [r.tolist() for r in y.ids]
        assert x.lengths.tolist() == y.lengths.tolist() and x.full_lengths.tolist() == y.full_lengths.tolist()
        assert x.labels.tolist() == y.labels.tolist()


def test_a_file_is_tokenized_once_then_every_run_reads_it_as_memory_would(tiny_model, tmp_path, capsys):
    rows = toy_rows(120, seed=4)
    data = write_csv(tmp_path / "train.csv", rows + rows[:10])  # repeats: the report counts them, dedupe drops them
    cache = tmp_path / "cache"
    first = _prepare(tiny_model, data, cache, dedupe=True)
    said = capsys.readouterr().out
    assert "130 rows of " in said and "checked and written to " in said and said.count("tokenizing") == 1
    written = _files(cache)
    again = _prepare(tiny_model, data, cache, dedupe=True)
    said = capsys.readouterr().out
    assert "tokenizing" not in said and "130 rows of " in said and " read from " in said
    assert _files(cache) == written  # nothing rewritten
    memory = _prepare(tiny_model, data, "off", dedupe=True)
    assert "token cache" not in str(capsys.readouterr())
    assert first.report == again.report == memory.report
    assert memory.report["train_data"]["duplicate_rows"] == 0 and "--dedupe removed 10 duplicate rows" in str(memory.report)
    assert [s.where for s in again.ds.skipped] == [s.where for s in memory.ds.skipped]
    for name in ("train", "val"):
        a, b = getattr(again.ds, name), getattr(memory.ds, name)
        assert list(a.texts) == b.texts and list(a.where) == b.where and list(a.labels) == b.labels
    _same_tokens(again, memory)


def test_new_data_or_settings_make_a_new_store_and_a_damaged_one_is_rebuilt(tiny_model, tmp_path, capsys):
    data = write_csv(tmp_path / "train.csv", toy_rows(60, seed=5))
    cache = tmp_path / "cache"
    reference = _prepare(tiny_model, data, cache)
    rows_store = next(cache.glob("rows-*"))
    _prepare(tiny_model, data, cache, max_length=16)  # other token settings: a second tokens store, same rows
    assert len(list(rows_store.glob("tokens-*"))) == 2 and len(list(cache.glob("rows-*"))) == 1
    _prepare(tiny_model, data, cache, clean=False)  # another reading of the file: a second rows store
    write_csv(data, toy_rows(61, seed=5))
    _prepare(tiny_model, data, cache)  # the file changed in place
    assert len(list(cache.glob("rows-*"))) == 3
    capsys.readouterr()

    write_csv(data, toy_rows(60, seed=5))  # the first file's bytes again: its stores are found
    tokens = next(p for p in rows_store.glob("tokens-*") if json.loads((p / "meta.json").read_text())["key"]["max_length"] == 32)
    with open(tokens / "ids", "r+b") as handle:
        handle.truncate(8)  # as a full disk or a copy cut short leaves it
    meta = json.loads((rows_store / "meta.json").read_text())
    stale = cache / f".tmp-{rows_store.name}-99999-deadbeef"  # what a build killed midway leaves
    stale.mkdir()
    (stale / "texts").write_bytes(b"half")
    rebuilt = _prepare(tiny_model, data, cache)
    said = str(capsys.readouterr())
    assert "ids has 8 bytes" in said and "it is built again" in said and "tokenizing 60 rows" in said
    assert "60 rows of " in said and " read from " in said
    _same_tokens(rebuilt, reference)
    meta["key"]["clean"] = not meta["key"]["clean"]  # a store that says it was made otherwise is not trusted
    (rows_store / "meta.json").write_text(json.dumps(meta))
    assert _prepare(tiny_model, data, cache).report == reference.report
    said = str(capsys.readouterr())
    assert "made from other data or settings; it is built again" in said and "checked and written" in said
    assert not stale.exists()


def test_a_bad_row_stops_the_run_as_before_and_leaves_no_store(tiny_model, tmp_path):
    rows = toy_rows(40, seed=6)
    rows[7]["text"] = "   "
    data = write_csv(tmp_path / "train.csv", rows)
    cache = tmp_path / "cache"
    with pytest.raises(UserError) as stored:
        _prepare(tiny_model, data, cache)
    with pytest.raises(UserError) as memory:
        _prepare(tiny_model, data, "off")
    assert str(stored.value) == str(memory.value) and "line 9, column 'text'" in str(stored.value)
    assert not [p for p in cache.iterdir() if not p.name.endswith(".lock")]


def test_training_from_the_cache_gives_the_same_model_as_from_memory(tiny_model, toy_data, tmp_path):
    from finetune_bert import train

    common = dict(data=str(toy_data["train"]), model=str(tiny_model), epochs=1, batch_size=16, lr=1e-3,
                  max_length=32, seed=0, export=False, report=False, calibrate=False)
    stored = train(output=str(tmp_path / "stored"), token_cache=str(tmp_path / "cache"), **common)
    memory = train(output=str(tmp_path / "memory"), token_cache="off", **common)
    for name in ("model.safetensors", "seen_texts.txt", "data_report.json"):
        assert (tmp_path / "stored" / name).read_bytes() == (tmp_path / "memory" / name).read_bytes(), name
    assert stored.metrics["validation"] == memory.metrics["validation"]


def test_a_stored_column_reads_rows_as_a_list_would(tiny_model, tmp_path):
    data = write_csv(tmp_path / "train.csv", toy_rows(30, seed=7))
    prepared = _prepare(tiny_model, data, tmp_path / "cache")
    texts = prepared.ds.train_all.texts
    listed = list(texts)
    assert texts[3] == listed[3] and texts[-1] == listed[-1] and texts[2:9] == listed[2:9] and texts[::7] == listed[::7]
    picked = texts.take(np.array([5, 0, 5]))
    assert list(picked) == [listed[5], listed[0], listed[5]] and picked[-1] == listed[5]
    with pytest.raises(IndexError):
        texts[30]
