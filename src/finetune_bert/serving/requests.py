"""What a client sends to /predict, read and checked before any of it reaches the model.

The body is read up to --max-payload-bytes; past it the rest is read and thrown away (up to a bound) before the
413 is sent, as nginx's lingering close does: a client that sends its whole body before it reads the answer
(Python's urllib, most scripts) would otherwise get "connection reset" instead of the 413. The JSON is the Hugging
Face task schema, {"inputs": ..., "parameters": {...}, "options": {...}}: fields and parameters this server
has no use for are accepted and ignored, as the hosted Inference API does (its clients send `options`);
`parameters.explain`, this server's own, must be a JSON boolean. Every
problem is one JSON error naming it (`Refused`), never a traceback or a 500: JSON nested too deeply, a lone
surrogate escape ("\\ud83d", half of a UTF-16 pair) in a text, a text with nothing to classify once cleaned.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from finetune_bert.data.rows import clean_text, visible

# A body over the payload limit is read and discarded up to this many bytes and seconds before the 413.
LINGER_BYTES = 128 * 2**20
LINGER_SECONDS = 10.0
# The parameters of the task schema this server acts on; the others are ignored.
USED_PARAMETERS = ("top_k", "function_to_apply", "explain")


class Refused(Exception):
    """A request answered with `status` and a JSON error, before it reaches the model."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass(frozen=True)
class Parsed:
    """A /predict body: its texts, whether one string was sent, top_k, the fields that were ignored, and whether
    each answer is to carry the explanation of its top label."""

    texts: list[str]
    single: bool
    top_k: int | None
    ignored: tuple[str, ...] = ()
    explain: bool = False


async def read_body(request, limit: int) -> bytes:
    """The request body; a Refused 413 once it is known to exceed `limit` (Content-Length, or while read)."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        if "100-continue" not in request.headers.get("expect", "").lower():  # else nothing was sent yet
            await _discard(request.stream())
        raise _too_large(f"the request body is {declared} bytes, over the limit of {limit}")
    chunks, size = [], 0
    stream = request.stream()
    try:
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                await _discard(stream)
                raise _too_large(f"the request body is over the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise Refused(499, "the client closed the connection before its body was read") from None
    return b"".join(chunks)


def _too_large(message: str) -> Refused:
    return Refused(413, f"{message} (--max-payload-bytes)", {"Connection": "close"})


async def _discard(stream) -> None:
    """Read what is left of a body and throw it away, up to LINGER_BYTES and LINGER_SECONDS."""
    from starlette.requests import ClientDisconnect

    read, until = 0, time.monotonic() + LINGER_SECONDS
    try:
        async for chunk in stream:
            read += len(chunk)
            if read > LINGER_BYTES or time.monotonic() > until:
                return
    except ClientDisconnect:
        return


def parse(body: bytes, max_client_batch: int, labels: int, *, pairs: bool = False,
          function: str = "softmax") -> Parsed:
    """The texts of a /predict body, their kinds checked (not their content: check_texts); or Refused. A pair
    model's inputs are {"text": ..., "text_pair": ...} objects, kept as (text, text_pair) tuples. `function`:
    what the model's kind applies to its logits (softmax, sigmoid, none), the one function_to_apply served."""
    try:
        payload = json.loads(body)
    except RecursionError:
        raise Refused(422, 'the body is JSON nested too deeply to read; expected {"inputs": "text" or '
                           '["text", ...]}') from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(422, f"the body is not JSON: {exc}") from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise Refused(422, 'expected a JSON object {"inputs": "text" or ["text", ...]}')
    inputs = payload["inputs"]
    single = isinstance(inputs, str) or pairs and isinstance(inputs, dict)
    texts = [inputs] if single else inputs
    if not isinstance(texts, list) or not texts:
        raise Refused(422, '"inputs" must be a string or a non-empty list of strings')
    if len(texts) > max_client_batch:
        raise Refused(413, f"{len(texts)} texts in one request, over the limit of {max_client_batch} "
                           "(--max-client-batch)")
    texts = [_input(text, i, pairs) for i, text in enumerate(texts)]
    top_k, unused = _parameters(payload.get("parameters"), labels, function)
    ignored = tuple(sorted(k for k in payload if k not in ("inputs", "parameters"))) + unused
    return Parsed(texts, single, top_k, ignored, _explain(payload.get("parameters")))


def _input(item: Any, i: int, pairs: bool) -> str | tuple[str, str]:
    """One input as the model reads it: a string, or a pair model's (text, text_pair)."""
    if not pairs:
        if not isinstance(item, str):
            raise Refused(422, f"inputs[{i}] is {type(item).__name__}, not a string")
        return item
    if not (isinstance(item, dict) and set(item) == {"text", "text_pair"}
            and all(isinstance(v, str) for v in item.values())):
        raise Refused(422, f'inputs[{i}]: this model reads text pairs; send {{"text": "...", "text_pair": "..."}}')
    return item["text"], item["text_pair"]


def _parameters(parameters: Any, k: int, function: str = "softmax") -> tuple[int | None, tuple[str, ...]]:
    """top_k (at most k) and the parameters ignored."""
    if parameters is None:
        return None, ()
    if not isinstance(parameters, dict):
        raise Refused(422, '"parameters" must be an object, e.g. {"top_k": 1}')
    if parameters.get("function_to_apply", function) != function:
        raise Refused(422, f"function_to_apply: only {function} is served (what this model's outputs mean)")
    top_k = parameters.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise Refused(422, f"top_k must be a positive integer, got {_shown(top_k)}")
    unused = tuple(sorted(f"parameters.{key}" for key in parameters if key not in USED_PARAMETERS))
    return (None if top_k is None else min(top_k, k)), unused


def _explain(parameters: Any) -> bool:
    """parameters.explain: a JSON boolean only (a string "false" would read as true in most languages)."""
    explain = parameters.get("explain", False) if isinstance(parameters, dict) else False
    if not isinstance(explain, bool):
        raise Refused(422, f"explain must be true or false, got {_shown(explain)}")
    return explain


def check_texts(texts: list[Any], cleans: bool) -> None:
    """Refused (422) for the first text the model cannot read or that leaves it nothing to classify, as
    `predict` refuses it: a lone surrogate, only spaces or invisible characters, nothing left once cleaned.
    A pair's two texts are checked each."""
    named = [(f"inputs[{i}]" + (f".{part}" if isinstance(item, tuple) else ""), text)
             for i, item in enumerate(texts)
             for part, text in (zip(("text", "text_pair"), item) if isinstance(item, tuple) else [("", item)])]
    for i, text in named:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise Refused(422, f"{i} holds a lone surrogate escape (\\u{ord(text[exc.start]):04x} at "
                               f"character {exc.start}): half of a UTF-16 pair is not a character; send the whole "
                               "pair, or the character itself") from None
        if not text.strip():
            raise Refused(422, f"{i} is empty: nothing to classify")
        if not visible(text):
            raise Refused(422, f"{i} has no visible characters (only spaces or invisible ones, such as "
                               "zero-width spaces): nothing to classify")
        if cleans and not visible(clean_text(text)):
            raise Refused(422, f"{i} is empty once cleaned ('<br />' tags and HTML entities removed, as the "
                               "model was trained): nothing to classify")


def ignored_header(ignored: tuple[str, ...]) -> dict[str, str]:
    """`x-ignored-fields: options, parameters.wait`: the names as JSON escapes them (a header is ASCII)."""
    if not ignored:
        return {}
    return {"x-ignored-fields": ", ".join(json.dumps(name)[1:-1] for name in ignored)[:300]}


def _shown(value: Any) -> str:
    """A value of the client's in an error, short and ASCII (a lone surrogate cannot be sent as UTF-8)."""
    text = ascii(value)
    return text if len(text) <= 40 else text[:37] + "..."
