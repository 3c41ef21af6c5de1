"""Where a benchmark's markdown block goes: printed, and appended to RESULTS.md when asked."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cpu_hardware() -> str:
    import torch
    return f"CPU, {os.cpu_count()} cores ({platform.machine()}); torch {torch.__version__}"


def publish(text: str, record: bool) -> None:
    print(text)
    if record:
        with RESULTS.open("a") as handle:
            handle.write(text)
