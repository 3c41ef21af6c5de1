"""seen_texts.txt: the keys of the texts a model saw, written a block at a time."""

from __future__ import annotations

import numpy as np

from finetune_bert.data.seen import SEEN_FILE, SeenLines, read_seen, seen_text, text_key


def test_the_file_is_the_sorted_unique_keys_in_hex_across_blocks(tmp_path):
    """More keys than one block (65,536), repeats and the extremes: the lines Python's own formatting gives."""
    rng = np.random.default_rng(0)
    keys = np.concatenate([rng.integers(0, 2**63, 70_000, dtype=np.uint64) * np.uint64(2),
                           np.array([0, 2**64 - 1, 5, 5], dtype=np.uint64)])
    written = b"".join(SeenLines(keys)).decode("ascii")
    header, *lines = written.splitlines()
    assert header.startswith("#")
    assert lines == [f"{k:016x}" for k in sorted(set(keys.tolist()))]
    (tmp_path / SEEN_FILE).write_text(written)
    assert read_seen(tmp_path) == set(lines)


def test_written_twice_it_is_the_same_and_a_text_is_found_by_its_key(tmp_path):
    """A failed save tries again: the blocks are made anew each time."""
    lines = SeenLines(np.array([3, 1, 2], dtype=np.uint64))
    assert b"".join(lines) == b"".join(lines)
    (tmp_path / SEEN_FILE).write_text(seen_text(["A  film.", "another"]))
    assert text_key("A film.") in read_seen(tmp_path)
