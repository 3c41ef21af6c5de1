"""What the server serves: the model behind a batcher, every limit a request meets on its way to it, the
metrics, and reload. The routes (app.py) only speak HTTP around it.

What a client sees of the model names it as the folder's name and its base model, never by a path on the
server's disk: the page, /info, /ready, /docs and the errors say `model`, not `/home/alice/runs/model`. The
start-up line and the log keep the path, for the operator.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from starlette.concurrency import run_in_threadpool

from finetune_bert.errors import UserError
from finetune_bert.inference.heap import steady_heap
from finetune_bert.inference.reading import Reading
from finetune_bert.serving.batcher import Batcher, Closed, QueueFull, Ticket, TooLarge
from finetune_bert.serving.config import ServeConfig
from finetune_bert.serving.limits import refuse_over_budget
from finetune_bert.serving.metrics import ServerMetrics
from finetune_bert.serving.priority import lowered
from finetune_bert.serving.requests import Refused, check_texts

API_KEY_ENV = "FINETUNE_BERT_API_KEY"
PROBE = "probe"
LIMITS = ("max_batch_tokens", "max_wait_ms", "max_queue", "max_client_batch", "max_payload_bytes",
          "max_request_tokens", "timeout")


def _load(cfg: ServeConfig, reading: Reading, device: str | None):
    """The classifier and its probabilities for PROBE (the first inference is slow, allocations: paid now).
    Run below the server's priority (priority.lowered): the inference threads this makes inherit it."""
    from finetune_bert.inference.classifier import load

    classifier = _in_memory(load(cfg.model, device=device, reading=reading, backend=cfg.backend))
    steady_heap(classifier.device)  # a long-lived process: the heap must not creep batch after batch
    item = (PROBE, PROBE) if classifier.pairs else PROBE
    return classifier, classifier.score_prepared([classifier.prepare_items([item])[0]])[0][0]


def _in_memory(classifier):
    """Its weights copied into memory: safetensors maps the file, and a long-lived server must not crash
    (SIGBUS) when someone rewrites model.safetensors in place (`cp new.safetensors ...`)."""
    if classifier.model is None:  # an ONNX session holds its graph in memory: nothing mapped
        return classifier
    import torch

    with torch.no_grad():
        for tensor in (*classifier.model.parameters(), *classifier.model.buffers()):
            tensor.data = tensor.data.clone()
    return classifier


def shown(name: str | None) -> str | None:
    """A model as a client may see it: a hub id as it is, a path by its last part only."""
    if not name:
        return name
    path_like = name.startswith(("/", "~", ".")) or "\\" in name or Path(name).expanduser().exists()
    if not path_like:
        return name
    parts = [p for p in name.replace("\\", "/").rstrip("/").split("/") if p not in ("", ".")]
    return Path(name).expanduser().resolve().name if not parts or parts[-1] == ".." else parts[-1]


class Service:
    """What the app serves: the model behind a batcher, the limits, the metrics; reloadable."""

    def __init__(self, cfg: ServeConfig, device: str | None = None):
        self.cfg, self.device = cfg, device
        self.reading = cfg.reading()
        self.metrics = ServerMetrics()
        self.classifier, probe = lowered(_load, cfg, self.reading, device)
        self.probe = probe.tolist()
        self.batcher = Batcher(self.classifier, max_batch_tokens=cfg.max_batch_tokens, max_wait_ms=cfg.max_wait_ms,
                               max_queue=cfg.max_queue, max_request_tokens=cfg.max_request_tokens,
                               batch_size=cfg.batch_size, on_batch=self.metrics.batch,
                               on_abandon=self.metrics.abandoned.inc)
        self._reload_lock = threading.Lock()
        self.api_key = cfg.api_key or os.environ.get(API_KEY_ENV) or None
        self.name = shown(cfg.model)

    def info(self) -> dict[str, Any]:
        clf = self.classifier
        return {"model": self.name, "base_model": shown(clf.info.base_model), "backend": clf.backend,
                "labels": clf.label_names, "max_length": clf.max_length, "temperature": clf.temperature,
                "task": clf.task, "text_pairs": clf.pairs,
                **({"thresholds": [float(t) for t in clf.thresholds]} if clf.task == "multi-label" else {}),
                "reading": {"long_texts": self.reading.mode, "truncation": clf.truncation},
                "auth": self.api_key is not None, "limits": {k: getattr(self.cfg, k) for k in LIMITS}}

    def public(self, text: str) -> str:
        """`text` with the model folder's path on this disk replaced by its name (an error a client reads)."""
        folder = Path(self.cfg.model).expanduser()
        for path in sorted({str(folder.resolve()), str(folder.absolute()), self.cfg.model}, key=len, reverse=True):
            if path != self.name and (os.sep in path or path.startswith("~")):
                text = text.replace(path, self.name)
        return text

    def reload(self) -> dict[str, Any]:
        """Load the model folder again and probe it; swap only if both succeed (the old model stays otherwise).
        Requests in flight finish on the model they started with."""
        with self._reload_lock:
            started = time.perf_counter()
            new, probe = lowered(_load, self.cfg, self.reading, self.device)
            sane = bool(np.isfinite(probe).all()) and (new.task != "classification" or probe.sum() > 0.99)
            if not sane:
                raise UserError(f"the reloaded model's probe gave {probe.tolist()}, not "
                                f"{'probabilities' if new.task != 'regression' else 'a finite value'}; kept the old "
                                "model")
            self.batcher.swap(new)
            self.classifier, self.probe = new, probe.tolist()
            self.metrics.reloads.inc()
            return {"reloaded": True, "model": self.name, "seconds": round(time.perf_counter() - started, 3)}

    def check_key(self, header: str | None) -> None:
        if self.api_key is None:
            return
        given = (header or "").removeprefix("Bearer ").strip() if (header or "").startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise Refused(401, "missing or wrong API key: send `Authorization: Bearer KEY`",
                          {"WWW-Authenticate": "Bearer"})

    def unready(self) -> str | None:
        """Why a request could not be taken now (503 from /ready), or None: ready, even while requests are scored."""
        if self.batcher.draining:
            return "the server is shutting down"
        if not self.batcher.alive:
            return "the model's worker thread has stopped"
        if self.batcher.queued >= self.cfg.max_queue:
            return f"the queue is full (--max-queue {self.cfg.max_queue})"
        return None

    def admit(self, texts: list[str]) -> Ticket:
        """In a worker thread: the texts' content checked (422), the token budget (413), then queued."""
        classifier = self.batcher.classifier
        check_texts(texts, classifier.clean)
        refuse_over_budget(classifier, texts, self.cfg.max_request_tokens)
        return self.batcher.submit(texts)

    async def predict(self, texts: list[str], request=None) -> tuple[Any, dict[str, float]]:
        """Probabilities (n, k) for the texts, via the batcher; and the time spent queued and scoring. A
        request whose client hangs up, or that times out, is dropped: the model stops working on it."""
        try:
            ticket = await run_in_threadpool(self.admit, texts)
        except QueueFull as exc:
            raise Refused(429, f"the server is busy: {exc}; retry shortly", {"Retry-After": "1"}) from None
        except TooLarge as exc:
            raise Refused(413, f"{exc} (--max-request-tokens); send shorter texts, or fewer") from None
        except Closed as exc:
            raise Refused(503, str(exc), {"Connection": "close"}) from None
        scored = await self._answer(ticket, request)
        return scored.probs, {"queue": scored.queue_seconds, "inference": scored.inference_seconds}

    async def _answer(self, ticket: Ticket, request) -> Any:
        waiter = asyncio.wrap_future(ticket)
        gone = asyncio.ensure_future(_hung_up(request)) if request is not None else None
        try:
            done, _ = await asyncio.wait([waiter] if gone is None else [waiter, gone], timeout=self.cfg.timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            if gone is not None:
                gone.cancel()
        if waiter in done:
            try:
                return waiter.result()
            except Closed as exc:
                raise Refused(503, str(exc), {"Connection": "close"}) from None
        ticket.cancel()  # the worker drops what is left of it between two slices
        waiter.cancel()
        if gone is not None and gone in done:
            raise Refused(499, "the client closed the connection before its answer")
        raise Refused(503, f"no answer within {self.cfg.timeout:g} s (--timeout); the server is overloaded, or "
                           "the request is too long for this limit")


async def _hung_up(request) -> None:
    """Returns once the client has closed the connection (its body is read already: the next message is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
