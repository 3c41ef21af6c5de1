"""What a client sends: bodies over the limit still answered, JSON that cannot be read, texts the model cannot
read or that leave it nothing to classify, and the Inference API's extra fields, each a 422 or 413 naming the
problem, never a 500."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from finetune_bert.serving.app import create_app  # noqa: E402
from processes import Served  # noqa: E402


@pytest.fixture(scope="module")
def client(trained):
    with TestClient(create_app(trained.output, device="cpu")) as c:
        yield c


def _post(client, body: bytes):
    return client.post("/predict", content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize("body", [
    b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b"[" * 100_000,
    b'{"inputs": "good", "options": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}",
])
def test_json_nested_too_deeply_is_422_naming_it(client, body):
    r = _post(client, body)
    assert r.status_code == 422 and "nested too deeply" in r.json()["error"]


@pytest.mark.parametrize("body, item", [
    (b'{"inputs": "\\ud83d"}', "inputs[0]"),
    (b'{"inputs": ["a fine film", "and then \\udc00 it ended"]}', "inputs[1]"),
    (b'{"inputs": "\\ude00\\ud83d the wrong way round"}', "inputs[0]"),
])
def test_a_lone_surrogate_escape_is_422_naming_the_item(client, body, item):
    r = _post(client, body)
    assert r.status_code == 422, r.text
    assert item in r.json()["error"] and "surrogate" in r.json()["error"]


def test_a_lone_surrogate_where_the_error_quotes_it_is_still_a_json_422(client):
    r = _post(client, b'{"inputs": "good", "parameters": {"top_k": "\\ud83d"}}')
    assert r.status_code == 422 and "top_k must be a positive integer" in r.json()["error"]


EMPTY_ONCE_CLEANED = ["<br /><br />", "\u200b\u200b", " \n\t ", "<br/>&nbsp;<br />", "&#8203;", "\u2060\ufeff"]


@pytest.mark.parametrize("text", EMPTY_ONCE_CLEANED)
def test_texts_with_nothing_to_classify_are_422_naming_the_item_as_predict_refuses_them(client, trained, text, capsys):
    from finetune_bert.cli.main import main

    r = client.post("/predict", json={"inputs": ["a good film", "a dull one", text]})
    assert r.status_code == 422 and "inputs[2]" in r.json()["error"] and "nothing to classify" in r.json()["error"]
    alone = client.post("/predict", json={"inputs": text})
    assert alone.status_code == 422 and "inputs[0]" in alone.json()["error"]
    assert main(["predict", "--model", trained.output, text]) == 2  # predict refuses the same text
    assert "nothing to classify" in capsys.readouterr().err


def test_a_model_that_does_not_clean_reads_br_tags_as_text(trained, tmp_path):
    folder = tmp_path / "raw"
    shutil.copytree(trained.output, folder)
    info = json.loads((folder / "finetune_bert.json").read_text())
    (folder / "finetune_bert.json").write_text(json.dumps({**info, "clean": False}))
    with TestClient(create_app(str(folder), device="cpu")) as c:
        assert c.post("/predict", json={"inputs": "<br /><br />"}).status_code == 200
        assert c.post("/predict", json={"inputs": "\u200b"}).status_code == 422


def test_the_inference_apis_options_and_unused_parameters_are_accepted_and_ignored(client):
    plain = client.post("/predict", json={"inputs": "a good film", "parameters": {"top_k": 1}})
    r = client.post("/predict", json={"inputs": "a good film", "options": {"wait_for_model": True, "use_cache": False},
                                      "parameters": {"top_k": 1, "truncation": True, "max_length": 512}})
    assert r.status_code == 200 and r.json() == plain.json() and len(r.json()) == 1
    assert r.headers["x-ignored-fields"] == "options, parameters.max_length, parameters.truncation"
    assert "x-ignored-fields" not in plain.headers
    odd = client.post("/predict", json={"inputs": ["good"], "options": None, "\u00e9t\u00e9\r\n": 1})
    assert odd.status_code == 200 and odd.headers["x-ignored-fields"] == "options, \\u00e9t\\u00e9\\r\\n"


def test_parameters_the_api_uses_are_still_checked(client):
    assert client.post("/predict", json={"inputs": "a", "parameters": {"top_k": 0, "wait": 1}}).status_code == 422
    assert client.post("/predict", json={"inputs": "a", "parameters": "top_k=1"}).status_code == 422


@pytest.fixture(scope="module")
def served(trained):
    server = Served(trained.output, "--max-payload-bytes", "100000")
    yield server
    server.stop()


def test_a_body_over_the_payload_limit_reaches_urllib_as_a_413(served):
    """urllib sends its whole body before it reads the answer: the server reads and discards the rest of the
    body before it answers, so the 413 arrives instead of "connection reset"."""
    body = json.dumps({"inputs": "good " * 6_000_000}).encode()  # 30 MB
    for data, headers in ((body, {}), (iter([body[i:i + 2**20] for i in range(0, len(body), 2**20)]),
                                       {"Transfer-Encoding": "chunked"})):
        request = urllib.request.Request(f"{served.url}/predict", data=data, method="POST",
                                         headers={"Content-Type": "application/json", **headers})
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=60)
        assert answer.value.code == 413 and "--max-payload-bytes" in json.loads(answer.value.read())["error"]
    with urllib.request.urlopen(f"{served.url}/ready", timeout=10) as ready:  # and the server goes on
        assert ready.status == 200
