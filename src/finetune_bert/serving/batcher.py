"""Dynamic batching for the server: concurrent requests scored together, in slices of a token budget.

Requests are tokenized in the caller's thread (the server's thread pool), so the queue knows each one's
tokens, and a request over `max_request_tokens` is refused there (TooLarge), before it is queued. One worker
thread owns the model. When idle it takes the oldest request and adds queued ones while the group's tokens
stay within `max_batch_tokens` and the first has waited less than `max_wait_ms`. It scores rows (a text as
cut, or one window of a long text; slices.py) in slices of at most `max_batch_tokens` tokens, so a client
batch or a text larger than the budget is split, never refused. Between two slices it:

- drops what is left of a request whose caller stopped waiting (its Ticket was cancelled: a timeout, a client
  that hung up), so that the model does not keep working for a client that is gone;
- lets requests queued meanwhile in, up to half the budget, ahead of the rest of a long one: a short request
  waits at most one slice behind a long one, and the long one still gets at least half of every slice.

The queue is bounded (`max_queue` requests): a full queue raises QueueFull at once, for a 429, instead of
letting latency grow without bound.

`swap(classifier)`: requests already started finish on the model they started with; the next ones get the new
one. `drain(seconds)` (SIGTERM) keeps scoring what was received until its deadline, then answers the rest
with Closed; `close()` stops the worker.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from finetune_bert import faults
from finetune_bert.serving import slices
from finetune_bert.serving.priority import lower_this_thread
from finetune_bert.serving.slices import Work

# How long close() waits for the worker to finish the slice it is in once the drain time is over.
SLICE_GRACE_SECONDS = 10.0


class QueueFull(Exception):
    """The request queue holds `max_queue` requests already."""


class Closed(Exception):
    """The batcher is stopped, or its drain time is over: no request is taken or finished."""


class TooLarge(Exception):
    """A request needs more tokens than `max_request_tokens`."""

    def __init__(self, tokens: int, limit: int):
        super().__init__(f"the request needs {tokens} tokens, over the limit of {limit}")
        self.tokens, self.limit = tokens, limit


class Ticket(Future):
    """A request's future. cancel() also marks it abandoned: once the worker runs a request its future can no
    longer be cancelled, and the worker drops the rows left of an abandoned one between two slices."""

    abandoned = False

    def cancel(self) -> bool:
        self.abandoned = True
        return super().cancel()


@dataclass
class _Request:
    texts: list[str]
    prepared: Any              # what Classifier.prepare made of the texts (token ids or windows)
    tokens: int
    future: Ticket
    classifier: Any            # the model that prepared them
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Scored:
    """A request's answer: probabilities (n, k), the time it waited before its first slice, and the time from
    its first slice to its last."""

    probs: Any
    queue_seconds: float
    inference_seconds: float


@dataclass(frozen=True)
class BatchRecord:
    """What one engine slice was, for the metrics: rows (texts, or windows of long ones), tokens, the waits of
    the requests it started, its time."""

    texts: int
    tokens: int
    waits: tuple[float, ...]
    seconds: float


class Batcher:
    def __init__(self, classifier, *, max_batch_tokens: int = 16384, max_wait_ms: float = 2.0,
                 max_queue: int = 256, max_request_tokens: int | None = None, batch_size: int = 64,
                 on_batch: Callable[[BatchRecord], None] | None = None, on_abandon: Callable[[], None] | None = None):
        self.classifier = classifier
        self.max_batch_tokens, self.max_wait = max_batch_tokens, max_wait_ms / 1000
        self.max_queue, self.max_request_tokens, self.batch_size = max_queue, max_request_tokens, batch_size
        self.on_batch, self.on_abandon = on_batch, on_abandon
        self._queue: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        self._closed = self._expired = False
        self._deadline: float | None = None  # of the drain: monotonic time
        self._busy = 0  # requests taken by the worker and not yet answered
        self.unfinished = 0  # requests answered Closed because the drain time ran out
        self._worker = threading.Thread(target=self._run, name="finetune-bert-batcher", daemon=True)
        self._worker.start()

    # ---- the callers' side ------------------------------------------------------------------------------

    def submit(self, texts: list[str]) -> Ticket:
        """Queue texts (already checked by the caller); the ticket's result is a Scored."""
        self._refuse_if_full()  # before tokenizing: under overload, a refusal must cost nothing
        classifier = self.classifier
        prepared, tokens = classifier.prepare_items(texts)
        if self.max_request_tokens is not None and tokens > self.max_request_tokens:
            raise TooLarge(tokens, self.max_request_tokens)
        request = _Request(texts, prepared, tokens, Ticket(), classifier)
        with self._cond:
            self._refuse_if_full()
            self._queue.append(request)
            self._cond.notify()
        return request.future

    def _refuse_if_full(self) -> None:
        if self._closed or self._expired or self._past_deadline():
            raise Closed("the server is shutting down")
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"{len(self._queue)} requests are queued already (--max-queue {self.max_queue})")

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> int:
        """Requests the worker has started and not yet answered."""
        return self._busy

    @property
    def draining(self) -> bool:
        return self._closed or self._deadline is not None

    @property
    def alive(self) -> bool:
        return self._worker.is_alive()

    def swap(self, classifier) -> Any:
        """Use `classifier` for the requests not started yet; returns the old one."""
        with self._cond:
            old, self.classifier = self.classifier, classifier
        return old

    def drain(self, seconds: float) -> None:
        """Start the drain: what is queued or started is still scored for `seconds`, then answered with Closed.
        It only sets the deadline (the worker and close() act on it), so a signal handler may call it."""
        if self._deadline is None:
            self._deadline = time.monotonic() + seconds

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def close(self, drain_seconds: float = 30.0) -> bool:
        """Take no new request; answer the queued and started ones until the drain's deadline (set by drain(),
        or `drain_seconds` from now); the rest get Closed. True if all were answered in time."""
        self.drain(drain_seconds)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while (self._queue or self._busy) and not self._expired and self._worker.is_alive() \
                    and not self._past_deadline():
                self._cond.wait(timeout=max(0.01, self._deadline - time.monotonic()))
            if self._queue or self._busy:
                self._expire()
        self._worker.join(timeout=SLICE_GRACE_SECONDS)
        return self.unfinished == 0

    def _expire(self) -> None:
        """The drain time is over (the lock held): the queued requests get Closed now, the started ones when the
        worker ends its slice."""
        if self._expired:
            return
        self._expired = True
        self.unfinished += len(self._queue) + self._busy
        for request in self._queue:
            request.future.set_exception(Closed(_SHUT))
        self._queue.clear()
        self._cond.notify_all()

    # ---- the worker ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        lower_this_thread()  # (priority.py: the event loop must not wait for the model's cores)
        active: list[Work] = []
        try:
            while (new := self._next(active)) is not None:
                active = self._live(active + [self._bound(r) for r in new])
                if active:
                    active = self._slice(active)
        finally:
            for work in active:
                if not work.request.future.done():
                    work.request.future.set_exception(Closed(_SHUT))
            with self._cond:
                self._busy = 0
                self._cond.notify_all()

    def _next(self, active: list[Work]) -> list[_Request] | None:
        """Requests to start now: when idle, the next group (waiting for one); while some are started, those
        queued that fit in half the budget. None: stop (closed and nothing left, or the drain time is over)."""
        with self._cond:
            self._busy = len(active)
            self._cond.notify_all()
            if self._past_deadline():
                self._expire()
            if self._expired:
                return None
            if not active:
                return self._group()
            if active[0].classifier is not self.classifier:
                return []  # the old model's requests finish first
            return self._take(self.max_batch_tokens // 2, 0)

    def _group(self) -> list[_Request] | None:
        while not self._queue and not self._closed and not self._past_deadline():
            self._cond.wait(timeout=None if self._deadline is None else max(0.01, self._deadline - time.monotonic()))
        if not self._queue:
            return None if self._closed or self._past_deadline() else []
        group = self._take(self.max_batch_tokens, 1)
        deadline = (group[0].enqueued if group else time.perf_counter()) + self.max_wait
        while (left := deadline - time.perf_counter()) > 0 and not self._closed:
            tokens = sum(r.tokens for r in group)
            if self._queue and tokens + self._queue[0].tokens > self.max_batch_tokens:
                break
            self._cond.wait(timeout=left)
            group += self._take(self.max_batch_tokens - sum(r.tokens for r in group), 0)
        return group

    def _take(self, budget: int, at_least: int) -> list[_Request]:
        """Queued requests in order while their tokens fit in `budget` (at least `at_least` of them), counted
        as busy; those whose caller cancelled them while queued are left out."""
        taken, tokens = [], 0
        while self._queue and (len(taken) < at_least or tokens + self._queue[0].tokens <= budget):
            request = self._queue.popleft()
            if request.future.set_running_or_notify_cancel():
                taken.append(request)
                tokens += request.tokens
        self._busy += len(taken)
        return taken

    def _bound(self, request: _Request) -> Work:
        """The request as rows on the current model: prepared again if the model was swapped meanwhile."""
        classifier = self.classifier
        prepared = request.prepared if request.classifier is classifier else classifier.prepare_items(request.texts)[0]
        return Work.of(request, classifier, prepared)

    def _live(self, works: list[Work]) -> list[Work]:
        """The works whose caller still waits; the others are dropped, with the rows they had left."""
        live = []
        for work in works:
            if work.abandoned:
                work.request.future.set_exception(Closed("the caller stopped waiting"))
                if self.on_abandon is not None:
                    self.on_abandon()
            else:
                live.append(work)
        return live

    def _slice(self, active: list[Work]) -> list[Work]:
        """Score one slice; returns the works with rows left."""
        chosen = slices.plan(active, self.max_batch_tokens)
        started = time.perf_counter()
        waits = slices.start(chosen, started)
        rows = slices.rows_of(chosen)
        try:
            faults.hit("batch", 0)
            logits = chosen[0][0].classifier.logits_of([rows], self.batch_size)
        except BaseException as exc:  # its callers get the error; the worker lives on
            failed = {id(work) for work, _ in chosen}
            for work, _ in chosen:
                work.request.future.set_exception(exc)
            return [w for w in active if id(w) not in failed]
        seconds = time.perf_counter() - started
        finished = slices.hand_out(chosen, logits)
        now = time.perf_counter()
        for work in finished:
            work.request.future.set_result(Scored(work.probs(), work.started - work.request.enqueued,
                                                  now - work.started))
        if self.on_batch is not None:
            self.on_batch(BatchRecord(len(rows), int(rows.lengths.sum()), tuple(waits), seconds))
        done = {id(w) for w in finished}
        return [w for w in active if id(w) not in done]


_SHUT = "the server shut down before this request was scored (--drain-seconds)"
