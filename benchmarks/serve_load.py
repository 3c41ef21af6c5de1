"""Load test of `finetune-bert serve` against the server every user writes (issue 19), loopback only.

    python benchmarks/serve_load.py --model runs/calibration-imdb/model          # a trained MiniLM folder

The baseline, in the same run: FastAPI + `transformers.pipeline`, one request at a time (a plain `def`
endpoint behind a lock, as the tutorials write it), same model, same machine. Ours: `finetune-bert serve`
with its defaults. Clients send IMDB test reviews, one per request, from N concurrent connections; every
loop is bounded in requests and in time. Then overload (an open-loop arrival rate of 4x what ours sustained
at 32 clients, with --max-queue 32) and a soak (`--soak` seconds at 32 clients, RSS sampled).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from bench import DATA, hardware, load_reviews, now, publish

BASELINE_APP = textwrap.dedent('''
    import os, threading
    from fastapi import FastAPI
    from pydantic import BaseModel
    from transformers import pipeline
    cut = {"max_length": int(os.environ["BASELINE_MAX_LENGTH"])} if os.environ.get("BASELINE_MAX_LENGTH") else {}
    clf = pipeline("text-classification", model=os.environ["BASELINE_MODEL"], device="cpu", truncation=True, top_k=None,
                   **cut)
    lock = threading.Lock()
    app = FastAPI()
    class Body(BaseModel):
        inputs: str
    @app.post("/predict")
    def predict(body: Body):
        with lock:
            return clf(body.inputs)[0]
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _server(command: list[str], port: int, env: dict | None = None):
    import httpx

    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    deadline = time.time() + 180
    try:
        while time.time() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.post(f"http://127.0.0.1:{port}/predict", json={"inputs": "warm up"}, timeout=5).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {' '.join(command)}")
            time.sleep(0.5)
        yield proc
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()


def _rss_mb(proc) -> float:
    import psutil
    return psutil.Process(proc.pid).memory_info().rss / 2**20


async def _closed_loop(url: str, texts: list[str], clients: int, requests: int, seconds: float, proc) -> dict:
    """`clients` connections each sending the next review as soon as the last is answered."""
    import httpx

    latencies, statuses, peak = [], [], [0.0]
    queue = iter(range(requests))
    stop = time.perf_counter() + seconds

    async def client(http):
        for i in queue:
            if time.perf_counter() > stop:
                return
            started = time.perf_counter()
            try:
                r = await http.post("/predict", json={"inputs": texts[i % len(texts)]})
                statuses.append(r.status_code)
            except httpx.HTTPError:
                statuses.append(0)
            latencies.append(time.perf_counter() - started)

    async def watch():
        while time.perf_counter() < stop and len(statuses) < requests:
            peak[0] = max(peak[0], _rss_mb(proc))
            await asyncio.sleep(0.5)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        started = time.perf_counter()
        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - started
        watcher.cancel()
    ok = [lat for lat, s in zip(latencies, statuses) if s == 200]
    return {"clients": clients, "requests": len(statuses), "rps": len(ok) / elapsed, "errors": len(statuses) - len(ok),
            "p50": 1000 * np.percentile(ok, 50), "p95": 1000 * np.percentile(ok, 95), "p99": 1000 * np.percentile(ok, 99),
            "rss": peak[0]}


async def _open_loop(url: str, texts: list[str], rate: float, seconds: float, proc) -> dict:
    """Requests arriving at `rate` per second whatever the answers: what overload looks like."""
    import httpx

    results: list[tuple[int, float]] = []
    peak = 0.0

    async def one(http, i):
        started = time.perf_counter()
        try:
            status = (await http.post("/predict", json={"inputs": texts[i % len(texts)]})).status_code
        except httpx.HTTPError:
            status = 0
        results.append((status, time.perf_counter() - started))

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=1000)) as http:
        tasks, started = [], time.perf_counter()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(http, i)))
            if i % 20 == 0:
                peak = max(peak, _rss_mb(proc))
        await asyncio.gather(*tasks)
    by = {s: [lat for st, lat in results if st == s] for s in {s for s, _ in results}}
    return {"rate": rate, "sent": len(results), "ok": len(by.get(200, [])), "refused_429": len(by.get(429, [])),
            "other": sum(len(v) for s, v in by.items() if s not in (200, 429)),
            "p99_429_ms": 1000 * np.percentile(by[429], 99) if by.get(429) else None, "rss": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a fine-tuned model folder")
    parser.add_argument("--requests", type=int, default=600, help="requests per concurrency level, at most")
    parser.add_argument("--seconds", type=float, default=60, help="seconds per concurrency level, at most")
    parser.add_argument("--soak", type=float, default=300, help="seconds of the soak at 32 clients (0: none)")
    parser.add_argument("--backend", default="torch", help="ours: serve's --backend (onnx, onnx-int8: the model "
                        "folder needs `finetune-bert export`)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    texts, _ = load_reviews(DATA / "test.csv.gz", 2000, seed=3)
    cli = [sys.executable, "-m", "finetune_bert.cli", "serve", "--model", args.model, "--backend", args.backend]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp) / "baseline_app.py"
        app.write_text(BASELINE_APP)
        # as users write it (the pipeline cuts at the tokenizer's 512), then cut at the model's trained max
        # length, as `--long-texts truncate` cuts: the same work per review as "ours, truncate"
        trained = _trained_max_length(args.model)
        for name, cut, levels in (("baseline", {}, (1, 32)),
                                  (f"baseline, cut at {trained}", {"BASELINE_MAX_LENGTH": str(trained)}, (32,))):
            port = _free_port()
            with _server([sys.executable, "-m", "uvicorn", "--app-dir", tmp, "baseline_app:app", "--port", str(port),
                          "--log-level", "warning"], port, env={"BASELINE_MODEL": args.model, **cut}) as proc:
                for clients in levels:
                    rows.append((name, asyncio.run(_closed_loop(f"http://127.0.0.1:{port}", texts, clients,
                                                                args.requests, args.seconds, proc))))
    # ours as it starts (long reviews read whole, windows of the model's max length), then cutting them as the
    # baseline's pipeline does (truncate): the same work per review as the baseline's, up to the max length
    for name, extra, levels in (("ours", [], (1, 8, 32, 64)), ("ours, truncate", ["--long-texts", "truncate"], (1, 32))):
        port = _free_port()
        with _server(cli + ["--port", str(port), *extra], port) as proc:
            for clients in levels:
                rows.append((name, asyncio.run(_closed_loop(f"http://127.0.0.1:{port}", texts, clients,
                                                            args.requests, args.seconds, proc))))
    sustained = next(r["rps"] for name, r in rows if name == "ours" and r["clients"] == 32)
    port = _free_port()
    with _server(cli + ["--port", str(port), "--max-queue", "32"], port) as proc:
        overload = asyncio.run(_open_loop(f"http://127.0.0.1:{port}", texts, 4 * sustained, 20, proc))
    soak = None
    if args.soak:
        port = _free_port()
        with _server(cli + ["--port", str(port)], port) as proc:
            url = f"http://127.0.0.1:{port}"
            asyncio.run(_closed_loop(url, texts, 32, 10**6, 20, proc))  # warm-up
            warm = _rss_mb(proc)
            run = asyncio.run(_closed_loop(url, texts, 32, 10**7, args.soak, proc))
            soak = (warm, _rss_mb(proc), run)
    publish(_table(args, rows, overload, soak), record=not args.no_record)


def _trained_max_length(model: str) -> int:
    """The max length the model was fine-tuned at (finetune_bert.json), 512 for another folder."""
    import json
    run = Path(model) / "finetune_bert.json"
    return int(json.loads(run.read_text()).get("max_length", 512)) if run.is_file() else 512


def _table(args, rows, overload, soak) -> str:
    base = next(r["rps"] for name, r in rows if name == "baseline" and r["clients"] == 32)
    lines = [f"\n### {now()}: serve under load, {args.model}\n", f"Hardware: {hardware()}.",
             f"Command: `python benchmarks/serve_load.py --model {args.model} --requests {args.requests} "
             f"--seconds {args.seconds:g} --soak {args.soak:g} --backend {args.backend}`\n",
             "| server | clients | requests | reviews/s | vs baseline at 32 | p50 ms | p95 ms | p99 ms | errors | peak RSS MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rows:
        lines.append(f"| {name} | {r['clients']} | {r['requests']} | {r['rps']:.1f} | {r['rps'] / base:.2f}x | "
                     f"{r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | {r['errors']} | {r['rss']:.0f} |")
    o = overload
    lines.append(f"\nOverload (open loop at {o['rate']:.1f} requests/s, 4x ours at 32 clients, --max-queue 32): "
                 f"{o['sent']} sent, {o['ok']} answered 200, {o['refused_429']} refused with 429 "
                 f"(p99 {o['p99_429_ms'] or 0:.0f} ms), {o['other']} other; peak RSS {o['rss']:.0f} MB.")
    if soak:
        warm, end, run = soak
        lines.append(f"\nSoak: {run['requests']} requests at 32 clients, {run['rps']:.1f} reviews/s, {run['errors']} "
                     f"errors; RSS {warm:.0f} MB after warm-up, {end:.0f} MB at the end ({100 * (end / warm - 1):+.1f}%).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
