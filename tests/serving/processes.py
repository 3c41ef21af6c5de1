"""Real servers for the serving tests: the app in uvicorn on a thread (`live`), or the `serve` command in its
own process (`Served`), started with --port 0 and found by the port its start-up line names."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

LINE = re.compile(r"^serving (?P<model>.+) on (?P<url>http://\S+:(?P<port>\d+)) \(")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live(app):
    """The app on 127.0.0.1 at a free port, in a thread: real sockets, real concurrency."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


class Served:
    """`python -m finetune_bert.cli serve --model MODEL --port 0 ARGS...` in a process of its own; `url` is
    read from its start-up line. Every line it says (stdout and stderr) is kept in `lines`."""

    def __init__(self, model: str, *args: str, env: dict[str, str] | None = None, wait: float = 90):
        self.proc = subprocess.Popen([sys.executable, "-m", "finetune_bert.cli", "serve", "--model", model,
                                      "--port", "0", *args], env={**os.environ, **(env or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._started = threading.Event()
        self.match: re.Match | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._started.wait(wait) or self.match is None:
            self.stop()
            raise AssertionError("the server did not start:\n" + self.output)
        self.url = self.match["url"]

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if self.match is None and (found := LINE.match(line)):
                self.match = found
                self._started.set()
        self._started.set()  # the process ended

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)  # every line it said, up to its end
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
