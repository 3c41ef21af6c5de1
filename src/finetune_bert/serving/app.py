"""`finetune-bert serve`: a fine-tuned model behind HTTP (FastAPI on uvicorn), on the engine `predict` uses.

    POST /predict        {"inputs": "text" | ["text", ...], "parameters": {"top_k": k}}   (HF task schema)
    GET  /health         liveness: the process answers
    GET  /ready          readiness: one real inference went through the queue and the model
    GET  /metrics        Prometheus: request, queue and inference histograms, batch sizes and tokens
    GET  /info           the model: labels, max length, temperature, how long texts are read
    POST /admin/reload   load the model folder again, probe it, swap (behind the API key)
    GET  /               a page to try it

Inference never runs on the event loop: a request is checked and tokenized in the thread pool, queued
for the batcher's worker thread (batcher.py), and awaited. Every limit answers at once with a JSON
`{"error": ...}` naming the limit and the flag that raises it; nothing a client sends is answered with a
traceback. The scores are the saved model's calibrated probabilities, exactly `predict`'s.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import threading
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from finetune_bert.console import console
from finetune_bert.serving.batcher import Batcher, Closed, QueueFull
from finetune_bert.inference.reading import Reading
from finetune_bert.serving.config import ServeConfig
from finetune_bert.inference.heap import steady_heap
from finetune_bert.serving.priority import lowered
from finetune_bert.errors import UserError
from finetune_bert.serving.metrics import ServerMetrics
from finetune_bert.serving.page import PAGE

API_KEY_ENV = "FINETUNE_BERT_API_KEY"
PROBE = "probe"


class _Refused(Exception):
    """A request answered with `status` and a JSON error, before it reaches the model."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _load(cfg: ServeConfig, reading: Reading, device: str | None):
    """The classifier and its probabilities for PROBE (the first inference is slow, allocations: paid now).
    Run below the server's priority (priority.lowered): the inference threads this makes inherit it."""
    from finetune_bert.inference.classifier import load

    classifier = _in_memory(load(cfg.model, device=device, reading=reading, backend=cfg.backend))
    steady_heap(classifier.device)  # a long-lived process: the heap must not creep batch after batch
    return classifier, classifier.predict_proba(PROBE)


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


class Service:
    """What the app serves: the model behind a batcher, the limits, the metrics; reloadable."""

    def __init__(self, cfg: ServeConfig, device: str | None = None):
        self.cfg, self.device = cfg, device
        self.reading = cfg.reading()
        self.metrics = ServerMetrics()
        self.classifier, _ = lowered(_load, cfg, self.reading, device)
        self.batcher = Batcher(self.classifier, max_batch_tokens=cfg.max_batch_tokens, max_wait_ms=cfg.max_wait_ms,
                               max_queue=cfg.max_queue, on_batch=self.metrics.batch)
        self._reload_lock = threading.Lock()
        self.api_key = cfg.api_key or os.environ.get(API_KEY_ENV) or None

    def info(self) -> dict[str, Any]:
        clf = self.classifier
        return {"model": self.cfg.model, "backend": clf.backend, "labels": clf.label_names, "max_length": clf.max_length,
                "temperature": clf.temperature, "reading": {"long_texts": self.reading.mode,
                                                            "truncation": clf.truncation},
                "auth": self.api_key is not None,
                "limits": {k: getattr(self.cfg, k) for k in ("max_batch_tokens", "max_wait_ms", "max_queue",
                                                             "max_client_batch", "max_payload_bytes", "timeout")}}

    def reload(self) -> dict[str, Any]:
        """Load the model folder again and probe it; swap only if both succeed (the old model stays otherwise).
        Requests in flight finish on the model they started with."""
        with self._reload_lock:
            started = time.perf_counter()
            new, probe = lowered(_load, self.cfg, self.reading, self.device)
            if not (probe.sum() > 0.99):
                raise UserError(f"the reloaded model's probe gave {probe.tolist()}, not probabilities; kept the old model")
            self.batcher.swap(new)
            self.classifier = new
            self.metrics.reloads.inc()
            return {"reloaded": True, "model": self.cfg.model, "seconds": round(time.perf_counter() - started, 3)}

    def check_key(self, header: str | None) -> None:
        if self.api_key is None:
            return
        given = (header or "").removeprefix("Bearer ").strip() if (header or "").startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise _Refused(401, "missing or wrong API key: send `Authorization: Bearer KEY`",
                           {"WWW-Authenticate": "Bearer"})

    def parse(self, body: bytes) -> tuple[list[str], bool, int | None]:
        """The texts of a /predict body, whether one string was sent, and top_k; or _Refused (413, 422)."""
        if len(body) > self.cfg.max_payload_bytes:
            raise _Refused(413, f"the request body is {len(body)} bytes, over the limit of {self.cfg.max_payload_bytes}"
                                " (--max-payload-bytes)")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Refused(422, f"the body is not JSON: {exc}") from None
        if not isinstance(payload, dict) or "inputs" not in payload:
            raise _Refused(422, 'expected a JSON object {"inputs": "text" or ["text", ...]}')
        if unknown := sorted(set(payload) - {"inputs", "parameters"}):
            raise _Refused(422, f"unknown field(s) {', '.join(unknown)}; expected inputs and parameters")
        inputs = payload["inputs"]
        single = isinstance(inputs, str)
        texts = [inputs] if single else inputs
        if not isinstance(texts, list) or not texts:
            raise _Refused(422, '"inputs" must be a string or a non-empty list of strings')
        if len(texts) > self.cfg.max_client_batch:
            raise _Refused(413, f"{len(texts)} texts in one request, over the limit of {self.cfg.max_client_batch} "
                                "(--max-client-batch)")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise _Refused(422, f"inputs[{i}] is {type(text).__name__}, not a string")
            if not text.strip():
                raise _Refused(422, f"inputs[{i}] is empty: nothing to classify")
        return texts, single, _top_k(payload.get("parameters"), len(self.classifier.label_names))

    async def predict(self, texts: list[str]) -> tuple[Any, dict[str, float]]:
        """Probabilities (n, k) for the texts, via the batcher; and the time spent queued and scoring."""
        try:
            future = await run_in_threadpool(self.batcher.submit, texts)
        except QueueFull as exc:
            raise _Refused(429, f"the server is busy: {exc}; retry shortly", {"Retry-After": "1"}) from None
        except Closed as exc:
            raise _Refused(503, str(exc), {"Connection": "close"}) from None
        try:
            scored = await asyncio.wait_for(asyncio.wrap_future(future), timeout=self.cfg.timeout)
        except asyncio.TimeoutError:
            future.cancel()
            raise _Refused(503, f"no answer within {self.cfg.timeout:g} s (--timeout); the server is overloaded") from None
        except Closed as exc:
            raise _Refused(503, str(exc)) from None
        return scored.probs, {"queue": scored.queue_seconds, "inference": scored.inference_seconds}


def _top_k(parameters: Any, k: int) -> int | None:
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise _Refused(422, '"parameters" must be an object, e.g. {"top_k": 1}')
    if unknown := sorted(set(parameters) - {"top_k", "function_to_apply"}):
        raise _Refused(422, f"unknown parameter(s) {', '.join(unknown)}; supported: top_k, function_to_apply")
    if parameters.get("function_to_apply", "softmax") != "softmax":
        raise _Refused(422, "function_to_apply: only softmax is served (the calibrated probabilities)")
    top_k = parameters.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise _Refused(422, f"top_k must be a positive integer, got {top_k!r}")
    return None if top_k is None else min(top_k, k)


def _labelled(probs, names: list[str], top_k: int | None) -> list[dict[str, Any]]:
    order = sorted(range(len(names)), key=lambda i: -float(probs[i]))[:top_k]
    return [{"label": names[i], "score": float(probs[i])} for i in order]


def create_app(model_dir: str, *, device: str | None = None, **limits: Any):
    """The ASGI app serving `model_dir`; `limits` are ServeConfig's fields (max_queue=..., api_key=...)."""
    cfg = ServeConfig(model=model_dir, **limits)
    if problems := cfg.problems():
        raise UserError("; ".join(problems))
    return build_app(Service(cfg, device))


def build_app(service: Service) -> FastAPI:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.get_running_loop().run_in_executor(None, service.batcher.close, service.cfg.drain_seconds)

    app = FastAPI(title="finetune-bert", description=f"Text classification with {service.cfg.model}",
                  lifespan=lifespan)
    app.state.service = service
    if service.cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=[o.strip() for o in service.cfg.cors_origins.split(",")],
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])

    _api_routes(app, service)
    _operations_routes(app, service)
    return app


def _refused(service: Service, exc: _Refused, route: str) -> JSONResponse:
    service.metrics.request(route, exc.status, None)
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


def _api_routes(app: FastAPI, service: Service) -> None:
    """/predict, and the page that calls it."""
    @app.post("/predict", summary="Classify one text or a list of texts",
              description='Body: {"inputs": "text" | ["text", ...], "parameters": {"top_k": k}}. Returns '
                          '[{"label", "score"}] highest first for one text, a list of those for a list.')
    async def predict(request: Request):
        started = time.perf_counter()
        try:
            service.check_key(request.headers.get("authorization"))
            body = await _body(request, service.cfg.max_payload_bytes)
            texts, single, top_k = service.parse(body)
            probs, times = await service.predict(texts)
        except _Refused as exc:
            return _refused(service, exc, "/predict")
        names = service.classifier.label_names
        answer = [_labelled(p, names, top_k) for p in probs]
        total = time.perf_counter() - started
        service.metrics.request("/predict", 200, total)
        return JSONResponse(answer[0] if single else answer,
                            headers={"x-total-time": f"{1000 * total:.2f}", "x-queue-time": f"{1000 * times['queue']:.2f}",
                                     "x-inference-time": f"{1000 * times['inference']:.2f}", "x-texts": str(len(texts))})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return PAGE

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():  # browsers ask for it; a 404 would be an error in every visitor's console
        return Response(status_code=204)


def _operations_routes(app: FastAPI, service: Service) -> None:
    """Probes, metrics, the model's description and reload."""
    @app.get("/health", summary="Liveness: the process answers")
    async def health():
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: a real one-text inference through the queue")
    async def ready():
        try:
            probs, _ = await service.predict([PROBE])
        except _Refused as exc:
            return _refused(service, exc, "/ready")
        return {"status": "ready", "model": service.cfg.model, "probe": probs[0].tolist()}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        service.metrics.queued.set(service.batcher.queued)
        return PlainTextResponse(service.metrics.render(), media_type=service.metrics.content_type)

    @app.get("/info", summary="The model and the server's limits")
    async def info():
        return service.info()

    @app.post("/admin/reload", summary="Load the model folder again, probe it, and swap atomically")
    async def reload(request: Request):
        try:
            service.check_key(request.headers.get("authorization"))
            return await run_in_threadpool(service.reload)
        except _Refused as exc:
            return _refused(service, exc, "/admin/reload")
        except Exception as exc:  # a broken new model: refused, the old one keeps serving
            return JSONResponse({"error": f"reload refused, the old model keeps serving: {exc}"}, status_code=422)


async def _body(request, limit: int) -> bytes:
    """The request body, refused as soon as it is known to exceed `limit` (Content-Length, or while read)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _Refused(413, f"the request body is {declared} bytes, over the limit of {limit} (--max-payload-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Refused(413, f"the request body is over the limit of {limit} bytes (--max-payload-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def serve(cfg: ServeConfig) -> int:
    """Run the server until SIGTERM or Ctrl-C: stop accepting, finish what is in flight within
    --drain-seconds, exit 0. SIGHUP reloads the model."""
    import signal

    import uvicorn

    if problems := cfg.problems():
        raise UserError("; ".join(problems))
    service = Service(cfg)
    app = build_app(service)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="info",
                            timeout_graceful_shutdown=max(int(cfg.drain_seconds), 1))
    server = uvicorn.Server(config)

    def on_hup(*_):
        threading.Thread(target=_reload_logged, args=(service,), daemon=True).start()
    signal.signal(signal.SIGHUP, on_hup)
    # uvicorn drains on SIGTERM/SIGINT, then raises the signal again under the handler it found: with
    # these no-op handlers that second delivery is ignored, so a drained server exits 0, as supervisors expect
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda *_: None)
    console.say(f"serving {cfg.model} on http://{cfg.host}:{cfg.port} (labels: {', '.join(service.classifier.label_names)}; "
          f"{'API key required' if service.api_key else 'no API key'})")
    server.run()
    return 0


def _reload_logged(service: Service) -> None:
    try:
        console.say(f"reloaded: {service.reload()}")
    except Exception as exc:
        console.warn(f"reload refused, the old model keeps serving: {exc}")


__all__ = ["create_app", "serve", "Service", "Reading"]
