"""The server's Prometheus metrics: histograms, not gauges, so p50/p99 can be read from them.

Each app has its own registry, so several apps in one process (tests, an embedding ASGI app) never share
or clash on a metric name.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKENS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("finetune_bert_requests", "Requests answered, by route and HTTP status.",
                                ["route", "status"], registry=r)
        self.latency = Histogram("finetune_bert_request_seconds", "Time from receiving a request to answering it "
                                 "(successful /predict requests).", buckets=SECONDS, registry=r)
        self.queue_wait = Histogram("finetune_bert_queue_seconds", "Time a request waited before its batch started.",
                                    buckets=SECONDS, registry=r)
        self.inference = Histogram("finetune_bert_inference_seconds", "Time to score one batch (an engine slice).",
                                   buckets=SECONDS, registry=r)
        self.batch_texts = Histogram("finetune_bert_batch_texts", "Texts per batch (windows, for texts read whole).",
                                     buckets=SIZES, registry=r)
        self.batch_tokens = Histogram("finetune_bert_batch_tokens", "Tokens per batch.", buckets=TOKENS, registry=r)
        self.queued = Gauge("finetune_bert_queue_requests", "Requests waiting for a batch.", registry=r)
        self.reloads = Counter("finetune_bert_reloads", "Successful model reloads.", registry=r)
        self.abandoned = Counter("finetune_bert_abandoned_requests", "Requests dropped before their last batch "
                                 "because their client stopped waiting (timed out or hung up).", registry=r)
        self.explained = Counter("finetune_bert_explained_texts", "Texts explained (\"explain\": true), each "
                                 "about --explain-steps forward and backward passes.", registry=r)
        self.explain_seconds = Histogram("finetune_bert_explain_seconds", "Time to explain one text.",
                                         buckets=SECONDS, registry=r)
        self.explain_queued = Gauge("finetune_bert_explain_queue_requests", "Requests waiting for their "
                                    "explanations.", registry=r)

    def request(self, route: str, status: int, seconds: float | None) -> None:
        self.requests.labels(route, str(status)).inc()
        if seconds is not None:
            self.latency.observe(seconds)

    def batch(self, record) -> None:
        """One engine slice of the batcher (batcher.BatchRecord)."""
        for wait in record.waits:
            self.queue_wait.observe(wait)
        self.inference.observe(record.seconds)
        self.batch_texts.observe(record.texts)
        self.batch_tokens.observe(record.tokens)

    def explained_text(self, seconds: float) -> None:
        self.explained.inc()
        self.explain_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
