"""`serve`'s options: the model, how it reads texts, and every limit a client meets."""

from __future__ import annotations

from dataclasses import dataclass
from finetune_bert.options import opt
from finetune_bert.inference.config import ModelReading


@dataclass
class ServeConfig(ModelReading):
    """`serve`: a model behind HTTP, with dynamic batching and a limit on everything a client can send."""

    host: str = opt("127.0.0.1", "Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).")
    port: int = opt(8000, "Port to listen on (0: any free port, printed at start).", at_least=0, at_most=65535)
    max_batch_tokens: int = opt(16384, "Token budget of one engine batch: concurrent requests are grouped up to it.",
                                at_least=1)
    max_wait_ms: float = opt(2.0, "How long the first request of a batch waits for others to join it.", at_least=0)
    max_queue: int = opt(256, "Requests waiting at most; beyond it a request gets 429 with Retry-After.", at_least=1)
    max_client_batch: int = opt(256, "Texts in one request at most (413 beyond); larger ones are cut into several "
                                     "engine batches, not refused.", at_least=1)
    max_payload_bytes: int = opt(2_000_000, "Request body size at most (413 beyond).", at_least=1)
    timeout: float = opt(30.0, "Seconds a request may wait for its answer (503 beyond).", at_least=0.001)
    drain_seconds: float = opt(30.0, "On SIGTERM: seconds to finish requests in flight before exiting.", at_least=0)
    api_key: str | None = opt(None, "Require `Authorization: Bearer KEY` on /predict and /admin/reload (default: "
                                    "the FINETUNE_BERT_API_KEY environment variable, if set).")
    cors_origins: str | None = opt(None, "Comma-separated origins allowed to call the API from a browser (off by "
                                         "default; the server's own page needs none).")
