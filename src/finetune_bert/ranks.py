"""Which process this is under a launcher (torchrun's environment variables), read without importing torch.

The command line asks this of every process, before and after the work; the prediction path must not pay
torch's import (1-2 s) to learn that it runs alone.
"""

from __future__ import annotations

import os


def launched() -> bool:
    """Under torchrun (or any launcher that sets WORLD_SIZE) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def follower() -> bool:
    """A process of rank > 0 under a launcher: it says nothing, and writes nothing to the output folder."""
    return launched() and int(os.environ.get("RANK", "0") or 0) > 0


def rank() -> int:
    """This process's rank under a launcher (0 when alone)."""
    return int(os.environ.get("RANK", "0") or 0)
