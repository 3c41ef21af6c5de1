"""`serve`'s options: the model, how it reads texts, and every limit a client meets."""

from __future__ import annotations

from dataclasses import dataclass
from finetune_bert.options import opt
from finetune_bert.inference.config import ModelReading


@dataclass
class ServeConfig(ModelReading):
    """`serve`: a model behind HTTP, with dynamic batching and a limit on everything a client can send."""

    host: str = opt("127.0.0.1", "Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).")
    port: int = opt(8000, "Port to listen on (0: any free port; the start-up line names the one bound).", at_least=0,
                    at_most=65535)
    max_batch_tokens: int = opt(16384, "Token budget of one engine batch: concurrent requests are grouped up to it.",
                                at_least=1)
    max_wait_ms: float = opt(2.0, "How long the first request of a batch waits for others to join it.", at_least=0)
    max_queue: int = opt(256, "Requests waiting at most; beyond it a request gets 429 with Retry-After.", at_least=1)
    max_client_batch: int = opt(256, "Texts in one request at most (413 beyond); larger ones are cut into several "
                                     "engine batches, not refused.", at_least=1)
    max_payload_bytes: int = opt(2_000_000, "Request body size at most (413 beyond; the rest of a larger body is "
                                            "read and discarded first, so that every client sees the 413).", at_least=1)
    max_request_tokens: int = opt(131072, "Tokens the model may read for one request, at most (413 at once beyond): "
                                          "its texts as cut, or every window of them, overlaps included, when long "
                                          "texts are read whole. A payload within --max-payload-bytes can still be "
                                          "minutes of work (2 MB of text is about half a million tokens); 131072 is "
                                          "a full client batch (--max-client-batch 256) of 512-token texts.",
                                  at_least=1)
    max_explain_texts: int = opt(8, 'Texts one request may ask explained ("parameters": {"explain": true}), at most '
                                    "(413 beyond; 0 turns explanations off). An explanation is Integrated Gradients: "
                                    "--explain-steps forward and backward passes of its text, about 100 times the "
                                    "work of scoring it at 32 steps; so an explained text's tokens also count that many times "
                                    "against --max-request-tokens, and explanations run one at a time on a thread "
                                    "of their own, beside the batcher, never ahead of plain predictions.",
                                 at_least=0)
    explain_steps: int | None = opt(None, "Integrated Gradients steps of one explanation (default: the library's, "
                                          "as `predict --explain` uses); more is more exact and slower, in "
                                          "proportion.", at_least=2)
    timeout: float = opt(30.0, "Seconds a request may wait for its answer (503 beyond; the model stops working on "
                               "it).", at_least=0.001)
    drain_seconds: float = opt(30.0, "On SIGTERM: seconds to finish requests in flight; then the rest are answered "
                                     "503 and the server exits with 1.", at_least=0)
    api_key: str | None = opt(None, "Require `Authorization: Bearer KEY` on /predict and /admin/reload (default: "
                                    "the FINETUNE_BERT_API_KEY environment variable, if set).")
    cors_origins: str | None = opt(None, "Comma-separated origins allowed to call the API from a browser (off by "
                                         "default; the server's own page needs none).")
