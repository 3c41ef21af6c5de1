"""Label cells to classes: id order, names, integer spellings, spelling variants."""

import pytest

from finetune_bert.errors import UserError
from finetune_bert.data.labels import as_label, label_mapping


def test_label_mapping_is_sorted_and_deterministic():
    assert label_mapping(["pos", "neg", "pos"], None, None, "x") == (["neg", "pos"], ["neg", "pos"])
    assert label_mapping([2, 0, 1], None, None, "x") == ([0, 1, 2], ["0", "1", "2"])
    assert label_mapping([1, 0], "negative,positive", None, "x") == ([0, 1], ["negative", "positive"])
    assert label_mapping([1, 0], None, ["neg", "pos"], "x") == ([0, 1], ["neg", "pos"])


def test_raises_on_label_names_count_mismatch():
    with pytest.raises(UserError, match="--label-names has 3 names but the data has 2 classes"):
        label_mapping([0, 1], "a,b,c", None, "x")


@pytest.mark.parametrize("cell,label", [("1", 1), (" 7 ", 7), ("-3", -3), ("0", 0), (1.0, 1), (True, 1),
                                        ("01", "01"), ("+1", "+1"), ("-0", "-0"), ("\uff11", "\uff11"),
                                        (" positive ", "positive"), ("1.5", "1.5")])
def test_only_the_canonical_spelling_of_an_integer_becomes_an_int(cell, label):
    assert as_label(cell) == label and type(as_label(cell)) is type(label)


def test_label_names_for_text_labels_are_refused_not_used_to_rename_them():
    with pytest.raises(UserError, match=r"--label-names names integer labels, in id order; the labels in x are text "
                                        r"\(negative, positive\) and are the names already"):
        label_mapping(["positive", "negative"], "positive,negative", None, "x")
