"""The batches stage: reproducible training batches, sorted evaluation batches, micro-batches, padding."""

import numpy as np
import torch

from finetune_bert.engine.batches import (CPU_BLOCK_BYTES, Layout, collate, collate_packed, eval_batches, micro_batches,
                                          train_batches)
from finetune_bert.data.tokens import Encoded


def test_collate_pads_to_longest_in_batch_only():
    enc = Encoded([np.array([2, 5, 6, 3], np.int32), np.array([2, 7, 3], np.int32)], np.array([4, 3]), np.array([1, 0]))
    batch = collate(enc, np.array([0, 1]), pad_id=0)
    assert batch["input_ids"].tolist() == [[2, 5, 6, 3], [2, 7, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [1, 0]
    assert collate(enc, np.array([1]), pad_id=0, pad_to_multiple=8)["input_ids"].shape == (1, 8)


def test_no_dynamic_padding_pads_every_batch_to_max_length():
    enc = Encoded([np.array([2, 5, 6, 3], np.int32), np.array([2, 7, 3], np.int32)], np.array([4, 3]), np.array([1, 0]))
    fixed = Layout(0, pad_to=6).batch(enc, np.array([1]))
    assert fixed["input_ids"].tolist() == [[2, 7, 3, 0, 0, 0]] and fixed["attention_mask"].sum() == 3
    assert Layout(0, pad_to=2).batch(enc, np.array([0, 1]))["input_ids"].shape == (2, 4)  # never cuts
    # CPU micro-batches are sized for the padded width, not the text's own length.
    assert Layout(0, cpu_cap=(12, 1536), pad_to=512).fit(40) == Layout(0, cpu_cap=(12, 1536)).fit(512) == 2


def test_train_batches_cover_every_example_once_and_are_reproducible():
    lengths = np.random.default_rng(0).integers(5, 500, size=1000)
    batches = train_batches(lengths, 16, seed=1, epoch=0, group_by_length=True)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    again = train_batches(lengths, 16, seed=1, epoch=0, group_by_length=True)
    assert all((a == b).all() for a, b in zip(batches, again))
    other_epoch = train_batches(lengths, 16, seed=1, epoch=1, group_by_length=True)
    assert not all((a == b).all() for a, b in zip(batches, other_epoch))
    assert lengths[batches[0]].max() == lengths.max()  # longest first: OOM shows at step 1


def test_length_grouping_cuts_padding():
    lengths = np.random.default_rng(0).integers(5, 500, size=2000)

    def padded_fraction(batches):
        total = sum(len(b) * lengths[b].max() for b in batches)
        return 1 - lengths.sum() / total

    grouped = padded_fraction(train_batches(lengths, 16, 0, 0, True))
    plain = padded_fraction(train_batches(lengths, 16, 0, 0, False))
    assert grouped < 0.05 < 0.3 < plain


def test_eval_batches_sorted_longest_first():
    lengths = np.array([3, 9, 1, 7, 5])
    assert [b.tolist() for b in eval_batches(lengths, 2)] == [[1, 3], [4, 0], [2]]


def test_eval_batches_hold_no_more_texts_than_fit_allows():
    lengths = np.array([3, 9, 1, 7, 5])
    fit = lambda length: 2 if length > 6 else 5  # noqa: E731
    assert [b.tolist() for b in eval_batches(lengths, 4, fit)] == [[1, 3], [4, 0, 2]]


def test_micro_batches_are_sorted_cut_by_fit_and_at_least_splits():
    index, lengths = np.array([10, 11, 12, 13, 14]), np.array([3, 9, 1, 7, 5])
    fit = lambda length: 2 if length > 4 else 5  # noqa: E731
    assert [b.tolist() for b in micro_batches(index, lengths, 1, fit)] == [[11, 13], [14, 10], [12]]
    assert [b.tolist() for b in micro_batches(index, lengths, 1)] == [[11, 13, 14, 10, 12]]
    # Out-of-memory backoff asks for 4: more than fit makes, so the step is split evenly into 4.
    assert [b.tolist() for b in micro_batches(index, lengths, 4, fit)] == [[11, 13], [14], [10], [12]]
    assert [b.tolist() for b in micro_batches(index, lengths, 9)] == [[11], [13], [14], [10], [12]]


def test_cpu_fit_keeps_the_largest_activation_within_the_heap_threshold():
    minilm = Layout(0, cpu_cap=(12, 1536))  # MiniLM-L6 and bert-base: 12 heads; feed-forward 1536 / 3072
    assert minilm.fit(512) == 2 and minilm.fit(128) == 42 and minilm.fit(4096) == 1
    for heads, width in ((12, 1536), (12, 3072), (16, 4096), (2, 64)):
        layout = Layout(0, cpu_cap=(heads, width))
        for length in range(8, 1025, 8):
            n = layout.fit(length)
            biggest = 4 * length * max(heads * length, width)
            assert n == 1 or n * biggest <= CPU_BLOCK_BYTES < (n + 1) * biggest
    assert Layout(0).capped_fit is None and minilm.capped_fit is not None


def _pairs() -> Encoded:
    ids = [np.array([2, 5, 3, 6, 3], np.int32), np.array([2, 7, 3, 8, 9, 3], np.int32), np.array([2, 4, 3, 3], np.int32)]
    types = [np.array([0, 0, 0, 1, 1], np.int8), np.array([0, 0, 0, 1, 1, 1], np.int8), np.array([0, 0, 0, 1], np.int8)]
    return Encoded(ids, np.array([5, 6, 4]), np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32), types)


def test_pairs_add_token_type_ids_padded_with_zero():
    batch = collate(_pairs(), np.array([1, 0]), pad_id=0, pad_to_multiple=4)
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0, 0, 0]]
    assert batch["token_type_ids"].dtype == batch["input_ids"].dtype == torch.int64
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    single = Encoded([np.array([2, 5, 3], np.int32)], np.array([3]), None)
    assert set(collate(single, np.array([0]), pad_id=0)) == {"input_ids", "attention_mask"}  # as before pairs


def test_packed_pairs_lay_their_token_type_ids_end_to_end():
    packed = collate_packed(_pairs(), np.array([2, 0]))
    assert packed["token_type_ids"].tolist() == [0, 0, 0, 1, 0, 0, 0, 1, 1]
    assert packed["token_type_ids"].dtype == torch.int64 and len(packed["token_type_ids"]) == len(packed["input_ids"])
    single = Encoded([np.array([2, 5, 3], np.int32)], np.array([3]), None)
    assert "token_type_ids" not in collate_packed(single, np.array([0]))
