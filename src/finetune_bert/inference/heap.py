"""The C heap of a long inference: kept from creeping chunk after chunk (glibc's mmap threshold)."""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc mallopt() parameter (malloc.h)


def steady_heap(device) -> None:
    """On CPU with glibc, stop the heap creeping up chunk after chunk of inference (elsewhere a no-op).
    `device`: a torch.device, or anything with its `.type` ("cpu" for onnxruntime).

    glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), so after the first
    batch the model's CPU activations come from the heap; tokenizing the next chunk fills the holes they
    leave, the next activations extend the heap, and peak RSS grows chunk after chunk although nothing is
    kept. A fixed 1 MiB threshold keeps large blocks in mmap, handed back when freed, at the cost of page
    faults. It holds for the rest of the process. Calling `malloc_trim` between chunks instead was measured
    and does not help (the numbers: benchmarks/NOTES.md, "Numbers that left the code").
    """
    if device.type != "cpu":
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass  # not glibc
