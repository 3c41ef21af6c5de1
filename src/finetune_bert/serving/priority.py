"""The model's threads below the server's own: the event loop and the threads that check, refuse and answer
requests must get a core at once, even while inference keeps every core busy.

Under an overload on 2 cores (an open loop at 4x the sustained rate, onnx-int8), onnxruntime's two threads
left the event loop so little CPU that the 429 refusals took 10.9 s at p99; with one inference thread they
took 58 ms, at half the throughput. Lowering the inference threads' priority (nice +10, which any process
may do to its own threads) keeps both: they still take every idle cycle. Linux only, where a nice value
belongs to a thread and the threads a thread creates inherit it; elsewhere nothing changes.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable

BACKGROUND_NICE = 10


def lower_this_thread(by: int = BACKGROUND_NICE) -> bool:
    """Raise this thread's nice value by `by` (at most 19); False where that cannot be done."""
    if sys.platform != "linux":
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
        return True
    except (OSError, AttributeError):
        return False


def lowered(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), run in a thread of lowered priority and waited for: the threads it creates (onnxruntime's
    pool when a session is made, OpenMP's team at the first parallel op) inherit that priority."""
    result: dict[str, Any] = {}

    def run() -> None:
        lower_this_thread()
        try:
            result["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    worker = threading.Thread(target=run, name="finetune-bert-load")
    worker.start()
    worker.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
