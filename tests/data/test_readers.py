"""Every input format, and the exact message for each broken file."""

import gzip
import json

import pytest

from conftest import write_csv
from finetune_bert.errors import UserError
from finetune_bert.data.readers import iter_record_chunks, read_records
from finetune_bert.data.sources import source_chunks

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


# ---------------------------------------------------------------- streaming: the same records, chunk by chunk

MANY = [{"text": f"review {i}, {'very ' * (i % 3)}good", "label": "positive" if i % 2 else "negative"}
        for i in range(11)]
MANY[3]["text"] = 'she said "dull"\nthen\r\nleft'  # quoted multi-line field: one row over three lines
MANY[8]["text"] = "café, naïve ✓"


def _write(path, rows, gz=False):
    """rows in the format the name says; .gz: compressed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    plain = path.with_suffix("") if gz else path
    if plain.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), plain, row_group_size=4)
    elif plain.suffix in (".jsonl", ".txt"):
        lines = [json.dumps(r) if plain.suffix == ".jsonl" else " ".join(r["text"].split()) for r in rows]
        lines.insert(5, "")  # a blank line counts in the numbering and gives no record
        plain.write_text("\n".join(lines) + "\n")
    else:
        write_csv(plain, rows, delimiter="\t" if plain.suffix == ".tsv" else ",")
    if gz:
        path.write_bytes(gzip.compress(plain.read_bytes()))
        plain.unlink()
    return path


def _joined(chunks):
    rows, where = [], []
    for chunk in chunks:
        rows += chunk.rows
        where += chunk.where
    return rows, where


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.jsonl", "d.txt", "d.parquet",
                                  "d.csv.gz", "d.tsv.gz", "d.jsonl.gz", "d.txt.gz"])
@pytest.mark.parametrize("rows_per_chunk", [1, 3, 4, 100])
def test_streamed_chunks_are_the_whole_file_records(tmp_path, name, rows_per_chunk):
    path = _write(tmp_path / name, MANY, gz=name.endswith(".gz"))
    whole = read_records(path)
    chunks = list(iter_record_chunks(path, rows_per_chunk))
    assert [len(c.rows) for c in chunks][:-1] == [rows_per_chunk] * (len(chunks) - 1)
    assert _joined(chunks) == (whole.rows, whole.where)
    assert all(c.columns == whole.columns and c.source == whole.source for c in chunks)
    assert len(whole.rows) == 11 and whole.where[-1] != "line 11"  # rows are not numbered naively


def test_streamed_csv_locations_count_multiline_fields_and_windows_newlines(tmp_path):
    raw = ('\ufefftext,label\r\n"one\r\ntwo",a\r\n\r\nthree,b\r\n"x\ry",c\rlast,d\n').encode()
    (tmp_path / "w.csv").write_bytes(raw)
    whole = read_records(tmp_path / "w.csv")
    assert whole.columns == ["text", "label"]
    assert whole.where == ["line 2", "line 5", "line 6", "line 8"]
    assert _joined(iter_record_chunks(tmp_path / "w.csv", 1)) == (whole.rows, whole.where)


def _message(call):
    with pytest.raises(UserError) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("name, content", [
    ("late.csv", "text,label\n" + "ok,a\n" * 6 + '"never closed,b\nmore,a\n'),
    ("fields.tsv", "text\tlabel\n" + "ok\ta\n" * 6 + "too\tmany\tfields\n"),
    ("late.jsonl", '{"text": "a", "label": 1}\n' * 6 + '{"text": "b", "label": }\n'),
    ("list.jsonl", '{"text": "a", "label": 1}\n' * 6 + '["b", 1]\n'),
    ("empty.csv", "\n \n\n"),
    ("header.csv", "text,label\n\n"),
])
def test_streamed_errors_are_the_whole_file_errors(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    expected = _message(lambda: read_records(tmp_path / name))
    assert _message(lambda: list(iter_record_chunks(tmp_path / name, 2))) == expected


def test_streamed_non_utf8_names_the_line_and_bytes(tmp_path):
    raw = b"text,label\n" + b"ok,a\n" * 6 + b"caf\xe9\nx,b\n"
    for name in ("u.csv", "u.csv.gz"):
        (tmp_path / name).write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
        expected = _message(lambda: read_records(tmp_path / name))
        assert "line 8: bytes b'\\xe9\\nx,'" in expected
        assert _message(lambda: list(iter_record_chunks(tmp_path / name, 2))) == expected


@pytest.mark.parametrize("damage", ["not gzip", "truncated"])
def test_streamed_broken_gzip_is_one_line_naming_the_file(tmp_path, damage):
    packed = gzip.compress(("text,label\n" + "a fine film,positive\n" * 5000).encode())
    path = tmp_path / "b.csv.gz"
    path.write_bytes(b"text,label\nx,y\n" if damage == "not gzip" else packed[: len(packed) // 2])
    expected = _message(lambda: read_records(path))
    assert expected.startswith(f"{path}: not a valid gzip file") and "\n" not in expected
    assert _message(lambda: list(iter_record_chunks(path, 100))) == expected


def test_streamed_missing_and_corrupt_parquet(tmp_path):
    assert _message(lambda: list(iter_record_chunks(tmp_path / "no.parquet", 5))) == \
        f"{tmp_path / 'no.parquet'}: file not found"
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    assert "bad.parquet: not a readable Parquet file" in _message(lambda: list(iter_record_chunks(
        tmp_path / "bad.parquet", 5)))


# ---------------------------------------------------------------- unusual but valid files, and broken ones


def _all_ways(path, rows_per_chunk=1):
    """(rows, where) as read whole, streamed in small chunks and through source_chunks: all must agree."""
    whole = read_records(path)
    for chunks in (iter_record_chunks(path, rows_per_chunk), source_chunks(str(path), "train", rows_per_chunk)):
        assert _joined(chunks) == (whole.rows, whole.where)
    return whole


@pytest.mark.parametrize("name", ["long.csv", "long.csv.gz"])
def test_reads_csv_fields_longer_than_csv_default_field_limit(tmp_path, name):
    long_text = 'a "long" document, ' * 15_790  # 300,010 characters: over csv's default cap of 131,072
    rows = [{"text": "short", "label": "a"}, {"text": long_text, "label": "b"}, {"text": "end", "label": "a"}]
    whole = _all_ways(_write(tmp_path / name, rows, gz=name.endswith(".gz")))
    assert [r["text"] for r in whole.rows] == ["short", long_text, "end"] and len(long_text) > 300_000


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_reads_csv_delimited_by_what_its_header_is(tmp_path, delimiter):
    comma = read_records(write_csv(tmp_path / "comma.csv", MANY))
    other = _all_ways(write_csv(tmp_path / "other.csv", MANY, delimiter=delimiter), 4)
    assert (other.columns, other.rows, other.where) == (comma.columns, comma.rows, comma.where)
    assert "," in other.rows[0]["text"]  # a ',' in the text did not split it


def test_reads_tsv_that_is_really_comma_delimited(tmp_path):
    comma = read_records(write_csv(tmp_path / "comma.csv", MANY))
    tsv = _all_ways(write_csv(tmp_path / "comma.tsv", MANY), 3)
    assert (tsv.columns, tsv.rows, tsv.where) == (comma.columns, comma.rows, comma.where)


def test_one_column_csv_with_commas_only_in_quotes_stays_one_column(tmp_path):
    (tmp_path / "one.csv").write_text('"review, in full"\n"good, very good"\n"bad; not good"\n')
    whole = _all_ways(tmp_path / "one.csv")
    assert whole.columns == ["review, in full"]
    assert whole.rows == [{"review, in full": "good, very good"}, {"review, in full": "bad; not good"}]


def test_csv_header_with_semicolon_and_comma_keeps_comma_and_names_semicolon_if_a_row_fails(tmp_path):
    (tmp_path / "both.csv").write_text("text;note,label\nfine;x,a\n")
    assert read_records(tmp_path / "both.csv").rows == [{"text;note": "fine;x", "label": "a"}]
    (tmp_path / "bad.csv").write_text("text;note,label\nfine;x,a\nnot,fine,b\n")
    message = _message(lambda: read_records(tmp_path / "bad.csv"))
    assert message.startswith(f"{tmp_path / 'bad.csv'}: line 3: 3 fields where the header has 2")
    assert message.endswith("the header looks ';'-delimited")
    assert _message(lambda: list(iter_record_chunks(tmp_path / "bad.csv", 1))) == message


@pytest.mark.parametrize("name", ["dup.csv", "dup.tsv", "dup.parquet"])
def test_duplicate_column_names_are_refused_not_silently_merged(tmp_path, name):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / name
    if name.endswith(".parquet"):
        pq.write_table(pa.table([["a"], ["x"], ["b"]], names=["text", "label", "text"]), path)
        where = f"{path}"
    else:
        sep = "\t" if name.endswith(".tsv") else ","
        path.write_text(sep.join(["text", "label", " text"]) + "\n" + sep.join("axb") + "\n")
        where = f"{path}: line 1"
    expected = f"{where}: column name 'text' appears twice (columns 1 and 3); rename one"
    assert _message(lambda: read_records(path)) == expected
    assert _message(lambda: list(iter_record_chunks(path, 1))) == expected


@pytest.mark.parametrize("name", ["u16.csv", "u16.csv.gz", "u16.jsonl", "u16.txt"])
def test_nul_bytes_name_the_line(tmp_path, name):
    head = '{"text": "ok"}\n' * 2 if ".jsonl" in name else "text,label\nok,a\n"
    raw = head.encode() + "utf,16\n".encode("utf-16-le")  # valid UTF-8, but a NUL every second byte
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    expected = f"{path}: line 3: has NUL bytes; is it UTF-16 or not text? (save the file as UTF-8)"
    assert _message(lambda: read_records(path)) == expected
    assert _message(lambda: list(iter_record_chunks(path, 1))) == expected


def test_jsonl_and_txt_split_lines_only_at_line_ends(tmp_path):
    # json.dumps(ensure_ascii=False) writes U+2028 raw; str.splitlines() would split the record there.
    texts = ["one\u2028two", "page\x0cbreak", "next\x85line", "last\x1cone"]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    (tmp_path / "d.txt").write_text("\r\n".join(texts) + "\r\n")
    for name in ("d.jsonl", "d.txt"):
        whole = _all_ways(tmp_path / name)
        assert [r["text"] for r in whole.rows] == texts and whole.where == ["line 1", "line 2", "line 3", "line 4"]


def test_reads_gzipped_parquet(tmp_path):
    plain = _write(tmp_path / "d.parquet", MANY)
    (tmp_path / "d.parquet.gz").write_bytes(gzip.compress(plain.read_bytes()))
    whole = _all_ways(tmp_path / "d.parquet.gz", 4)
    assert (whole.rows, whole.where) == (read_records(plain).rows, read_records(plain).where)


def test_parquet_list_and_struct_cells_pass_through_unchanged(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": ["a", "b"], "meta": {"n": 1}, "label": 2}, {"text": [], "meta": {"n": 3}, "label": 0}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "nested.parquet")
    assert _all_ways(tmp_path / "nested.parquet").rows == rows  # data.py judges them, not the reader


def test_blank_lines_before_csv_header_are_skipped(tmp_path):
    (tmp_path / "b.csv").write_text("\n\ntext,label\nfine,a\n")
    whole = _all_ways(tmp_path / "b.csv")
    assert whole.columns == ["text", "label"] and whole.where == ["line 4"]


def test_unescaped_quote_inside_quoted_field_says_so(tmp_path):
    (tmp_path / "q.csv").write_text('text,label\nfine,a\n"he said "hi" twice",b\n')
    message = _message(lambda: read_records(tmp_path / "q.csv"))
    assert message.startswith(f"{tmp_path / 'q.csv'}: line 3: malformed CSV")
    assert message.endswith('a quote inside a quoted field must be doubled ("")')


def test_empty_json_list_has_no_records(tmp_path):
    (tmp_path / "e.json").write_text("[]")
    assert _message(lambda: read_records(tmp_path / "e.json")) == f"{tmp_path / 'e.json'}: has no records"


@pytest.mark.parametrize("raw", [b"", gzip.compress(b""), gzip.compress(b"\n\n")])
def test_empty_gzip_is_an_empty_file(tmp_path, raw):
    (tmp_path / "e.csv.gz").write_bytes(raw)
    expected = f"{tmp_path / 'e.csv.gz'}: file is empty"
    assert _message(lambda: read_records(tmp_path / "e.csv.gz")) == expected
    assert _message(lambda: list(iter_record_chunks(tmp_path / "e.csv.gz", 1))) == expected


@pytest.mark.parametrize("name,text,where", [
    ("d.jsonl", '{"text": "good", "label": "positive", "text": "other"}\n', r"line 1"),
    ("d.json", '[{"text": "good", "label": "positive"}, {"text": "a", "label": "b", "label": "c"}]', r"record 2"),
])
def test_a_key_twice_in_one_json_record_is_refused_not_silently_overwritten(tmp_path, name, text, where):
    (tmp_path / name).write_text(text)
    key = "text" if name.endswith("l") else "label"
    with pytest.raises(UserError, match=rf"d.json.*: {where}: key '{key}' appears twice in one record"):
        read_records(tmp_path / name)


def test_json_columns_of_different_lengths_are_refused_not_cut_to_the_shortest(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"text": ["a", "b", "c"], "label": ["x", "y"]}))
    with pytest.raises(UserError, match=r"the columns have different lengths \('text' 3, 'label' 2\)"):
        read_records(tmp_path / "d.json")


def test_a_csv_row_of_empty_fields_is_a_row_not_a_blank_line(tmp_path):
    (tmp_path / "d.csv").write_text('text,label\nhello,a\n,\n"  ",b\n\nbye,a\n')
    rec = read_records(tmp_path / "d.csv")
    assert rec.where == ["line 2", "line 3", "line 4", "line 6"]  # only the truly empty line 5 is blank
    (tmp_path / "one.csv").write_text('text\nhello\n"   "\nbye\n')
    assert read_records(tmp_path / "one.csv").where == ["line 2", "line 3", "line 4"]


@pytest.mark.parametrize("raw,hint", [
    ("text,label\nhi,a\n".encode("utf-16"), "it starts with a UTF-16 byte-order mark: save it as UTF-8"),
    (gzip.compress(b"text,label\nhi,a\n"), "it is gzip-compressed: add .gz to its name"),
])
def test_a_file_that_is_not_utf8_says_what_it_is(tmp_path, raw, hint):
    (tmp_path / "d.csv").write_bytes(raw)
    for read in (lambda: read_records(tmp_path / "d.csv"), lambda: list(iter_record_chunks(tmp_path / "d.csv", 5))):
        assert _message(read).endswith(f"are not valid UTF-8 ({hint})")


def test_a_json_column_that_is_a_single_value_is_named(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"text": ["a", "b"], "label": "positive"}))
    with pytest.raises(UserError, match=r"column 'label' is a single value, not a list like column 'text'"):
        read_records(tmp_path / "d.json")


def test_a_lone_surrogate_in_jsonl_becomes_the_replacement_character_with_a_note(tmp_path):
    """JSON may escape half of an emoji; no tokenizer or file takes it. It is replaced, and the user told where."""
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "great \\ud83d film", "label": "pos"}\n{"text": "awful", "label": "neg"}\n')
    records = next(iter_record_chunks(path, 10))
    assert records.rows[0]["text"] == "great \ufffd film"
    assert records.notes == [f"{path}: line 1, column 'text': a lone surrogate escape (half of an emoji) was "
                             "replaced by U+FFFD"]


def test_inspect_reads_a_lone_surrogate_without_a_traceback(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "d.jsonl"
    rows = [f'{{"text": "film {i} \\udc00 was {"good" if i % 2 else "bad"}", "label": {i % 2}}}' for i in range(40)]
    path.write_text("\n".join(rows) + "\n")
    done = subprocess.run([sys.executable, "-m", "finetune_bert.cli", "inspect", "--data", str(path)],
                          capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "replaced by U+FFFD" in done.stdout + done.stderr
