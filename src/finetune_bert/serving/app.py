"""`finetune-bert serve`: a fine-tuned model behind HTTP (FastAPI on uvicorn), on the engine `predict` uses.

    POST /predict        {"inputs": "text" | ["text", ...], "parameters": {"top_k": k, "explain": true}}  (HF schema)
    GET  /health         liveness: the process answers
    GET  /ready          readiness: a request would be taken now (also while others are being scored)
    GET  /metrics        Prometheus: request, queue and inference histograms, batch sizes and tokens, explanations
    GET  /info           the model: its name, base model, labels, max length, temperature, how long texts are read
    POST /admin/reload   load the model folder again, probe it, swap (behind the API key)
    GET  /               a page to try it

Inference never runs on the event loop: a request is checked and tokenized in the thread pool, queued
for the batcher's worker thread (batcher.py), and awaited; explanations, asked for with the scores, on a
thread of their own (explainer.py), so that they never hold plain predictions up. Every limit answers at once with a JSON
`{"error": ...}` naming the limit and the flag that raises it; nothing a client sends is answered with a
traceback or a 500. The scores are the saved model's calibrated probabilities, exactly `predict`'s.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from finetune_bert.console import console
from finetune_bert.errors import refuse
from finetune_bert.inference.reading import Reading
from finetune_bert.serving import listen
from finetune_bert.serving.config import ServeConfig
from finetune_bert.serving.page import PAGE
from finetune_bert.tasks import CLASSIFICATION, MULTI_LABEL, REGRESSION
from finetune_bert.serving.requests import Refused, ignored_header, parse, read_body
from finetune_bert.serving.service import Service

# How long past --drain-seconds uvicorn waits for the answers the drain gave before it cancels their tasks:
# the batcher answers every request by the drain's deadline, once the slice it is in ends.
ANSWER_GRACE_SECONDS = 10


class _Error(JSONResponse):
    """A JSON error, ASCII-escaped: a message may quote what a client sent, a lone surrogate included, which
    cannot be encoded as UTF-8."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def create_app(model_dir: str, *, device: str | None = None, **limits: Any):
    """The ASGI app serving `model_dir`; `limits` are ServeConfig's fields (max_queue=..., api_key=...)."""
    cfg = ServeConfig(model=model_dir, **limits)
    refuse(cfg.problems())
    return build_app(Service(cfg, device))


def build_app(service: Service) -> FastAPI:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.get_running_loop().run_in_executor(None, service.close)

    app = FastAPI(title="finetune-bert", description=f"Text classification with {service.name}", lifespan=lifespan)
    app.state.service = service
    if service.cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=[o.strip() for o in service.cfg.cors_origins.split(",")],
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])

    _api_routes(app, service)
    _operations_routes(app, service)
    return app


def _refused(service: Service, exc: Refused, route: str) -> JSONResponse:
    service.metrics.request(route, exc.status, None)
    return _Error({"error": exc.message}, status_code=exc.status, headers=exc.headers)


def _api_routes(app: FastAPI, service: Service) -> None:
    """/predict, and the page that calls it."""
    @app.post("/predict", summary="Classify one text or a list of texts",
              description='Body: {"inputs": "text" | ["text", ...], "parameters": {"top_k": k, "explain": false}}. '
                          'Returns [{"label", "score"}] highest first for one text, a list of those for a list; '
                          'with "explain": true the first entry also holds "explanation": the words of the text '
                          'with their weights toward that label. Other fields (the Inference API\'s "options") '
                          'and parameters are accepted and ignored.')
    async def predict(request: Request):
        started = time.perf_counter()
        try:
            service.check_key(request.headers.get("authorization"))
            body = await read_body(request, service.cfg.max_payload_bytes)
            clf = service.classifier
            parsed = parse(body, service.cfg.max_client_batch, len(clf.label_names), pairs=clf.pairs,
                           function=FUNCTIONS[clf.task])
            if parsed.explain:
                probs, times, explanations = await service.explained(parsed.texts, request)
            else:
                (probs, times), explanations = await service.predict(parsed.texts, request), None
        except Refused as exc:
            return _refused(service, exc, "/predict")
        answer = [_labelled(p, service.classifier, parsed.top_k) for p in probs]
        for scores, explanation in zip(answer, explanations or ()):
            scores[0]["explanation"] = explanation.to_json()  # the label explained is the one listed first
        total = time.perf_counter() - started
        service.metrics.request("/predict", 200, total)
        headers = {"x-total-time": f"{1000 * total:.2f}", "x-queue-time": f"{1000 * times['queue']:.2f}",
                   "x-inference-time": f"{1000 * times['inference']:.2f}", "x-texts": str(len(parsed.texts)),
                   **({"x-explain-time": f"{1000 * times['explain']:.2f}"} if "explain" in times else {})}
        headers.update(ignored_header(parsed.ignored))
        return JSONResponse(answer[0] if parsed.single else answer, headers=headers)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return PAGE

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():  # browsers ask for it; a 404 would be an error in every visitor's console
        return Response(status_code=204)


# What the pipeline applies to the logits for each kind, the function_to_apply a client may name.
FUNCTIONS = {CLASSIFICATION: "softmax", MULTI_LABEL: "sigmoid", REGRESSION: "none"}


def _labelled(scores, clf, top_k: int | None) -> list[dict[str, Any]]:
    """One text's answer in the Hugging Face pipeline's form, highest score first: every class with its
    probability; every label with its own sigmoid probability (they do not sum to 1) and whether it reaches
    its threshold; or, for regression, {"label": the target's name, "score": the value}."""
    names = clf.label_names
    if clf.task == REGRESSION:
        return [{"label": names[0], "score": float(scores[0])}]
    order = sorted(range(len(names)), key=lambda i: -float(scores[i]))[:top_k]
    if clf.task == MULTI_LABEL:
        return [{"label": names[i], "score": float(scores[i]), "above_threshold": bool(scores[i] >= clf.thresholds[i])}
                for i in order]
    return [{"label": names[i], "score": float(scores[i])} for i in order]


def _operations_routes(app: FastAPI, service: Service) -> None:
    """Probes, metrics, the model's description and reload."""
    @app.get("/health", summary="Liveness: the process answers")
    async def health():
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: a request would be taken now (503 while shutting down or the queue is full)")
    async def ready():
        if (why := service.unready()) is not None:
            return _refused(service, Refused(503, why), "/ready")
        return {"status": "ready", "model": service.name, "queued": service.batcher.queued,
                "busy": service.batcher.busy, "probe": service.probe}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        service.metrics.queued.set(service.batcher.queued)
        service.metrics.explain_queued.set(service.explainer.queued)
        return PlainTextResponse(service.metrics.render(), media_type=service.metrics.content_type)

    @app.get("/info", summary="The model and the server's limits")
    async def info():
        return service.info()

    @app.post("/admin/reload", summary="Load the model folder again, probe it, and swap atomically")
    async def reload(request: Request):
        try:
            service.check_key(request.headers.get("authorization"))
            return await run_in_threadpool(service.reload)
        except Refused as exc:
            return _refused(service, exc, "/admin/reload")
        except Exception as exc:  # a broken new model: refused, the old one keeps serving
            console.warn(f"reload refused, the old model keeps serving: {exc}")  # the log keeps the paths
            return _Error({"error": service.public(f"reload refused, the old model keeps serving: {exc}")},
                          status_code=422)


def _server(config, service: Service, drain_seconds: float):
    """uvicorn's server, told of SIGTERM and Ctrl-C as they come: the batcher's drain starts then, so that its
    deadline is --drain-seconds after the signal, whatever uvicorn waits for first."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            service.drain(drain_seconds)  # sets deadlines only: safe in a signal handler
            super().handle_exit(sig, frame)

    return Server(config)


def serve(cfg: ServeConfig) -> int:
    """Run the server until SIGTERM or Ctrl-C: stop accepting, finish what is in flight within
    --drain-seconds, exit 0; what is still unfinished then is answered 503, and the exit code is 1. SIGHUP
    reloads the model. The host and the port are checked before the model is loaded."""
    import uvicorn

    refuse(cfg.problems())
    sockets = listen.bind(cfg.host, cfg.port)
    try:
        service = Service(cfg)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    config = uvicorn.Config(build_app(service), log_level="info",
                            timeout_graceful_shutdown=int(cfg.drain_seconds) + ANSWER_GRACE_SECONDS)
    server = _server(config, service, cfg.drain_seconds)

    def on_hup(*_):
        threading.Thread(target=_reload_logged, args=(service,), daemon=True).start()
    signal.signal(signal.SIGHUP, on_hup)
    # uvicorn drains on SIGTERM/SIGINT, then raises the signal again under the handler it found: with
    # these no-op handlers that second delivery is ignored, so a drained server exits 0, as supervisors expect
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda *_: None)
    listen.listening(sockets)
    key = "API key required" if service.api_key else "no API key"
    console.say(f"serving {cfg.model} on {listen.url(cfg.host, sockets)} (labels: "
                f"{', '.join(service.classifier.label_names)}; {key})")
    server.run(sockets=sockets)
    return _stopped(service)


def _stopped(service: Service) -> int:
    """The exit code, once uvicorn has stopped: 0 if the drain answered every request, else 1 and one line."""
    code = 0
    if service.unfinished:
        console.error(f"{service.unfinished} request(s) were still unfinished after --drain-seconds "
                      f"{service.cfg.drain_seconds:g}; they were answered 503")
        code = 1
    if service.batcher.alive or service.explainer.alive:
        # the model's thread is still inside an engine call: finalizing the interpreter under it can abort the
        # process (SIGABRT from a native library), so it ends here, its line said
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _reload_logged(service: Service) -> None:
    try:
        console.say(f"reloaded: {service.reload()}")
    except Exception as exc:
        console.warn(f"reload refused, the old model keeps serving: {exc}")


__all__ = ["create_app", "serve", "Service", "Reading"]
