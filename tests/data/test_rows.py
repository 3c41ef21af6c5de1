"""Columns, labels, cleaning, splits and bad rows: each user mistake has its named test."""

import json
import re

import pytest

from conftest import toy_rows, write_csv
from finetune_bert.training.config import TrainConfig
from finetune_bert.data.rows import clean_text
from finetune_bert.data.dataset import load_dataset
from finetune_bert.data.splits import stratified_split, Split
from finetune_bert.errors import UserError


def cfg(path, **kw):
    return TrainConfig(data=str(path), output="unused", **kw)


def test_detects_review_and_sentiment_columns(tmp_path):
    rows = [{"Review": r["text"], "sentiment": r["label"]} for r in toy_rows(20)]
    ds = load_dataset(cfg(write_csv(tmp_path / "d.csv", rows)))
    assert ds.label_names == ["negative", "positive"]
    assert len(ds.train) + len(ds.val) == 20


def test_raises_on_missing_text_column_suggesting_closest(tmp_path):
    rows = [{"txt": r["text"], "label": r["label"]} for r in toy_rows(6)]
    with pytest.raises(UserError, match=r"no text column found .*columns are 'txt', 'label'; "
                                        r"did you mean --text-column 'txt'\?"):
        load_dataset(cfg(write_csv(tmp_path / "d.csv", rows)))


def test_raises_on_named_label_column_absent(tmp_path):
    with pytest.raises(UserError, match=r"label column 'stars' not found; columns are 'text', 'label'"):
        load_dataset(cfg(write_csv(tmp_path / "d.csv", toy_rows(6)), label_column="stars"))


def test_integer_labels_from_csv_and_json_are_the_same_class(tmp_path):
    rows = [{"text": r["text"], "label": int(r["label"] == "positive")} for r in toy_rows(20)]
    ds = load_dataset(cfg(write_csv(tmp_path / "d.csv", rows), label_names="negative,positive"))
    assert ds.raw_labels == [0, 1] and ds.label_names == ["negative", "positive"]


def test_raises_on_single_class(tmp_path):
    rows = [{"text": f"film {i}", "label": "positive"} for i in range(6)]
    with pytest.raises(UserError, match=r"only one class \('positive'\)"):
        load_dataset(cfg(write_csv(tmp_path / "d.csv", rows)))


def test_raises_on_empty_text_naming_file_line_column(tmp_path):
    rows = toy_rows(10)
    rows[3]["text"] = "   "
    rows[6]["text"] = ""
    path = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(UserError, match=r"d.csv: line 5, column 'text': text is empty \(1 more bad rows\)"):
        load_dataset(cfg(path))


def test_raises_on_missing_label(tmp_path):
    rows = toy_rows(10)
    rows[2]["label"] = "  "
    with pytest.raises(UserError, match=r"line 4, column 'label': label is missing"):
        load_dataset(cfg(write_csv(tmp_path / "d.csv", rows)))


def test_raises_on_mixed_integer_and_text_labels(tmp_path):
    rows = toy_rows(10)
    rows[1]["label"] = "1"
    with pytest.raises(UserError, match=r"line 3, column 'label': label 'positive' is text but line 2 "
                                        r"has the integer label 1|label .* is text but .* integer label"):
        load_dataset(cfg(write_csv(tmp_path / "d.csv", rows)))


def test_skip_policy_records_every_skipped_row(tmp_path):
    rows = toy_rows(20)
    rows[3]["text"] = ""
    rows[8]["label"] = ""
    ds = load_dataset(cfg(write_csv(tmp_path / "d.csv", rows), on_bad_rows="skip"))
    assert [(s.where, s.reason) for s in ds.skipped] == [("line 5", "text is empty"), ("line 10", "label is missing")]
    assert len(ds.train) + len(ds.val) == 18


def test_raises_on_test_label_unknown_to_train(tmp_path):
    test = toy_rows(6)
    test[1]["label"] = "neutral"
    with pytest.raises(UserError, match=r"t.csv: line 3, column 'label': label 'neutral' does not occur "
                                        "in the training data"):
        load_dataset(cfg(write_csv(tmp_path / "d.csv", toy_rows(20)),
                         test_data=str(write_csv(tmp_path / "t.csv", test))))


def test_cleaning_turns_br_and_entities_into_text(tmp_path):
    assert clean_text("Great!<br /><br />Really &amp; truly &quot;fun&quot;") == 'Great!\n\nReally & truly "fun"'
    rows = toy_rows(20)
    rows[0]["text"] = "good<br />film &amp; more"
    ds = load_dataset(cfg(write_csv(tmp_path / "d.csv", rows), clean=False, val_fraction=0.5))
    assert any("<br />" in t for t in ds.train.texts + ds.val.texts)


def test_stratified_split_is_seeded_and_keeps_class_balance():
    split = Split("train", "x", [f"t{i}" for i in range(100)], ["a"] * 80 + ["b"] * 20, [str(i) for i in range(100)])
    notes = []
    train1, val1 = stratified_split(split, 0.1, seed=3, notes=notes)
    train2, val2 = stratified_split(split, 0.1, seed=3, notes=notes)
    assert val1.texts == val2.texts
    assert sorted(val1.labels) == ["a"] * 8 + ["b"] * 2
    assert not set(train1.texts) & set(val1.texts) and len(train1) == 90


def test_max_train_samples_is_a_seeded_sample(tmp_path):
    path = write_csv(tmp_path / "d.csv", toy_rows(100))
    a = load_dataset(cfg(path, max_train_samples=40, seed=0))
    b = load_dataset(cfg(path, max_train_samples=40, seed=0))
    assert a.train.texts == b.train.texts and len(a.train) + len(a.val) == 40


def test_hub_name_offline_fails_with_clear_message():
    with pytest.raises(UserError, match="Hugging Face dataset 'no-such-dataset-xyz' could not be loaded"):
        load_dataset(cfg("no-such-dataset-xyz"))


def test_skip_drops_unknown_test_labels_and_reports_them(tmp_path):
    test = toy_rows(6)
    test[1]["label"] = "neutral"
    ds = load_dataset(cfg(write_csv(tmp_path / "d.csv", toy_rows(20)), on_bad_rows="skip",
                          test_data=str(write_csv(tmp_path / "t.csv", test))))
    assert len(ds.test) == 5
    assert [(s.split, s.where) for s in ds.skipped] == [("test", "line 3")]


def test_class_with_one_example_stays_in_train_with_a_note(tmp_path):
    rows = toy_rows(20) + [{"text": "a lone neutral film", "label": "neutral"}]
    ds = load_dataset(cfg(write_csv(tmp_path / "d.csv", rows)))
    assert "neutral" in ds.train.labels and "neutral" not in ds.val.labels
    assert any("class 'neutral' has 1 training example(s): none held out" in n for n in ds.notes)


def test_dedupe_drops_leaked_and_repeated_train_rows(tmp_path):
    rows = toy_rows(30)
    rows[10]["text"] = rows[3]["text"]  # repeats an earlier train row
    test = toy_rows(6, seed=9)
    rows[12]["text"] = test[0]["text"]  # leaks into test
    train_path, test_path = write_csv(tmp_path / "d.csv", rows), write_csv(tmp_path / "t.csv", test)
    kept = load_dataset(cfg(train_path, test_data=str(test_path), dedupe=True))
    assert len(kept.train) + len(kept.val) == 28
    reasons = sorted(s.reason for s in kept.skipped)
    assert reasons == ["duplicate of line 5 (--dedupe)", "text also appears in test (--dedupe)"]
    assert "--dedupe removed 1 duplicate rows and 1 rows" in " ".join(kept.notes)
    untouched = load_dataset(cfg(train_path, test_data=str(test_path)))
    assert len(untouched.train) + len(untouched.val) == 30 and not untouched.skipped


def test_raises_on_broken_gzip(tmp_path):
    (tmp_path / "d.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match=r"d.csv.gz: not a valid gzip file"):
        load_dataset(cfg(tmp_path / "d.csv.gz"))


@pytest.mark.parametrize("name", ["none", "NA", "null", "nan", "None"])
def test_a_class_named_like_a_missing_value_is_a_real_class(tmp_path, name):
    rows = toy_rows(20)
    for r in rows[::2]:
        r["label"] = name
    ds = load_dataset(cfg(write_csv(tmp_path / "d.csv", rows)))
    assert sorted(ds.label_names) == sorted(["negative", name]) and not ds.skipped


def test_labels_differing_only_in_case_stop_with_the_variants(tmp_path):
    rows = toy_rows(20)
    rows[4]["label"], rows[6]["label"] = "Positive", " POSITIVE "
    with pytest.raises(UserError, match=r"labels that differ only in case, Unicode form or invisible characters would become separate classes: "
                                        r"'positive' \(8 rows, first at .*d.csv: line 2\), 'Positive' \(1 rows, "
                                        r"first at .*line 6\), 'POSITIVE' \(1 rows, .*line 8\)\. .*--fold-labels"):
        load_dataset(cfg(write_csv(tmp_path / "d.csv", rows)))


def test_fold_labels_merges_case_variants_into_the_most_frequent_spelling(tmp_path):
    rows, test = toy_rows(20), toy_rows(6, seed=3)
    rows[4]["label"], test[0]["label"] = "Positive", "POSITIVE"
    ds = load_dataset(cfg(write_csv(tmp_path / "d.csv", rows), fold_labels=True,
                          test_data=str(write_csv(tmp_path / "t.csv", test))))
    assert ds.label_names == ["negative", "positive"]
    assert set(ds.test.labels) == {"negative", "positive"}
    assert any("--fold-labels merged" in n for n in ds.notes)


@pytest.mark.parametrize("variant", ["cafe\u0301", "caf\u00e9\u200b"])
def test_labels_differing_in_unicode_form_or_invisible_characters_stop_with_the_variants(tmp_path, variant):
    rows = toy_rows(20)
    for r in rows[::2]:
        r["label"] = "caf\u00e9"
    rows[2]["label"] = variant
    with pytest.raises(UserError, match=r"Unicode form or invisible characters .*'café' \(9 rows.*'caf[eé]\\u(0301|200b)' \(1 rows"):
        load_dataset(cfg(write_csv(tmp_path / "d.csv", rows)))
    ds = load_dataset(cfg(write_csv(tmp_path / "d.csv", rows), fold_labels=True))
    assert ds.label_names == ["café", "negative"]


@pytest.mark.parametrize("spelling", ["01", "+1", "\uff11"])
def test_integer_labels_in_another_spelling_are_not_merged_with_the_integer(tmp_path, spelling):
    rows = [{"text": r["text"], "label": [0, 1][i % 2]} for i, r in enumerate(toy_rows(20))]
    rows[3]["label"] = spelling
    with pytest.raises(UserError, match=rf"label '{re.escape(spelling)}' is text but .* has the integer label"):
        load_dataset(cfg(write_csv(tmp_path / "d.csv", rows)))


def test_zero_padded_integer_labels_keep_their_spelling(tmp_path):
    rows = [{"text": r["text"], "label": ["01", "02"][i % 2]} for i, r in enumerate(toy_rows(20))]
    assert load_dataset(cfg(write_csv(tmp_path / "d.csv", rows))).label_names == ["01", "02"]


@pytest.mark.parametrize("header", ["text,Text,label", "review,text,label", "text,label,Label"])
def test_two_columns_that_could_be_the_text_or_label_column_are_refused(tmp_path, header):
    path = tmp_path / "d.csv"
    path.write_text(header + "\n" + "".join(f"good film {i},x{i},{'positive' if i % 2 else 'negative'}\n"
                                              for i in range(12)))
    with pytest.raises(UserError, match=r"2 columns could be the (text|label) column \('.*', '.*'\); name one with "
                                        r"--(text|label)-column"):
        load_dataset(cfg(path))


@pytest.mark.parametrize("options", [{"text_column": "label"}, {"label_column": "text"},
                                     {"text_column": "label", "label_column": "label"}])
def test_the_text_column_cannot_also_be_the_label_column(tmp_path, options):
    with pytest.raises(UserError, match=r"column '(label|text)' is both the text column and the label column"):
        load_dataset(cfg(write_csv(tmp_path / "d.csv", toy_rows(20)), **options))


@pytest.mark.parametrize("text,reason", [("<br /><br />", "text is empty once cleaned ('<br />' tags and HTML "
                                                         "entities removed)"),
                                         ("&nbsp;", "text is empty once cleaned"),
                                         ("\u200b\u200b", "text has no visible characters"),
                                         ("  \t ", "text is empty")])
def test_a_text_with_nothing_visible_is_a_bad_row(tmp_path, text, reason):
    rows = toy_rows(20)
    rows[3]["text"] = text
    with pytest.raises(UserError, match=re.escape(f"line 5, column 'text': {reason}")):
        load_dataset(cfg(write_csv(tmp_path / "d.csv", rows)))
    if "<br" in text:
        assert "<br /><br />" in load_dataset(cfg(tmp_path / "d.csv", clean=False)).train_all.texts


def test_text_cells_that_are_lists_or_numbers_are_bad_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = toy_rows(12)
    texts = [[r["text"], "more"] for r in rows]  # a Parquet list column: never trained on as "['a', 'b']"
    pq.write_table(pa.table({"text": texts, "label": [r["label"] for r in rows]}), tmp_path / "d.parquet")
    with pytest.raises(UserError, match=r"d.parquet: row 1, column 'text': text is a list, not a string "
                                        r"\(11 more bad rows\)"):
        load_dataset(cfg(tmp_path / "d.parquet"))
    (tmp_path / "n.jsonl").write_text("".join(json.dumps({"text": 5 if i == 3 else r["text"], "label": r["label"]})
                                              + "\n" for i, r in enumerate(rows)))
    with pytest.raises(UserError, match=r"n.jsonl: line 4, column 'text': text is an int, not a string"):
        load_dataset(cfg(tmp_path / "n.jsonl"))


def test_a_label_that_is_a_list_is_a_bad_row(tmp_path):
    rows = toy_rows(12)
    (tmp_path / "l.jsonl").write_text("".join(json.dumps({"text": r["text"], "label": ["a", "b"] if i == 2 else r["label"]})
                                              + "\n" for i, r in enumerate(rows)))
    with pytest.raises(UserError, match=r"l.jsonl: line 3, column 'label': label is a list, not a single class"):
        load_dataset(cfg(tmp_path / "l.jsonl"))


def test_a_test_split_with_every_row_skipped_is_an_error(tmp_path):
    test = [{"text": "good film", "label": "neutral"}] * 4
    with pytest.raises(UserError, match=r"t.csv: no test rows left to score"):
        load_dataset(cfg(write_csv(tmp_path / "d.csv", toy_rows(20)), on_bad_rows="skip",
                         test_data=str(write_csv(tmp_path / "t.csv", test))))
