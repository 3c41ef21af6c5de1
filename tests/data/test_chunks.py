"""A split read chunk by chunk gives the rows, the skipped rows and the errors of reading it whole."""

import json

import pytest

from conftest import toy_rows, write_csv
from finetune_bert.data.rows import to_split
from finetune_bert.data.skipped import SkippedRow
from finetune_bert.errors import UserError
from finetune_bert.data.readers import read_records
from finetune_bert.data.sources import source_chunks
from finetune_bert.data.chunks import ChunkedSplit


def _both(path, on_bad_rows="error", need_labels=True, rows_per_chunk=3, text_column=None):
    """(whole-file split and skipped rows, or the error) and the same from ChunkedSplit."""
    results = []
    for chunked in (False, True):
        skipped: list[SkippedRow] = []
        try:
            if chunked:
                rows = ChunkedSplit(source_chunks(str(path), "test", rows_per_chunk), "test", text_column, None,
                                    True, need_labels, on_bad_rows=on_bad_rows)
                count = rows.check()
                splits = list(rows)
                assert count == sum(len(s) for s in splits) and len(splits) > 1
                result = ([t for s in splits for t in s.texts], [x for s in splits for x in s.labels or []],
                          [w for s in splits for w in s.where], rows.skipped)
            else:
                split = to_split(read_records(path), "test", text_column, None, True, need_labels, skipped=skipped,
                                 on_bad_rows=on_bad_rows)
                result = (split.texts, split.labels or [], split.where, skipped)
        except UserError as exc:
            result = str(exc)
        results.append(result)
    return results


def _rows_with_bad(n=14):
    rows = toy_rows(n)
    rows[2]["text"] = ""       # line 4
    rows[9]["label"] = ""      # line 11, a later chunk
    rows[12]["text"] = "  "    # line 14
    return rows


def test_bad_rows_in_later_chunks_give_one_error_counting_all(tmp_path):
    whole, chunked = _both(write_csv(tmp_path / "b.csv", _rows_with_bad()))
    assert chunked == whole == (f"{tmp_path / 'b.csv'}: line 4, column 'text': text is empty (2 more bad rows); "
                                "fix the data or pass --on-bad-rows skip")


def test_skipped_rows_are_recorded_in_order(tmp_path):
    whole, chunked = _both(write_csv(tmp_path / "b.csv", _rows_with_bad()), on_bad_rows="skip")
    assert chunked == whole
    assert [s.where for s in chunked[3]] == ["line 4", "line 11", "line 14"] and len(chunked[0]) == 11


def test_mixed_label_kinds_across_chunks(tmp_path):
    rows = toy_rows(10)
    rows[7]["label"] = 1
    whole, chunked = _both(write_csv(tmp_path / "m.csv", rows))
    assert chunked == whole and "line 2, column 'label': label 'positive' is text but line 9" in chunked


def test_no_usable_rows(tmp_path):
    rows = [{"text": "", "label": "a"}] * 7
    whole, chunked = _both(write_csv(tmp_path / "e.csv", rows), on_bad_rows="skip")
    assert chunked == whole == (f"{tmp_path / 'e.csv'}: no usable rows: all 7 rows are bad (the first: line 2, "
                                "column 'text': text is empty); nothing is left to use")


def test_jsonl_label_key_first_seen_in_a_later_chunk(tmp_path):
    # Columns are the keys of all records: a label column that appears late makes earlier rows bad where
    # labels are needed; predict (need_labels=False) only copies labels, so their absence is fine there.
    lines = [{"text": "good film"}] * 4 + [{"text": "bad film", "label": "negative"}] * 4
    (tmp_path / "late.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    whole, chunked = _both(tmp_path / "late.jsonl")
    assert chunked == whole and "line 1, column 'label': label is missing (3 more bad rows)" in chunked
    whole, chunked = _both(tmp_path / "late.jsonl", on_bad_rows="skip")
    assert chunked == whole and len(chunked[3]) == 4
    whole, chunked = _both(tmp_path / "late.jsonl", need_labels=False)
    assert chunked == whole and chunked[1] == [None] * 4 + ["negative"] * 4 and chunked[3] == []


def test_missing_column_named_as_the_whole_file_names_it(tmp_path):
    whole, chunked = _both(write_csv(tmp_path / "c.csv", toy_rows(8)), text_column="review")
    assert chunked == whole and "text column 'review' not found" in chunked


def test_iterating_before_check_is_refused(tmp_path):
    rows = ChunkedSplit(source_chunks(str(write_csv(tmp_path / "d.csv", toy_rows(4))), "test", 2), "test",
                        None, None, True, True, on_bad_rows="error")
    with pytest.raises(RuntimeError):
        next(iter(rows))


# ---- ahead: the next chunk worked on while this one is used -------------------------------------------


def test_ahead_keeps_the_order_and_works_while_the_caller_does():
    import time
    from finetune_bert.data.chunks import ahead

    def slow_double(x):
        time.sleep(0.2)
        return 2 * x

    started = time.time()
    seen = []
    for item, result in ahead(range(5), slow_double):
        time.sleep(0.2)  # the caller's own work (scoring)
        seen.append((item, result))
    assert seen == [(i, 2 * i) for i in range(5)]
    assert time.time() - started < 1.6  # serial would take 2.0 s


def test_ahead_reads_at_most_one_item_beyond_the_one_in_use():
    import time
    from finetune_bert.data.chunks import ahead

    read = []

    def items():
        for i in range(10):
            read.append(i)
            yield i

    for item, _ in ahead(items(), lambda x: x):
        time.sleep(0.3)  # time for a greedy worker to run far ahead
        assert len(read) <= item + 2


def test_ahead_raises_the_workers_error_in_its_place_and_stops_early():
    import threading
    from finetune_bert.data.chunks import ahead

    def work(x):
        if x == 3:
            raise ValueError("bad chunk 3")
        return x

    got = []
    with pytest.raises(ValueError, match="bad chunk 3"):
        for item, _ in ahead(range(10), work):
            got.append(item)
    assert got == [0, 1, 2]
    for item, _ in ahead(range(100), lambda x: x):
        if item == 1:
            break
    assert not [t for t in threading.enumerate() if t.name == "finetune-bert-ahead"]


def test_ahead_without_overlap_runs_in_the_callers_thread():
    import threading
    from finetune_bert.data.chunks import ahead

    threads = [t for _, t in ahead(range(3), lambda x: threading.current_thread().name, overlap=False)]
    assert threads == [threading.current_thread().name] * 3
