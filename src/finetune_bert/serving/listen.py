"""Where `serve` listens: the host resolved and the port bound before the model is loaded.

Loading a model takes seconds to minutes; a host that does not resolve or a port in use must be said in one
line before that, not after it as a traceback. The sockets bound here are handed to uvicorn, so the address
printed is the one bound, its real port too (--port 0 picks a free one).
"""

from __future__ import annotations

import errno
import socket

from finetune_bert.errors import UserError

BACKLOG = 2048  # uvicorn's own default


def bind(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address `host` resolves to, at `port` (0: a free port, the same for all); a
    UserError naming --host or --port when that cannot be done."""
    try:
        found = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise UserError(f"--host {host}: does not resolve to an address ({reason})") from None
    bound: list[socket.socket] = []
    addresses = list(dict.fromkeys((family, address) for family, _, _, _, address in found))
    for family, address in addresses:
        try:
            bound.append(_bound(family, address, port if not bound else bound[0].getsockname()[1]))
        except OSError as exc:
            if bound and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                continue  # e.g. localhost's ::1 where IPv6 is off: serve on the addresses that work
            for sock in bound:
                sock.close()
            raise UserError(_why(host, port, exc)) from None
    return bound


def _bound(family: int, address: tuple, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # a restart must not wait for the last run's connections in TIME_WAIT (a port in use is still refused)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address[0], port, *address[2:]))
    except OSError:
        sock.close()
        raise
    return sock


def _why(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (f"--port {port}: already in use on {host}; stop what listens there, or pick another port (--port 0: "
                "any free one)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f"--host {host}: not an address of this machine ({exc.strerror}); 127.0.0.1 is this machine only, "
                "0.0.0.0 every interface")
    if exc.errno == errno.EACCES:
        return f"--port {port}: permission denied ({exc.strerror}); ports below 1024 need root, pick a higher one"
    return f"cannot listen on --host {host} --port {port}: {exc.strerror or exc}"


def listening(sockets: list[socket.socket]) -> None:
    """Accept connections from now on: a client that connects once the start-up line is printed is queued,
    not refused, until the server's loop takes it."""
    for sock in sockets:
        sock.listen(BACKLOG)


def url(host: str, sockets: list[socket.socket]) -> str:
    port = sockets[0].getsockname()[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
