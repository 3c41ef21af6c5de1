"""The tokens stage: texts to token ids, truncated the way the model was trained, for every split.

Texts are tokenized once, without special tokens and without truncation, so that the data report knows
every text's true length; truncation then keeps the head, the tail, or both, and the model's own special
tokens ([CLS] ... [SEP] for BERT) are added around what is kept.

Text pairs (paraphrase, entailment) are one sequence in the tokenizer's own pair template ([CLS] a [SEP] b
[SEP] for BERT, <s> a </s></s> b </s> for RoBERTa), with its token type ids, cut as transformers'
truncation="longest_first" cuts them, so a model reads a pair as it would from a Hugging Face pipeline.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

TOKENIZE_CHUNK = 2048


@dataclass
class Encoded:
    ids: list[np.ndarray]       # one int32 array per text, special tokens included, truncated
    full_lengths: np.ndarray    # tokens each text would need, special tokens included, before truncation
    labels: np.ndarray | None   # class ids (n,), multi-hot rows (n, labels) or standardised targets (n,)
    type_ids: list[np.ndarray] | None = None  # text pairs: each row's token type ids (0: first text, 1: second)
    teacher: np.ndarray | None = None  # distillation: a teacher's outputs for each row (n, outputs), float32

    @property
    def lengths(self) -> np.ndarray:
        stored = getattr(self.ids, "lengths", None)  # a stored split's (data.columns.TokenColumn): never read
        if stored is not None:
            return stored
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    def lengths_at(self, index: np.ndarray) -> np.ndarray:
        """The lengths of the rows at `index` (a batch's), without reading them where they are stored."""
        stored = getattr(self.ids, "lengths_at", None)
        if stored is not None:
            return stored(index)
        return np.fromiter((len(self.ids[i]) for i in index), dtype=np.int64, count=len(index))

    def __len__(self) -> int:
        return len(self.ids)


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a single text ([CLS] / [SEP] for BERT, <s> / </s> ...)."""
    inner = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(inner) + 1):
        if full[start:start + len(inner)] == inner:
            return full[:start], full[start + len(inner):]
    raise ValueError("cannot locate the special tokens of this tokenizer")


def truncate(ids: list[int], budget: int, strategy: str, head_tokens: int = 128) -> list[int]:
    """Keep `budget` tokens: the first ones (head), the last ones (tail), or the first `head_tokens`
    (at most half the budget) plus the last ones (head+tail, Sun et al. 2019)."""
    if len(ids) <= budget:
        return ids
    if strategy == "head":
        return ids[:budget]
    if strategy == "tail":
        return ids[len(ids) - budget:]
    head = min(head_tokens, budget // 2)
    return ids[:head] + ids[len(ids) - (budget - head):]


def max_length_for(tokenizer, model_config, requested: int) -> tuple[int, str | None]:
    """Clamp to what the model's position embeddings allow; say so when clamped."""
    limits = [getattr(model_config, "max_position_embeddings", None)]
    # RoBERTa-style models offset positions by the padding index.
    if limits[0] and getattr(model_config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limits[0] -= 2
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if tok_limit and tok_limit < 1_000_000:
        limits.append(tok_limit)
    limit = min(x for x in limits if x) if any(limits) else requested
    if requested > limit:
        return limit, f"--max-length {requested} is more than this model supports; using {limit}"
    return requested, None


def _token_lists(tokenizer, texts: list[str]):
    """Each text's token ids, no special tokens, no truncation; tokenized a chunk of texts at a time."""
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        yield from tokenizer(texts[start:start + TOKENIZE_CHUNK], add_special_tokens=False,
                             return_attention_mask=False, return_token_type_ids=False, verbose=False)["input_ids"]


def encode(tokenizer, texts: list[str], labels: list[int] | None, max_length: int, strategy: str,
           head_tokens: int = 128, *, pairs: list[str] | None = None) -> Encoded:
    """Each text's ids within `max_length` tokens, special tokens included; with `pairs` (the second text of
    each row), each pair as one sequence cut longest first (`strategy` applies to single texts only)."""
    if pairs is not None:
        return _encode_pairs(tokenizer, texts, pairs, max_length, labels)
    prefix, suffix = special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    ids, full = [], np.empty(len(texts), dtype=np.int64)
    for i, tokens in enumerate(_token_lists(tokenizer, texts)):
        full[i] = len(tokens) + len(prefix) + len(suffix)
        ids.append(np.asarray(prefix + truncate(tokens, budget, strategy, head_tokens) + suffix, dtype=np.int32))
    label_array = None if labels is None else np.asarray(labels, dtype=np.int64)
    return Encoded(ids, full, label_array)


@dataclass(frozen=True)
class PairTemplate:
    """What a tokenizer puts before, between and after the two texts of a pair, and the token type id of
    each of those ids and of each text's tokens (all zeros for a tokenizer whose model reads no type ids)."""

    prefix: list[int]
    middle: list[int]
    suffix: list[int]
    prefix_types: list[int]
    middle_types: list[int]
    suffix_types: list[int]
    first_type: int
    second_type: int

    @property
    def added(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def ids(self, first: list[int], second: list[int]) -> np.ndarray:
        return np.asarray(self.prefix + first + self.middle + second + self.suffix, dtype=np.int32)

    def type_ids(self, first: int, second: int) -> np.ndarray:
        """The type ids of a pair whose texts kept `first` and `second` tokens."""
        return np.asarray(self.prefix_types + [self.first_type] * first + self.middle_types
                          + [self.second_type] * second + self.suffix_types, dtype=np.int8)


def pair_template(tokenizer) -> PairTemplate:
    """The tokenizer's pair template, read off a probe pair as `special_tokens` reads the single one."""
    first = tokenizer("a", add_special_tokens=False)["input_ids"]
    second = tokenizer("b", add_special_tokens=False)["input_ids"]
    out = tokenizer("a", "b")
    full = out["input_ids"]
    types = out.get("token_type_ids") or [0] * len(full)  # a tokenizer without type ids: all zeros
    for i in range(len(full) - len(first) + 1):
        if full[i:i + len(first)] != first:
            continue
        for j in range(i + len(first), len(full) - len(second) + 1):
            if full[j:j + len(second)] == second:
                end, after = i + len(first), j + len(second)
                return PairTemplate(full[:i], full[end:j], full[after:], types[:i], types[end:j], types[after:],
                                    types[i] if first else 0, types[j] if second else 0)
    raise ValueError("cannot locate the special tokens of this tokenizer's text pairs")


def longest_first(first: list[int], second: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Both texts' ids cut from their ends to `budget` tokens together, a token at a time from the longer
    one (on a tie, from the one that began the shorter, the first if they began equal): what transformers'
    truncation="longest_first" keeps. In closed form, as the tokenizers library computes it: the text that
    began the shorter keeps up to half the budget (rounded down), the other the rest."""
    if len(first) + len(second) <= budget:
        return first, second
    budget = max(budget, 0)
    short = min(len(first), len(second), budget // 2)
    long = budget - short
    if len(first) > len(second):
        return first[:long], second[:short]
    return first[:short], second[:long]


def _encode_pairs(tokenizer, texts: list[str], pairs: list[str], max_length: int,
                  labels: list[int] | None) -> Encoded:
    """Each (text, pair) in the tokenizer's pair template, cut longest first to `max_length` tokens."""
    if len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} second texts")
    template = pair_template(tokenizer)
    budget = max_length - template.added
    ids, types, full = [], [], np.empty(len(texts), dtype=np.int64)
    for i, (first, second) in enumerate(zip(_token_lists(tokenizer, texts), _token_lists(tokenizer, pairs))):
        full[i] = len(first) + len(second) + template.added
        first, second = longest_first(first, second, budget)
        ids.append(template.ids(first, second))
        types.append(template.type_ids(len(first), len(second)))
    label_array = None if labels is None else np.asarray(labels, dtype=np.int64)
    return Encoded(ids, full, label_array, types)


def window_size(tokenizer, max_length: int) -> int:
    """How many of a text's own tokens fit in one window: the max length less the special tokens."""
    prefix, suffix = special_tokens(tokenizer)
    return max_length - len(prefix) - len(suffix)


def window_starts(n: int, size: int, stride: int) -> list[int]:
    """Where the windows over `n` tokens start: every `size - stride` tokens, the last one ending on the
    last token (so it overlaps its neighbour by at least `stride`); one window when the text fits."""
    if n <= size:
        return [0]
    return [*range(0, n - size, size - stride), n - size]


@dataclass
class Windows:
    """Texts read whole: `encoded` holds one row per window (special tokens around each), `owner` the text
    each window belongs to, `full_lengths` each text's length in tokens (special tokens included)."""

    encoded: Encoded
    owner: np.ndarray
    full_lengths: np.ndarray


def encode_windows(tokenizer, texts: list[str], max_length: int, stride: int) -> Windows:
    """Every text as overlapping windows of `max_length` tokens (special tokens included), `stride` tokens of
    overlap; a text that fits is one window, the same ids truncation would give it."""
    prefix, suffix = special_tokens(tokenizer)
    size = max_length - len(prefix) - len(suffix)
    ids, owner, full = [], [], np.empty(len(texts), dtype=np.int64)
    for i, tokens in enumerate(_token_lists(tokenizer, texts)):
        full[i] = len(tokens) + len(prefix) + len(suffix)
        for start in window_starts(len(tokens), size, stride):
            ids.append(np.asarray(prefix + tokens[start:start + size] + suffix, dtype=np.int32))
            owner.append(i)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    return Windows(Encoded(ids, lengths, None), np.asarray(owner, dtype=np.int64), full)


def tokenizer_digest(tokenizer) -> str:
    """What a tokenizer does, as a hash: a fast tokenizer's whole definition (vocabulary, normaliser, pre-tokenizer,
    special tokens' template), or a slow one's vocabulary and options; so that a store of token ids is reused by
    the same tokenizer wherever its files lie, and never by another."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        for state in ("truncation", "padding"):  # set by each call's options, not part of what it does
            definition.pop(state, None)
        what = json.dumps(definition, sort_keys=True)
    else:
        what = json.dumps([sorted(tokenizer.get_vocab().items()), tokenizer.init_kwargs], default=str, sort_keys=True)
    extra = json.dumps([type(tokenizer).__name__, special_tokens(tokenizer)])
    return hashlib.sha256((what + extra).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class TokenSettings:
    """How texts become token ids: the tokenizer, the max length (already clamped to the model's), truncation."""

    tokenizer: Any
    max_length: int
    truncation: str
    head_tokens: int

    def key(self) -> dict[str, Any]:
        """What a store of token ids is keyed by (data.store)."""
        return {"tokenizer": tokenizer_digest(self.tokenizer), "max_length": self.max_length,
                "truncation": self.truncation,
                "head_tokens": self.head_tokens if self.truncation == "head+tail" else None}

    def encode(self, texts, pairs=None) -> Encoded:
        return encode(self.tokenizer, texts, None, self.max_length, self.truncation, self.head_tokens, pairs=pairs)


@dataclass
class TokenizedSplits:
    """Every split of a dataset as token ids, and the max length they were cut to (the requested one, clamped
    to what the model supports: `warning` says so when it was)."""

    splits: dict[str, Encoded]
    max_length: int
    warning: str | None = None


def encode_splits(ds: Any, tokenizer, model_config, *, max_length: int, truncation: str,
                  head_tokens: int) -> TokenizedSplits:
    """Tokenize train, validation and test (those present) of a data.Dataset, labels as class ids."""
    length, warning = max_length_for(tokenizer, model_config, max_length)
    settings = TokenSettings(tokenizer, length, truncation, head_tokens)
    splits = {}
    for name, split in (("train", ds.train), ("validation", ds.val), ("test", ds.test)):
        if split:
            stored = _stored(split, settings)
            splits[name] = stored if stored is not None else settings.encode(split.texts, split.pairs)
            splits[name].labels = ds.encode_labels(split)
    return TokenizedSplits(splits, length, warning)


def _stored(split: Any, settings: TokenSettings) -> Encoded | None:
    """A stored split's token ids (data.stored: tokenized into the token cache once, then read from it), or None
    for a split held in memory."""
    owner = getattr(split.texts, "store", None)
    return None if owner is None else owner.encoded(split.texts.rows, settings)


def pad_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's own, or 0 for a tokenizer without one."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
