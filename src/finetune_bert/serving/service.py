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
from finetune_bert.inference.attributions import DEFAULT_STEPS
from finetune_bert.inference.heap import steady_heap
from finetune_bert.inference.reading import Reading
from finetune_bert.serving.batcher import Batcher, Closed, QueueFull, Ticket, TooLarge
from finetune_bert.serving.config import ServeConfig
from finetune_bert.serving.explainer import Explainer
from finetune_bert.serving.limits import refuse_explain_over_budget, refuse_over_budget
from finetune_bert.serving.metrics import ServerMetrics
from finetune_bert.serving.priority import lowered
from finetune_bert.serving.requests import Refused, check_texts

API_KEY_ENV = "FINETUNE_BERT_API_KEY"
PROBE = "probe"
LIMITS = ("max_batch_tokens", "max_wait_ms", "max_queue", "max_client_batch", "max_payload_bytes",
          "max_request_tokens", "timeout", "max_explain_texts")


def _load(cfg: ServeConfig, reading: Reading, device: str | None):
    """The classifier and its probabilities for PROBE (the first inference is slow, allocations: paid now).
    Run below the server's priority (priority.lowered): the inference threads this makes inherit it."""
    from finetune_bert.inference.classifier import load

    # predictions through what auto picks (an ONNX export on a CPU without AMX); explanations, which need the
    # gradients ONNX cannot give, through the same model in torch, loaded now so no request pays for it
    classifier = _in_memory(load(cfg.model, device=device, reading=reading, backend=cfg.backend))
    if cfg.max_explain_texts > 0 and classifier.explains_through_torch:
        _in_memory(classifier.gradients())
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
        self.explainer = Explainer(steps=cfg.explain_steps, max_queue=cfg.max_queue,
                                   on_text=self.metrics.explained_text, on_abandon=self.metrics.abandoned.inc)
        self._reload_lock = threading.Lock()
        self.api_key = cfg.api_key or os.environ.get(API_KEY_ENV) or None
        self.name = shown(cfg.model)

    def info(self) -> dict[str, Any]:
        clf = self.classifier
        return {"model": self.name, "base_model": shown(clf.info.base_model), "backend": clf.backend,
                "backend_requested": clf.requested,
                "labels": clf.label_names, "max_length": clf.max_length, "temperature": clf.temperature,
                "task": clf.task, "text_pairs": clf.pairs,
                **({"thresholds": [float(t) for t in clf.thresholds]} if clf.task == "multi-label" else {}),
                "reading": {"long_texts": self.reading.mode, "truncation": clf.truncation},
                "auth": self.api_key is not None, "limits": {k: getattr(self.cfg, k) for k in LIMITS},
                "explain": {"available": self.cannot_explain() is None, "steps": self.explain_steps,
                            **({"why_not": why} if (why := self.cannot_explain()) else {})}}

    @property
    def explain_steps(self) -> int:
        """The Integrated Gradients steps of one explanation: --explain-steps, or the library's default."""
        return self.cfg.explain_steps or DEFAULT_STEPS

    def cannot_explain(self) -> str | None:
        """Why this server gives no explanations (a 422 to a request that asks), or None."""
        if self.cfg.max_explain_texts == 0:
            return "explanations are off on this server (--max-explain-texts 0)"
        if self.classifier.model is None and not self.classifier.explains_through_torch:
            return (f"this server runs --backend {self.classifier.backend}, which cannot explain: onnxruntime "
                    "gives no gradients; serve the model with --backend torch to get explanations")
        return None

    def check_explain(self, texts: list) -> None:
        """Before any work: a request that asks for explanations this server cannot give, or too many of them."""
        if (why := self.cannot_explain()) is not None:
            raise Refused(422, why)
        if len(texts) > self.cfg.max_explain_texts:
            raise Refused(413, f"{len(texts)} texts to explain in one request, over the limit of "
                               f"{self.cfg.max_explain_texts} (--max-explain-texts); explain fewer, or ask for "
                               "scores alone")

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

    def admit(self, texts: list[str], explain: bool = False) -> Ticket:
        """In a worker thread: the texts' content checked (422), the token budget (413), the budget of their
        explanations if asked (413), then queued: every refusal before any model work."""
        classifier = self.batcher.classifier
        check_texts(texts, classifier.clean)
        refuse_over_budget(classifier, texts, self.cfg.max_request_tokens)
        if explain:
            refuse_explain_over_budget(classifier, texts, self.cfg.max_request_tokens, self.explain_steps)
        return self.batcher.submit(texts)

    async def predict(self, texts: list[str], request=None, explain: bool = False) -> tuple[Any, dict[str, float]]:
        """Probabilities (n, k) for the texts, via the batcher; and the time spent queued and scoring. A
        request whose client hangs up, or that times out, is dropped: the model stops working on it.
        `explain`: the explanations' own budget is checked too (explained() gives them)."""
        try:
            ticket = await run_in_threadpool(self.admit, texts, explain)
        except QueueFull as exc:
            raise Refused(429, f"the server is busy: {exc}; retry shortly", {"Retry-After": "1"}) from None
        except TooLarge as exc:
            raise Refused(413, f"{exc} (--max-request-tokens); send shorter texts, or fewer") from None
        except Closed as exc:
            raise Refused(503, str(exc), {"Connection": "close"}) from None
        scored = await self._answer(ticket, request)
        return scored.probs, {"queue": scored.queue_seconds, "inference": scored.inference_seconds}

    async def explained(self, texts: list, request=None) -> tuple[Any, dict[str, float], list[Any]]:
        """predict(), and each text's Explanation of its top label (the one its answer lists first), made on the
        explainer's thread once the scores say which label that is, all within --timeout. The explanations' place
        in the explainer's queue is taken first, so that a busy explainer refuses (429) before any work."""
        started = time.perf_counter()
        self.check_explain(texts)
        try:
            ticket = self.explainer.reserve()
        except QueueFull as exc:
            raise Refused(429, f"the server is busy: {exc}; retry shortly", {"Retry-After": "1"}) from None
        except Closed as exc:
            raise Refused(503, str(exc), {"Connection": "close"}) from None
        try:
            probs, times = await self.predict(texts, request, explain=True)
            classifier = self.classifier
            names = classifier.label_names
            regression = classifier.task == "regression"  # its one output is explained, as the value it is
            self.explainer.start(ticket, classifier, texts,
                                 [None if regression else names[int(np.argmax(row))] for row in probs])
            self.metrics.explain_queued.set(self.explainer.queued)
            began = time.perf_counter()
            try:
                explanations = await self._answer(ticket, request, self.cfg.timeout - (began - started))
            except UserError as exc:  # what explain refuses of a text is the client's to fix, as a 422
                raise Refused(422, self.public(str(exc))) from None
            return probs, {**times, "explain": time.perf_counter() - began}, explanations
        finally:
            self.explainer.release(ticket)

    def drain(self, seconds: float) -> None:
        """SIGTERM: the batcher's and the explainer's drains start now (deadlines only: a signal handler calls it)."""
        self.batcher.drain(seconds)
        self.explainer.drain(seconds)

    def close(self) -> None:
        """Both workers stopped once what they were given is answered, within one --drain-seconds from now."""
        self.drain(self.cfg.drain_seconds)
        self.batcher.close(self.cfg.drain_seconds)
        self.explainer.close(self.cfg.drain_seconds)

    @property
    def unfinished(self) -> int:
        """Requests answered 503 because the drain time ran out, by either worker."""
        return self.batcher.unfinished + self.explainer.unfinished

    async def _answer(self, ticket: Ticket, request, timeout: float | None = None) -> Any:
        waiter = asyncio.wrap_future(ticket)
        gone = asyncio.ensure_future(_hung_up(request)) if request is not None else None
        timeout = self.cfg.timeout if timeout is None else max(0.001, timeout)
        try:
            done, _ = await asyncio.wait([waiter] if gone is None else [waiter, gone], timeout=timeout,
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
