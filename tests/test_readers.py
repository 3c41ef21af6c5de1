"""Every input format, and the exact message for each broken file."""

import gzip
import json

import pytest

from conftest import write_csv
from finetune_bert.errors import UserError
from finetune_bert.readers import read_folder_split, read_records

ROWS = [{"text": "a good film, truly", "label": "positive"}, {"text": 'said "bad"\nand left', "label": "negative"}]


def _expect(rows):
    assert [r["text"] for r in rows] == [r["text"] for r in ROWS]
    assert [str(r["label"]) for r in rows] == [r["label"] for r in ROWS]


def test_reads_csv_with_line_numbers_of_multiline_rows(tmp_path):
    rec = read_records(write_csv(tmp_path / "d.csv", ROWS))
    _expect(rec.rows)
    assert rec.where == ["line 2", "line 3"]  # header is line 1; row 2 spans lines 3-4


def test_reads_tsv(tmp_path):
    _expect(read_records(write_csv(tmp_path / "d.tsv", ROWS, delimiter="\t")).rows)


def test_reads_gzipped_csv(tmp_path):
    plain = write_csv(tmp_path / "d.csv", ROWS)
    (tmp_path / "d.csv.gz").write_bytes(gzip.compress(plain.read_bytes()))
    _expect(read_records(tmp_path / "d.csv.gz").rows)


def test_reads_json_list_and_columns(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    _expect(read_records(tmp_path / "a.json").rows)
    (tmp_path / "b.json").write_text(json.dumps({"text": [r["text"] for r in ROWS],
                                                 "label": [r["label"] for r in ROWS]}))
    _expect(read_records(tmp_path / "b.json").rows)


def test_reads_jsonl_skipping_blank_lines(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    rec = read_records(tmp_path / "d.jsonl")
    _expect(rec.rows)
    assert rec.where == ["line 1", "line 3"]


def test_reads_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    rec = read_records(tmp_path / "d.parquet")
    _expect(rec.rows)
    assert rec.where == ["row 1", "row 2"]


def test_reads_aclimdb_folder(tmp_path):
    for split in ("train", "test"):
        for cls, text in (("pos", "great"), ("neg", "awful")):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in (10, 2):
                (tmp_path / split / cls / f"{i}_7.txt").write_text(f"{text} {i}")
    (tmp_path / "train" / "unsup").mkdir()
    (tmp_path / "train" / "unsup" / "0_0.txt").write_text("unlabelled")
    rec = read_folder_split(tmp_path, "train")
    assert [r["label"] for r in rec.rows] == ["negative", "negative", "positive", "positive"]
    assert rec.where[0] == "train/neg/2_7.txt"  # natural order: 2 before 10


def test_raises_on_missing_file(tmp_path):
    with pytest.raises(UserError, match="nope.csv: file not found"):
        read_records(tmp_path / "nope.csv")


def test_raises_on_empty_file(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(UserError, match="e.csv: file is empty"):
        read_records(tmp_path / "e.csv")


def test_raises_on_header_without_rows(tmp_path):
    (tmp_path / "h.csv").write_text("text,label\n")
    with pytest.raises(UserError, match="h.csv: has a header but no rows"):
        read_records(tmp_path / "h.csv")


def test_raises_on_unsupported_extension_listing_supported(tmp_path):
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(UserError, match=r"unsupported file type '.xlsx'; supported: .csv, .tsv"):
        read_records(tmp_path / "d.xlsx")


def test_raises_on_unterminated_quote(tmp_path):
    (tmp_path / "q.csv").write_text('text,label\nfine,positive\n"never closed,negative\nmore,positive\n')
    with pytest.raises(UserError, match=r"q.csv: line 3: malformed CSV .*quote is probably never closed"):
        read_records(tmp_path / "q.csv")


def test_raises_on_malformed_jsonl_line(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label": }\n')
    with pytest.raises(UserError, match=r"m.jsonl: line 2: malformed JSON"):
        read_records(tmp_path / "m.jsonl")


def test_raises_on_non_utf8_bytes_naming_the_line(tmp_path):
    (tmp_path / "u.csv").write_bytes(b"text,label\nok,positive\ncaf\xe9 bad,negative\n")
    with pytest.raises(UserError, match=r"u.csv: line 3: bytes .* are not valid UTF-8"):
        read_records(tmp_path / "u.csv")


def test_raises_on_wrong_field_count(tmp_path):
    (tmp_path / "f.csv").write_text("text,label\nok,positive\ntoo,many,fields\n")
    with pytest.raises(UserError, match=r"f.csv: line 3: 3 fields where the header has 2"):
        read_records(tmp_path / "f.csv")
