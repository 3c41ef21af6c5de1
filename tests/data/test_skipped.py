"""The list of skipped rows: written beside the output, an earlier one never outliving its run, a user's file
with the same name never replaced."""

import csv

import pytest

from finetune_bert.errors import UserError
from finetune_bert.data.skipped import SkippedRow, refuse_foreign_skipped_list, write_skipped


def test_skipped_rows_are_written_removed_when_none_and_a_users_file_is_left_alone(tmp_path):
    path = tmp_path / "out.skipped.csv"
    write_skipped([SkippedRow("test", "d.csv", "line 3", "text", "text is empty", "''")], path)
    with open(path, newline="") as handle:
        assert list(csv.DictReader(handle)) == [{"split": "test", "source": "d.csv", "row": "line 3", "column": "text",
                                                 "reason": "text is empty", "value": "''"}]
    refuse_foreign_skipped_list(path, "--output")  # ours: may be replaced
    write_skipped([], path)
    assert not path.exists()
    path.write_text("my own notes\n")
    write_skipped([], path)
    assert path.read_text() == "my own notes\n"
    with pytest.raises(UserError, match=r"out.skipped.csv: exists and is not a list of skipped rows finetune-bert"):
        refuse_foreign_skipped_list(path, "--output")
