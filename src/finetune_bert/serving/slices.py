"""A request being scored, as rows, and the slices the batcher's worker scores them in.

A row is what the engine reads in one go: a text as cut, or one window of a text read whole. A request's rows
are scored over one or more slices of at most the token budget, so that between two slices the worker can drop
the rows of a request whose client is gone and let short requests in ahead of the rest of a long one. A
request's answer is made only once its last row is scored, exactly as `Classifier.score_prepared` makes it
(windows aggregated per text, then softmax), so slicing changes no score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from finetune_bert.data.tokens import Encoded, Windows
from finetune_bert.inference.classifier import aggregate
from finetune_bert.tasks import activate


@dataclass
class Work:
    """One request's rows on one classifier, and the logits of those scored so far."""

    request: Any               # the batcher's _Request: its future, texts and when it was queued
    classifier: Any            # the model that prepared the rows and scores all of them
    rows: Encoded
    owner: np.ndarray | None   # the text each row belongs to, for windows; None: one row per text
    texts: int
    lengths: np.ndarray = field(init=False)  # each row's tokens, counted once
    done: int = 0
    parts: list[np.ndarray] = field(default_factory=list)
    started: float | None = None  # when its first row went into a slice

    def __post_init__(self) -> None:
        self.lengths = self.rows.lengths

    @classmethod
    def of(cls, request: Any, classifier: Any, prepared: Encoded | Windows) -> Work:
        if isinstance(prepared, Windows):
            return cls(request, classifier, prepared.encoded, prepared.owner, len(prepared.full_lengths))
        return cls(request, classifier, prepared, None, len(prepared))

    @property
    def left(self) -> int:
        return len(self.rows) - self.done

    @property
    def abandoned(self) -> bool:
        return self.request.future.abandoned

    def fitting(self, room: int, at_least_one: bool) -> tuple[int, int]:
        """How many of the next rows fit in `room` tokens, and their tokens; one row if `at_least_one` (a
        row longer than the whole budget is still scored)."""
        lengths = self.lengths[self.done:]
        tokens = np.cumsum(lengths)
        n = int(np.searchsorted(tokens, room, side="right"))
        if n == 0 and at_least_one and len(lengths):
            n = 1
        return n, int(tokens[n - 1]) if n else 0

    def add(self, logits: np.ndarray) -> bool:
        """The logits of its next rows; True once every row is scored."""
        self.parts.append(logits)
        self.done += len(logits)
        return self.left == 0

    def probs(self) -> np.ndarray:
        logits = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        if self.owner is not None:
            logits = aggregate(logits, self.owner, self.texts, self.classifier.reading.how)
        return activate(logits, self.classifier.task)


def plan(works: list[Work], budget: int) -> list[tuple[Work, int]]:
    """The next slice: (work, rows) of at most `budget` tokens (at least one row), on the first work's model.
    Works not started yet go first, in the order they came; then the rest of those already started."""
    classifier = works[0].classifier
    chosen: list[tuple[Work, int]] = []
    room = budget
    for work in sorted(works, key=lambda w: (w.started is not None, w.request.enqueued)):
        if work.classifier is not classifier or room <= 0:
            continue
        n, tokens = work.fitting(room, at_least_one=not chosen)
        if n:
            chosen.append((work, n))
            room -= tokens
    return chosen


def rows_of(chosen: list[tuple[Work, int]]) -> Encoded:
    """The slice's rows as one Encoded, in plan order."""
    ids = [ids for work, n in chosen for ids in work.rows.ids[work.done:work.done + n]]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    return Encoded(ids, lengths, None)


def start(chosen: list[tuple[Work, int]], now: float) -> list[float]:
    """Mark the works whose first rows are in this slice as started; returns how long each of those waited."""
    waits = []
    for work, _ in chosen:
        if work.started is None:
            work.started = now
            waits.append(now - work.request.enqueued)
    return waits


def hand_out(chosen: list[tuple[Work, int]], logits: np.ndarray) -> list[Work]:
    """Each work its rows' logits, in plan order; returns the works now finished."""
    finished, offset = [], 0
    for work, n in chosen:
        if work.add(logits[offset:offset + n]):
            finished.append(work)
        offset += n
    return finished
