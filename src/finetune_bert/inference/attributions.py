"""Token attributions: which words of a text moved a trained model's answer, and by how much, as
`Classifier.explain` gives them (`load(DIR).explain("I loved it")`, `predict --explain`, the server's explain).

What is attributed is f, the answer as a probability: the explained class's softmax probability, a label's own
sigmoid (multi-label), or the predicted value (regression). A probability, not a logit, because that is what a
user reads and what a deletion test (AOPC: drop the top words, measure the fall in the predicted class's
probability) measures; a logit's weights would rank words for a quantity nobody is shown.

How: Integrated Gradients (Sundararajan et al. 2017), through Captum's `IntegratedGradients`, over the word
embeddings fed to the model as `inputs_embeds`. The baseline is the same sequence with every token of the text
replaced by [PAD] and the special tokens ([CLS], [SEP]) kept, with the input's attention mask; position and
token type embeddings are the model's own in both, so only which word stands where is attributed. This is the
computation of `LayerIntegratedGradients` on the word-embedding layer, without its forward hook: a hook on the
shared module would change, for as long as it is registered, every prediction another thread makes with the
same model (the server scores requests while it explains one). Nothing of the model is changed: it stays in
eval mode (no dropout), gradients are taken with respect to the embeddings only (torch.autograd.grad, so no
parameter's `.grad` is written), and grad mode is switched on only around the passes that need it.

Completeness: the weights add up to f(x) - f(baseline) (`Explanation.total`) up to the integral's
approximation; `delta`, the relative gap, is checked against 5% (`converged`). Captum's Gauss-Legendre rule
with DEFAULT_STEPS (32) points is used; `steps` changes it, and a text that does not converge is tried once
more with RETRY_FACTOR times the steps (measured in docs/explanations.md).

Words: each weight is a token's embedding weight summed over its hidden units; the wordpieces of a word (the
fast tokenizer's word ids, offsets into the text the model read: cleaned, as `clean` says) are summed into
it, so every word is a substring of that text, in text order. A CJK character is a word of its own (BERT's
tokenizer splits them); an emoji the vocabulary lacks is read as [UNK] and keeps its characters as its word.

Long texts: read as windows (`--long-texts chunks`), a text's answer is the activation of its windows'
aggregated logits (their mean, or max), so the whole text is one function of all its tokens: every window is
moved from its baseline along the same path, at the same points, and f is computed from the aggregate at each
point, so a token's weight is its share of the text's probability, not of one window's, and completeness
holds over the whole text; a token two windows read gets the sum of both gradients. With `truncate`, only the
tokens read get weights and the words cut away are not listed. A text pair is [first text's words, "[SEP]",
second text's words]: PAIR_SEPARATOR, weight 0, marks where the second text starts.

Batching: the rows of several texts (their windows, or the text) are moved along the path together, the
points of the path split into passes of about `batch_size` rows (a row is one text or window at one point).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from finetune_bert.data.rows import clean_text
from finetune_bert.data.tokens import (TOKENIZE_CHUNK, Windows, longest_first, pair_template, special_tokens,
                                       truncate, window_size, window_starts)
from finetune_bert.errors import UserError

DEFAULT_STEPS = 32
RETRY_FACTOR = 4
EXPLAIN_BATCH = 32    # rows per forward and backward pass
CONVERGED = 0.05      # the most `delta` may be for an explanation to count as converged
SMALL = 1e-3          # below this |total|, delta is measured against it: a tiny change is not divided by ~0
PAIR_SEPARATOR = "[SEP]"


@dataclass(frozen=True)
class Explanation:
    """Which words moved one answer: every word the model read, in text order, with its signed weight (positive:
    toward `label`); `total` = f(x) - f(baseline), what the weights add up to within `delta` (a fraction)."""

    label: str
    words: tuple[tuple[str, float], ...]
    total: float
    delta: float
    converged: bool
    steps: int

    def top(self, k: int) -> list[tuple[str, float]]:
        """The k words with the largest |weight|, largest first (text order among equals)."""
        words = [w for w in self.words if not (w[0] == PAIR_SEPARATOR and w[1] == 0.0)]
        return sorted(words, key=lambda w: -abs(w[1]))[:k]

    def compact(self, k: int) -> str:
        """The top k words as one line, `great +0.412; awful -0.0871`: a predictions file's column."""
        return "; ".join(f"{word} {weight:+.3g}" for word, weight in self.top(k))

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "words": [[w, _short(x)] for w, x in self.words], "total": _short(self.total),
                "delta": _short(self.delta), "converged": self.converged, "steps": self.steps}


def _short(x: float) -> float:
    return float(f"{x:.6g}")


@dataclass
class _Read:
    """One input as the model reads it: its words, each token's word, and its rows (a window each, or the one
    sequence), with for each row the positions that hold the text's tokens and which token each holds."""

    words: list[str]
    word_of: np.ndarray
    rows: list[np.ndarray]
    types: list[np.ndarray] | None
    places: list[tuple[np.ndarray, np.ndarray]]
    second: int | None = None  # a pair: the index of the second text's first word

    @property
    def width(self) -> int:
        return max(len(r) for r in self.rows)


def explain_inputs(clf: Any, firsts: list[str], seconds: list[str] | None, *, target: Any = None,
                   steps: int | None = None, batch_size: int = EXPLAIN_BATCH, retry: bool = True) -> list[Explanation]:
    """Each input's Explanation (`clf`: a Classifier; `seconds`: a pair model's second texts); `target`: None
    (the predicted class; multi-label: the most probable label; regression: the value), a label name or
    index, or a list of them, one per input. `retry`: an input that did not converge is tried once more with
    RETRY_FACTOR times the steps, and keeps the closer of the two."""
    if clf.model is None:
        raise UserError(f"--backend {clf.backend} cannot explain: onnxruntime runs the model forward only and "
                        "explanations need its gradients; use --backend torch or torch-fp32")
    steps = DEFAULT_STEPS if steps is None else steps
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"explain: {name} must be a whole number of at least 1, got {value!r}")
    reads = _reads(clf, firsts, seconds)
    wanted = _targets(clf, target, len(reads))
    from finetune_bert.inference.integrated import integrate

    found = integrate(clf, reads, wanted, steps, batch_size)
    out = [_explanation(clf, r, f, steps) for r, f in zip(reads, found)]
    again = [i for i, e in enumerate(out) if not e.converged]
    if again and retry:  # measured on a fine-tuned MiniLM: every review that missed at 16 steps converged at 64
        retried = integrate(clf, [reads[i] for i in again], [found[i].target for i in again],
                            steps * RETRY_FACTOR, batch_size)
        for i, f in zip(again, retried):
            better = _explanation(clf, reads[i], f, steps * RETRY_FACTOR)
            out[i] = better if better.delta < out[i].delta else out[i]
    return out


def _explanation(clf: Any, read: _Read, found: Any, steps: int) -> Explanation:
    """A text's weights summed from its rows' tokens into its words; completeness over the whole text."""
    weights = np.zeros(len(read.words), dtype=np.float64)
    seen = np.zeros(len(read.words), dtype=bool)
    for row, (positions, tokens) in zip(found.rows, read.places):
        np.add.at(weights, read.word_of[tokens], row[positions])
        seen[read.word_of[tokens]] = True
    words = [(read.words[j], float(weights[j])) for j in np.flatnonzero(seen)]
    if read.second is not None:
        at = int(np.count_nonzero(seen[:read.second]))
        words.insert(at, (PAIR_SEPARATOR, 0.0))
    total = found.value - found.baseline
    delta = abs(float(sum(float(r.sum()) for r in found.rows)) - total) / max(abs(total), SMALL)
    return Explanation(clf.label_names[found.target], tuple(words), total, delta, delta <= CONVERGED, steps)


def _targets(clf: Any, target: Any, n: int) -> list[int | None]:
    """Each input's target as an index in `label_names` (None: decided from its answer)."""
    if isinstance(target, (list, tuple)):
        if len(target) != n:
            raise UserError(f"explain: {len(target)} targets for {n} texts; give one target, or one per text")
        return [_target(clf, t) for t in target]
    return [_target(clf, target)] * n


def _target(clf: Any, target: Any) -> int | None:
    names = clf.label_names
    if target is None:
        return None
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if 0 <= int(target) < len(names):
            return int(target)
        raise UserError(f"explain: target {target} is not a label index (the model has {len(names)}: 0 to "
                        f"{len(names) - 1})")
    found = clf.labels.to_id.get(target, clf.labels.to_id.get(str(target)))
    if found is None:
        raise UserError(f"explain: target {target!r} is not one of the model's labels ({', '.join(names)})")
    return found


def _reads(clf: Any, firsts: list[str], seconds: list[str] | None) -> list[_Read]:
    """The inputs as `clf.prepare` gives them to the model, with the word of every token they hold."""
    texts = [clean_text(t) for t in firsts] if clf.clean else list(firsts)
    pairs = None if seconds is None else [clean_text(t) for t in seconds] if clf.clean else list(seconds)
    prepared, _ = clf.prepare(texts, cleaned=True, pairs=pairs)
    words = _words(clf.tokenizer, texts)
    if pairs is not None:
        return _pair_reads(clf, prepared, words, _words(clf.tokenizer, pairs))
    prefix = len(special_tokens(clf.tokenizer)[0])
    if isinstance(prepared, Windows):
        return _window_reads(clf, prepared, words, prefix)
    budget = clf.max_length - sum(map(len, special_tokens(clf.tokenizer)))
    out = []
    for row, (ids, names, word_of) in zip(prepared.ids, words):
        kept = np.asarray(truncate(list(range(len(ids))), budget, clf.truncation, clf.head_tokens), dtype=np.int64)
        out.append(_checked(_Read(names, word_of, [row], None, [(prefix + np.arange(len(kept)), kept)]), ids))
    return out


def _window_reads(clf: Any, windows: Windows, words: list[tuple], prefix: int) -> list[_Read]:
    size = window_size(clf.tokenizer, clf.max_length)
    stride = clf.reading.overlap(size)
    out, at = [], 0
    for ids, names, word_of in words:
        rows, places = [], []
        for start in window_starts(len(ids), size, stride):
            tokens = np.arange(start, min(start + size, len(ids)), dtype=np.int64)
            rows.append(windows.encoded.ids[at])
            places.append((prefix + np.arange(len(tokens)), tokens))
            at += 1
        out.append(_checked(_Read(names, word_of, rows, None, places), ids))
    return out


def _pair_reads(clf: Any, encoded: Any, firsts: list[tuple], seconds: list[tuple]) -> list[_Read]:
    """A pair's tokens: the first text's, then the second's (numbered after the first's), each cut longest
    first as the model read them."""
    template = pair_template(clf.tokenizer)
    budget = clf.max_length - template.added
    out = []
    for i, ((a, words_a, of_a), (b, words_b, of_b)) in enumerate(zip(firsts, seconds)):
        kept_a, kept_b = longest_first(list(range(len(a))), list(range(len(b))), budget)
        start_b = len(template.prefix) + len(kept_a) + len(template.middle)
        positions = np.concatenate([len(template.prefix) + np.arange(len(kept_a)), start_b + np.arange(len(kept_b))])
        tokens = np.concatenate([np.asarray(kept_a, dtype=np.int64), len(a) + np.asarray(kept_b, dtype=np.int64)])
        read = _Read(words_a + words_b, np.concatenate([of_a, of_b + len(words_a)]).astype(np.int64),
                     [encoded.ids[i]], [encoded.type_ids[i]], [(positions.astype(np.int64), tokens)], len(words_a))
        out.append(_checked(read, np.concatenate([a, b])))
    return out


def _checked(read: _Read, ids: np.ndarray) -> _Read:
    """The row positions mapped to the text's tokens must hold those very tokens: the windows and cuts are
    recomputed here with data.tokens' own functions, and a drift from what prepare() read would misplace weights."""
    for row, (positions, tokens) in zip(read.rows, read.places):
        if not np.array_equal(np.asarray(row)[positions], ids[tokens]):
            raise RuntimeError("explain: the tokens attributed are not the tokens the model read")
    return read


def _words(tokenizer, texts: list[str]) -> list[tuple[np.ndarray, list[str], np.ndarray]]:
    """Each text's token ids (as prepare() tokenizes it: no special tokens), its words (the fast tokenizer's word
    ids; each word the text's characters from its first piece's start to its last piece's end) and each
    token's word."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("explain needs a fast (Rust) tokenizer: its offsets say which characters each token read")
    out = []
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        chunk = texts[start:start + TOKENIZE_CHUNK]
        enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False,
                        return_token_type_ids=False, verbose=False)
        for i, text in enumerate(chunk):
            spans: list[list[int]] = []
            word_of = np.empty(len(enc["input_ids"][i]), dtype=np.int64)
            last = object()
            for t, (word, (begin, end)) in enumerate(zip(enc.word_ids(i), enc["offset_mapping"][i])):
                if word is None or word != last or not spans:
                    spans.append([begin, end])
                else:
                    spans[-1] = [min(spans[-1][0], begin), max(spans[-1][1], end)]
                last = word
                word_of[t] = len(spans) - 1
            out.append((np.asarray(enc["input_ids"][i], dtype=np.int64), [text[b:e] for b, e in spans], word_of))
    return out

