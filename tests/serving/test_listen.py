"""serve's start-up: the host and the port checked before the model is loaded, and the start-up line said once
the port is bound, naming the port bound (--port 0 too)."""

from __future__ import annotations

import socket


from finetune_bert.serving import listen
from processes import Served


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_host_that_does_not_resolve_is_one_line_before_the_model_is_loaded(tmp_path, capsys):
    from finetune_bert.cli.main import main

    # a model that is not there: had it been loaded first, the error would be about --model
    assert main(["serve", "--model", str(tmp_path / "missing"), "--host", "no-such-host.invalid"]) == 2
    err = _one_line(capsys)
    assert "--host no-such-host.invalid" in err and "--model" not in err


def test_a_port_in_use_is_one_line_before_the_model_is_loaded(tmp_path, capsys):
    from finetune_bert.cli.main import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(tmp_path / "missing"), "--port", str(port)]) == 2
    err = _one_line(capsys)
    assert f"--port {port}: already in use" in err and "--model" not in err


def test_every_address_of_a_host_is_bound_at_one_port():
    sockets = listen.bind("localhost", 0)
    try:
        ports = {s.getsockname()[1] for s in sockets}
        assert len(ports) == 1 and 0 not in ports
        assert listen.url("localhost", sockets) == f"http://localhost:{ports.pop()}"
    finally:
        for s in sockets:
            s.close()


def test_port_0_is_said_as_the_port_bound_once_it_takes_connections(trained):
    import httpx

    server = Served(trained.output)  # --port 0
    try:
        port = int(server.match["port"])
        assert port != 0 and server.match["model"] == trained.output  # the log keeps the path
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        assert sum(line.startswith("serving ") for line in server.lines) == 1
    finally:
        server.stop()
