"""Dynamic batching for the server: concurrent requests grouped into engine batches by a token budget.

Requests are tokenized in the caller's thread (the server's thread pool), so the queue knows each one's
tokens. One worker thread owns the model: it takes the oldest request, adds queued ones while the group's
tokens stay within `max_batch_tokens` and the first has waited less than `max_wait_ms`, and scores the
group in one `Classifier.score_encoded` call (sorted by length inside, results back in input order). A
client batch larger than the budget is one group on its own, cut by the engine into several batches: split,
never refused. The queue is bounded (`max_queue` requests): a full queue raises QueueFull at once, for a
429, instead of letting latency grow without bound.

`swap(classifier)` replaces the model between two groups: a group in flight finishes on the old one.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from finetune_bert import faults
from finetune_bert.serving.priority import lower_this_thread


class QueueFull(Exception):
    """The request queue holds `max_queue` requests already."""


class Closed(Exception):
    """The batcher is draining or stopped: no new request is taken."""


@dataclass
class _Request:
    texts: list[str]
    prepared: Any              # what Classifier.prepare made of the texts (token ids or windows)
    tokens: int
    future: Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Scored:
    """A request's answer: probabilities (n, k), the time it waited in the queue and its batch's time."""

    probs: Any
    queue_seconds: float
    inference_seconds: float


@dataclass(frozen=True)
class BatchRecord:
    """What one engine group was, for the metrics: texts, tokens, its requests' waits, its time."""

    texts: int
    tokens: int
    waits: tuple[float, ...]
    seconds: float


class Batcher:
    def __init__(self, classifier, *, max_batch_tokens: int = 16384, max_wait_ms: float = 2.0,
                 max_queue: int = 256, on_batch: Callable[[BatchRecord], None] | None = None):
        self.classifier = classifier
        self.max_batch_tokens, self.max_wait = max_batch_tokens, max_wait_ms / 1000
        self.max_queue, self.on_batch = max_queue, on_batch
        self._queue: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._busy = 0  # requests taken by the worker and not yet answered
        self._worker = threading.Thread(target=self._run, name="finetune-bert-batcher", daemon=True)
        self._worker.start()

    # ---- the callers' side ------------------------------------------------------------------------------

    def submit(self, texts: list[str]) -> Future:
        """Queue texts (already checked by the caller); the future's result is a Scored."""
        self._refuse_if_full()  # before tokenizing: under overload, a refusal must cost nothing
        classifier = self.classifier
        prepared, tokens = classifier.prepare(texts)
        request = _Request(texts, prepared, tokens, Future())
        with self._cond:
            self._refuse_if_full()
            # texts prepared by a model swapped out meanwhile are prepared again by the worker
            request.prepared = (classifier, prepared)
            self._queue.append(request)
            self._cond.notify()
        return request.future

    def _refuse_if_full(self) -> None:
        if self._closed:
            raise Closed("the server is shutting down")
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"{len(self._queue)} requests are queued already (--max-queue {self.max_queue})")

    @property
    def queued(self) -> int:
        return len(self._queue)

    def swap(self, classifier) -> Any:
        """Use `classifier` from the next group on; returns the old one."""
        with self._cond:
            old, self.classifier = self.classifier, classifier
        return old

    def close(self, drain_seconds: float = 30.0) -> bool:
        """Take no new request; answer the queued and in-flight ones for up to `drain_seconds`. True if all
        were answered in time (the rest get Closed)."""
        deadline = time.monotonic() + drain_seconds
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while (self._queue or self._busy) and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            left = list(self._queue)
            self._queue.clear()
            drained = not left and not self._busy
        for request in left:
            request.future.set_exception(Closed("the server shut down before this request was scored"))
        self._worker.join(timeout=max(0.0, deadline - time.monotonic()) + 1)
        return drained

    # ---- the worker ---------------------------------------------------------------------------------------

    def _take(self) -> list[_Request] | None:
        """The next group: the oldest request, then others while the token budget and the wait allow."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            group = [self._queue.popleft()]
            tokens = group[0].tokens
            deadline = group[0].enqueued + self.max_wait
            while True:
                while self._queue and tokens + self._queue[0].tokens <= self.max_batch_tokens:
                    tokens += self._queue[0].tokens
                    group.append(self._queue.popleft())
                left = deadline - time.perf_counter()
                if left <= 0 or self._closed or (self._queue and tokens + self._queue[0].tokens > self.max_batch_tokens):
                    break
                self._cond.wait(timeout=left)
            group = [r for r in group if r.future.set_running_or_notify_cancel()]  # timed-out callers cancelled
            self._busy = len(group)
            return group

    def _run(self) -> None:
        lower_this_thread()  # (priority.py: the event loop must not wait for the model's cores)
        while (group := self._take()) is not None:
            started = time.perf_counter()
            try:
                if group:
                    self._score(group, started)
            finally:
                with self._cond:
                    self._busy = 0
                    self._cond.notify_all()

    def _score(self, group: list[_Request], started: float) -> None:
        classifier = self.classifier
        try:
            faults.hit("batch", 0)
            prepared = [r.prepared[1] if r.prepared[0] is classifier else classifier.prepare(r.texts)[0]
                        for r in group]
            probs = classifier.score_prepared(prepared)
        except BaseException as exc:  # every caller gets the error; the worker lives on
            for r in group:
                r.future.set_exception(exc)
            return
        seconds = time.perf_counter() - started
        for r, p in zip(group, probs):
            r.future.set_result(Scored(p, started - r.enqueued, seconds))
        if self.on_batch is not None:
            self.on_batch(BatchRecord(sum(len(r.texts) for r in group), sum(r.tokens for r in group),
                                      tuple(started - r.enqueued for r in group), seconds))

