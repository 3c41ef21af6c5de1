"""Explanations for the server (`"parameters": {"explain": true}`): word attributions on a thread of their own.

An explanation is Integrated Gradients: `steps` forward and backward passes of its text, about 100 times the
work of scoring it at 32 steps (a backward pass costs about two forwards). Run on the batcher's worker, one would
hold every plain prediction queued behind it for that long (17.8 s for a long review read whole, on 2 CPU cores).
So explanations get their own worker thread, beside the batcher's, one text at a time: plain requests keep being
batched and answered while a text is explained, slowed by sharing the cores, never queued behind it. One explanation at a time bounds that share, and the worker's priority is lowered as the batcher's is
(priority.py), so the event loop still answers at once.

Between two texts the worker drops a request whose caller stopped waiting (a timeout, a client that hung up),
as the batcher does between two slices. The queue is bounded (`max_queue` requests: QueueFull, a 429), and
`drain(seconds)` / `close()` follow the batcher's: what was taken is explained until the drain's deadline, the
rest is answered with Closed.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from finetune_bert.serving.batcher import Closed, QueueFull, Ticket
from finetune_bert.serving.priority import lower_this_thread

# How long close() waits for the worker to finish the text it is explaining once the drain time is over.
TEXT_GRACE_SECONDS = 10.0


@dataclass
class _Job:
    classifier: Any
    texts: list[Any]
    targets: list[str]
    future: Ticket
    enqueued: float = field(default_factory=time.perf_counter)


class Explainer:
    """Explains (classifier, texts, targets) jobs on one worker thread; a job's ticket gives its Explanations."""

    def __init__(self, *, steps: int | None = None, max_queue: int = 256,
                 on_text: Callable[[float], None] | None = None, on_abandon: Callable[[], None] | None = None):
        self.steps, self.max_queue = steps, max_queue
        self.on_text, self.on_abandon = on_text, on_abandon
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = self._expired = False
        self._reserved = 0  # places taken by requests still being scored
        self._started: set[int] = set()  # reserved tickets that were started (release() then gives nothing back)
        self._deadline: float | None = None  # of the drain: monotonic time
        self._busy = 0
        self.unfinished = 0  # jobs answered Closed because the drain time ran out
        self._worker = threading.Thread(target=self._run, name="finetune-bert-explainer", daemon=True)
        self._worker.start()

    def reserve(self) -> Ticket:
        """A place for a request's explanations, taken when the request comes (QueueFull, Closed: refused before
        any work); start() fills it once the request's scores say what to explain, release() gives it back."""
        with self._cond:
            if self._closed or self._past_deadline():
                raise Closed("the server is shutting down")
            if len(self._queue) + self._reserved >= self.max_queue:
                raise QueueFull(f"{len(self._queue) + self._reserved} requests wait for explanations already "
                                f"(--max-queue {self.max_queue})")
            self._reserved += 1
        return Ticket()

    def start(self, ticket: Ticket, classifier, texts: list[Any], targets: list[str]) -> None:
        """Queue the texts of a reserved ticket, each to be explained toward its target; the ticket's result is
        their Explanations."""
        with self._cond:
            self._reserved -= 1
            self._started.add(id(ticket))
            if self._expired:
                self.unfinished += 1
                ticket.set_exception(Closed(_SHUT))
                return
            self._queue.append(_Job(classifier, list(texts), list(targets), ticket))
            self._cond.notify_all()

    def release(self, ticket: Ticket) -> None:
        """Give back a reserved place that was never started (the request was refused or dropped before)."""
        with self._cond:
            if id(ticket) in self._started:
                self._started.discard(id(ticket))
            else:
                self._reserved -= 1
                self._cond.notify_all()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def alive(self) -> bool:
        return self._worker.is_alive()

    def drain(self, seconds: float) -> None:
        """Start the drain (only sets the deadline: a signal handler may call it)."""
        if self._deadline is None:
            self._deadline = time.monotonic() + seconds

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def close(self, drain_seconds: float = 30.0) -> bool:
        """Take no new job; explain the queued and started ones until the drain's deadline; the rest get Closed.
        True if all were answered in time."""
        self.drain(drain_seconds)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while (self._queue or self._busy or self._reserved) and self._worker.is_alive() \
                    and not self._past_deadline():
                self._cond.wait(timeout=max(0.01, self._deadline - time.monotonic()))
            self._expire()
        self._worker.join(timeout=TEXT_GRACE_SECONDS)
        return self.unfinished == 0

    def _expire(self) -> None:
        """The queued jobs get Closed now (the lock held), the reserved ones when they start, a started one
        after its current text."""
        if self._expired:
            return
        self._expired = True
        self.unfinished += len(self._queue)
        for job in self._queue:
            job.future.set_exception(Closed(_SHUT))
        self._queue.clear()

    def _next(self) -> _Job | None:
        """The next job to explain, waiting for one; None: stop (closed and nothing left, or the drain is over)."""
        with self._cond:
            self._busy = 0
            self._cond.notify_all()
            while True:
                if self._past_deadline():
                    self._expire()
                    return None
                while self._queue:
                    job = self._queue.popleft()
                    if job.future.set_running_or_notify_cancel():  # else cancelled while queued: left out
                        self._busy = 1
                        return job
                if self._closed and not self._reserved:
                    return None
                self._cond.wait(timeout=None if self._deadline is None else
                                max(0.01, self._deadline - time.monotonic()))

    def _run(self) -> None:
        lower_this_thread()  # (priority.py: the event loop must not wait for the model's cores)
        try:
            while (job := self._next()) is not None:
                self._explain(job)
        finally:
            with self._cond:
                self._busy = 0
                self._cond.notify_all()

    def _explain(self, job: _Job) -> None:
        """Explain a job's texts one at a time, dropping it between two once its caller is gone."""
        done = []
        try:
            for text, target in zip(job.texts, job.targets):
                if job.future.abandoned:
                    job.future.set_exception(Closed("the caller stopped waiting"))
                    self._dropped()
                    return
                if self._past_deadline():
                    self.unfinished += 1
                    job.future.set_exception(Closed(_SHUT))
                    return
                started = time.perf_counter()
                done.append(job.classifier.explain(text, target=target, steps=self.steps))
                if self.on_text is not None:
                    self.on_text(time.perf_counter() - started)
        except BaseException as exc:  # its caller gets the error; the worker lives on
            job.future.set_exception(exc)
            return
        job.future.set_result(done)

    def _dropped(self) -> None:
        if self.on_abandon is not None:
            self.on_abandon()


_SHUT = "the server shut down before this request was explained (--drain-seconds)"
