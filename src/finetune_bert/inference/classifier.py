"""A fine-tuned model as a Python object: `load(DIR).predict("I loved it")`.

The same cleaning and truncation the model was trained with are applied at prediction time; they are
read from finetune_bert.json beside the weights (any other classifier folder gets the defaults).

torch and transformers are imported only by the torch backend (inference/backends.py): through an ONNX
export, predicting one text starts and answers without paying their import."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator
import numpy as np
from finetune_bert.inference.reading import Reading
from finetune_bert.console import console
from finetune_bert.inference.attributions import EXPLAIN_BATCH, Explanation, explain_inputs
from finetune_bert.inference.backends import AUTO, BACKENDS, CHOICES, InferenceEngine, as_numpy, load_auto
from finetune_bert.data.labels import LabelSpec
from finetune_bert.data.splits import Split
from finetune_bert.data.rows import clean_text
from finetune_bert.data.skipped import SkippedRow
from finetune_bert.data.tokens import Encoded, Windows, encode, encode_windows, window_size
from finetune_bert.errors import UserError, refuse
from finetune_bert.engine.model_folder import ModelFolder
from finetune_bert.engine.run_info import RunInfo
from finetune_bert.tasks import CLASSIFICATION, DEFAULT_THRESHOLD, MULTI_LABEL, REGRESSION, activate, task_of_config


@dataclass(frozen=True)
class Prediction:
    """A classification: the most likely label and its probability."""

    label: str
    confidence: float

    def __str__(self) -> str:
        return f"{self.label}, confidence {self.confidence:.2f}"


@dataclass(frozen=True)
class Labels:
    """A multi-label decision: the labels whose probability reaches their threshold, and every label's
    probability (independent sigmoids: they do not sum to 1)."""

    labels: tuple[str, ...]
    scores: dict[str, float]

    def __str__(self) -> str:
        shown = ", ".join(f"{n} {self.scores[n]:.2f}" for n in self.labels)
        return shown or "no label"


@dataclass(frozen=True)
class Value:
    """A regression: the predicted value, in the targets' units, and the target's name."""

    value: float
    name: str

    def __str__(self) -> str:
        return f"{self.name} {self.value:.4g}"


class Classifier:
    """A fine-tuned model for prediction: its engine (torch_engine.Engine in eval mode, or onnx_engine.OnnxEngine),
    tokenizer, and how the model was trained to read texts (cleaning, truncation, labels), or `reading` as
    asked (reading.Reading: another truncation, or long texts read whole as windows)."""

    def __init__(self, engine: InferenceEngine, tokenizer, folder: ModelFolder, reading: Reading = Reading(),
                 backend: str = "torch", *, requested: str | None = None):
        self.engine, self.tokenizer, self.folder, self.backend = engine, tokenizer, folder, backend
        self.requested = requested or backend  # "auto" where load() chose `backend`
        self._gradients: Classifier | None = None  # auto's torch twin for explanations, loaded on first use
        self.model, self.device = getattr(engine, "model", None), engine.device  # model: None for ONNX
        self.info, self.source = folder.info, folder.name  # how it was trained; the folder or hub id as named
        self.labels = LabelMap.of(engine.config, folder.info)
        self.label_names = self.labels.names
        self.max_length = folder.max_length(tokenizer, engine.config)
        self.reading = reading
        self.truncation = reading.truncation or folder.info.truncation
        self.head_tokens = folder.info.head_tokens
        self.clean = folder.info.clean
        self.temperature = folder.info.temperature  # already folded into the weights
        self.task = task_of_config(engine.config)
        k = len(self.label_names)
        self.thresholds = np.asarray(folder.info.thresholds if folder.info.thresholds and
                                     len(folder.info.thresholds) == k else [DEFAULT_THRESHOLD] * k, dtype=np.float32)
        self.pairs = folder.info.pair_column is not None  # trained on text pairs: every input is one
        self._progress: Callable[[float], None] | None = None

    @contextlib.contextmanager
    def reporting(self, progress: Callable[[float], None] | None) -> Iterator[None]:
        """Scoring inside reports the texts done to `progress` as batches finish (a file's pass; the server
        never sets it)."""
        self._progress = progress
        try:
            yield
        finally:
            self._progress = None

    def reading_json(self) -> dict[str, Any]:
        """How this classifier reads a long text, every default filled in: recorded beside each number."""
        if self.reading.mode != "chunks":
            return {"long_texts": "truncate", "truncation": self.truncation, "max_length": self.max_length}
        window = window_size(self.tokenizer, self.max_length)
        return {"long_texts": "chunks", "max_length": self.max_length, "stride": self.reading.overlap(window),
                "aggregate": self.reading.how}

    def reading_text(self) -> str:
        """The same, for a person: what a printed number was measured with."""
        r = self.reading_json()
        if r["long_texts"] == "truncate":
            return f"texts over {r['max_length']} tokens cut {r['truncation']}"
        how = "averaged" if r["aggregate"] == "mean" else "their maximum taken"
        return f"long texts read whole: windows of {r['max_length']} tokens, logits {how}"

    def encode(self, texts: list[str], labels: list[int] | None = None) -> Encoded:
        return encode(self.tokenizer, texts, labels, self.max_length, self.truncation, self.head_tokens)

    def prepare(self, texts: list[str], *, cleaned: bool = False,
                pairs: list[str] | None = None) -> tuple[Encoded | Windows, int]:
        """Texts as the model reads them (cleaned, unless `cleaned` says they are; cut, or as windows) and how
        many tokens that is: a unit the server's batcher queues and groups by token budget. `pairs`: each
        text's second text, for a model trained on pairs (always cut, longest first: a pair has no windows)."""
        items = [clean_text(t) for t in texts] if self.clean and not cleaned else list(texts)
        if self.pairs != (pairs is not None):
            raise UserError("this model reads text pairs: give each text with its second text" if self.pairs else
                            "this model reads single texts, not pairs")
        if pairs is not None:
            second = [clean_text(t) for t in pairs] if self.clean and not cleaned else list(pairs)
            encoded = encode(self.tokenizer, items, None, self.max_length, self.truncation, self.head_tokens,
                             pairs=second)
            return encoded, int(encoded.lengths.sum())
        if self.reading.mode != "chunks":
            encoded = self.encode(items)
            return encoded, int(encoded.lengths.sum())
        stride = self.reading.overlap(window_size(self.tokenizer, self.max_length))
        windows = encode_windows(self.tokenizer, items, self.max_length, stride)
        return windows, int(windows.encoded.lengths.sum())

    def prepare_items(self, items: list[Any]) -> tuple[Encoded | Windows, int]:
        """`prepare` for inputs as the API takes them: strings, or for a pair model (text, text_pair) tuples or
        {"text", "text_pair"} dicts."""
        firsts, seconds = split_pairs(items, self.pairs)
        return self.prepare(firsts, pairs=seconds)

    def logits_of(self, prepared: list[Encoded | Windows], batch_size: int = 64, *,
                  progress: Callable[[float], None] | None = None) -> np.ndarray:
        """fp32 logits (n, k) of several prepared units scored together, rows in their order, one after the
        other: the windows of every text are batched with all the others and aggregated per text after.
        `progress(texts)`: called as batches finish, with the share of texts they stand for."""
        if not prepared:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        if isinstance(prepared[0], Windows):
            offsets = np.cumsum([0] + [len(w.full_lengths) for w in prepared])
            merged = _concat([w.encoded for w in prepared])
            owner = np.concatenate([w.owner + start for w, start in zip(prepared, offsets)])
            return aggregate(self._logits(merged, batch_size, progress, int(offsets[-1])), owner, int(offsets[-1]),
                             self.reading.how)
        merged = _concat(prepared)
        return self._logits(merged, batch_size, progress, len(merged))

    def _logits(self, encoded: Encoded, batch_size: int, progress: Callable[[float], None] | None = None,
                texts: int = 0) -> np.ndarray:
        progress = progress or self._progress
        infer = getattr(self.engine, "infer", None)  # the torch engine yields batch by batch
        if progress is None or infer is None:
            logits = as_numpy(self.engine.logits(encoded, batch_size))
            if progress is not None:
                progress(texts)
            return logits
        out = np.zeros((len(encoded), len(self.label_names)), dtype=np.float32)
        for index, logits in infer(encoded, batch_size):
            out[index] = logits.numpy()
            progress(len(index) * texts / max(len(encoded), 1))
        return out

    def score_prepared(self, prepared: list[Encoded | Windows], batch_size: int = 64) -> list[np.ndarray]:
        """Probabilities of each prepared unit (one array (n_i, k) each), scored together."""
        probs = activate(self.logits_of(prepared, batch_size), self.task)
        sizes = [len(p.full_lengths) for p in prepared]
        return np.split(probs, np.cumsum(sizes)[:-1]) if sizes else []

    def scored(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Logits (n, k) in input order for texts already cleaned, and each text's length in tokens."""
        prepared, _ = self.prepare(texts, cleaned=True)
        return self.logits_of([prepared], batch_size), prepared.full_lengths

    def _scores(self, texts: Any, batch_size: int) -> tuple[np.ndarray, bool]:
        """What the outputs mean (class or label probabilities, or values) for one input or a list of them,
        and whether it was one. An input is a string, or for a pair model a (text, text_pair) tuple or the
        Hugging Face {"text": ..., "text_pair": ...}."""
        firsts, seconds, single = self._inputs(texts)
        if not firsts:
            return np.zeros((0, len(self.label_names)), dtype=np.float32), single
        return self.score_prepared([self.prepare(firsts, pairs=seconds)[0]], batch_size)[0], single

    def _inputs(self, texts: Any) -> tuple[list[str], list[str] | None, bool]:
        """One input or a list as first texts, second texts (a pair model's), and whether it was one."""
        # a tuple is one pair for a pair model; for the others, a sequence of texts as a list is
        single = isinstance(texts, (str, dict)) or self.pairs and isinstance(texts, tuple)
        return (*split_pairs([texts] if single else list(texts), self.pairs), single)

    def explain(self, texts: Any, *, target: Any = None, steps: int | None = None,
                batch_size: int = EXPLAIN_BATCH) -> Explanation | list[Explanation]:
        """Which words moved the answer, and how much (attributions.Explanation; Integrated Gradients, torch
        backends only): one for one input, a list for a list, inputs as predict() takes them. `target`: None (the
        predicted class; multi-label: the most probable label; regression: the value), a label name or index,
        or a list of them, one per input; `steps`: of the integral (default 32); `batch_size`: rows (a text or
        window at one step) per forward and backward pass."""
        firsts, seconds, single = self._inputs(texts)
        if single and isinstance(target, (list, tuple)):
            raise UserError("explain: one text takes one target, not a list")
        out = explain_inputs(self.gradients(), firsts, seconds, target=target, steps=steps, batch_size=batch_size)
        return out[0] if single else out

    @property
    def explains_through_torch(self) -> bool:
        """`auto` chose ONNX, which gives no gradients: explanations load the same model through torch."""
        return self.model is None and self.requested == AUTO

    def gradients(self) -> "Classifier":
        """What explains: this classifier, or where `auto` chose ONNX (forward only, no gradients) the same
        model through torch, loaded at the first explanation and kept; an ONNX backend asked by name refuses."""
        if not self.explains_through_torch:
            return self
        if self._gradients is None:
            console.note("explanations need the model's gradients: it is loaded through torch as well")
            self._gradients = load(self.folder, reading=self.reading, backend="torch")
        return self._gradients

    def predict_proba(self, texts: Any, batch_size: int = 64) -> np.ndarray:
        """Probabilities, columns in `label_names` order: shape (n, k), or (k,) for one input. Classes sum to 1;
        a multi-label model's labels are independent (each its own sigmoid)."""
        if self.task == REGRESSION:
            raise UserError("a regression model predicts values, not probabilities: use predict()")
        probs, single = self._scores(texts, batch_size)
        return probs[0] if single else probs

    def predict(self, texts: Any, batch_size: int = 64) -> Any:
        """For one input or a list: the most likely label and its probability (`Prediction`); the labels
        that reach their thresholds and every label's probability (`Labels`, multi-label); or the value
        (`Value`, regression)."""
        scores, single = self._scores(texts, batch_size)
        out = [self.answer(row) for row in scores]
        return out[0] if single else out

    def answer(self, row: np.ndarray) -> Prediction | Labels | Value:
        """One input's outputs (from score_prepared) as the model's kind answers."""
        if self.task == MULTI_LABEL:
            chosen = tuple(n for n, p, t in zip(self.label_names, row, self.thresholds) if p >= t)
            return Labels(chosen, {n: float(p) for n, p in zip(self.label_names, row)})
        if self.task == REGRESSION:
            return Value(float(row[0]), self.label_names[0])
        return Prediction(self.label_names[int(row.argmax())], float(row.max()))


def _concat(parts: list[Encoded]) -> Encoded:
    if len(parts) == 1:
        return parts[0]
    return Encoded([ids for p in parts for ids in p.ids], np.concatenate([p.full_lengths for p in parts]), None)


def aggregate(logits: np.ndarray, owner: np.ndarray, n: int, how: str = "mean") -> np.ndarray:
    """Per-text logits (n, k) from per-window ones: each class's mean over the text's windows, or its max.
    Both commute with a folded temperature (mean(z / T) = mean(z) / T, and so for max)."""
    if how == "max":
        out = np.full((n, logits.shape[1]), -np.inf, dtype=np.float32)
        np.maximum.at(out, owner, logits)
        return out
    sums = np.zeros((n, logits.shape[1]), dtype=np.float32)
    np.add.at(sums, owner, logits)
    return sums / np.maximum(np.bincount(owner, minlength=n), 1)[:, None].astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise probabilities, in float32 as torch.softmax gives them."""
    return activate(logits, CLASSIFICATION)


def split_pairs(items: list[Any], pairs: bool) -> tuple[list[str], list[str] | None]:
    """Inputs as first texts and, for a pair model, second texts: a (text, text_pair) tuple, or a dict in the
    Hugging Face form {"text": ..., "text_pair": ...}; anything else is refused with what was expected."""
    if not pairs:
        if not all(isinstance(t, str) for t in items):
            raise UserError("predict takes a string or a list of strings")
        return items, None
    firsts, seconds = [], []
    for item in items:
        if isinstance(item, dict) and set(item) == {"text", "text_pair"}:
            item = (item["text"], item["text_pair"])
        if not (isinstance(item, tuple) and len(item) == 2 and all(isinstance(t, str) for t in item)):
            raise UserError('this model reads text pairs: give each input as (text, text_pair) or '
                            '{"text": ..., "text_pair": ...}, got ' + repr(item)[:80])
        firsts.append(item[0])
        seconds.append(item[1])
    return firsts, seconds


@dataclass
class LabelMap:
    """A model's classes, and how labels in data map to them: read from config.json and finetune_bert.json,
    so that data can be checked before the weights are loaded. `spec`: how a label cell reads for the model's
    kind (a class, a set of labels, a number)."""

    names: list[str]
    to_id: dict[Any, int]
    spec: LabelSpec = LabelSpec()

    @classmethod
    def of(cls, config, info: RunInfo) -> "LabelMap":
        names = [str(config.id2label[i]) for i in range(config.num_labels)]
        # Labels in data may be names or the values used in training; for a model finetune-bert did not
        # train, integer labels are taken as ids.
        raw = info.raw_labels if info.raw_labels else range(len(names))
        return cls(names, {**{n: i for i, n in enumerate(names)}, **{r: i for i, r in enumerate(raw)}},
                   LabelSpec(task_of_config(config), info.label_separator))

    def _id(self, value: Any) -> int | None:
        return self.to_id.get(value, self.to_id.get(str(value)))

    def known(self, split: Split) -> tuple[Split, list[SkippedRow]]:
        """The rows whose label this model knows, with labels as ids (a tuple of ids for a label set; a
        regression target as it is), and the others as bad rows."""
        ids, keep, bad = [], [], []
        column = split.columns.label if split.columns else "label"
        for i, value in enumerate(split.labels):
            if self.spec.task == REGRESSION:
                label_id = value
            elif self.spec.task == MULTI_LABEL:
                found = [self._id(x) for x in value]
                label_id = None if None in found else tuple(found)
                value = next((x for x, f in zip(value, found) if f is None), value)
            else:
                label_id = self._id(value)
            if label_id is None:
                bad.append(SkippedRow("test", split.source, split.where[i], column, self._unknown(value), repr(value)))
            else:
                ids.append(label_id)
                keep.append(i)
        kept = split.subset(keep)
        kept.labels = ids
        return kept, bad

    def tensor(self, labels: list[Any]):
        """`known` labels as the metrics take them: class ids, multi-hot rows, or float targets."""
        import torch

        if self.spec.task == MULTI_LABEL:
            out = torch.zeros(len(labels), len(self.names))
            for row, ids in enumerate(labels):
                out[row, list(ids)] = 1.0
            return out
        return torch.as_tensor(labels, dtype=torch.float32 if self.spec.task == REGRESSION else torch.long)

    def _unknown(self, value: Any) -> str:
        same = [n for n in self.names if isinstance(value, str) and n.casefold() == value.casefold()]
        hint = f"; labels are case-sensitive: the model has {same[0]!r}" if same else ""
        return f"label {value!r} is not one of the model's labels ({', '.join(self.names)}){hint}"


def load(model: ModelFolder | str, device: str | None = None, reading: Reading = Reading(),
         backend: str = AUTO, *, explaining: bool = False) -> Classifier:
    """Load a fine-tuned classifier folder (or hub id) for prediction; a warning on stderr if its
    classification head was never trained (its predictions would be random). `reading`: how texts longer
    than the model's max length are read (inference.reading.Reading), checked before the weights are loaded.
    `backend`: auto (the fastest exact one here, said on stderr: backends.choose) or one of
    inference.backends.BACKENDS (torch, torch-fp32, onnx, onnx-int8); `explaining`: explanations will be asked,
    so auto picks torch (an ONNX one chosen by auto still explains, through torch loaded on first use)."""
    refuse(reading.problems() + ([] if backend in CHOICES else [f"--backend {backend}: one of {', '.join(CHOICES)}"]))
    folder = ModelFolder.open(model)

    def check(tokenizer, config) -> None:  # before the weights: a stride the model's windows cannot step by
        length = folder.max_length(tokenizer, config)
        refuse(reading.problems(window_size(tokenizer, length), length))
        if folder.unfinished:
            console.warn(f"the training run in {folder} has not finished (no metrics.json): this is its best "
                         "model so far; finish the run with `finetune-bert train ... --resume`")

    if backend != AUTO:
        return Classifier(*BACKENDS[backend](folder, device, check), folder, reading, backend)
    choice, engine, tokenizer = load_auto(folder, device, check, gradients=explaining)
    console.note(choice.line())  # once loaded: a model refused at its check says that one line alone
    return Classifier(engine, tokenizer, folder, reading, choice.backend, requested=AUTO)
