"""The batcher: a long request scored in slices, dropped once its client stops waiting, while short requests
and /ready are answered beside it."""

from __future__ import annotations

import concurrent.futures
import time

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from finetune_bert.serving.app import create_app  # noqa: E402
from processes import live  # noqa: E402

LONG = " ".join(["the plot was long and the music superb"] * 40)  # 320 tokens: 21 windows of the 32-token model


class _Slow:
    """Each engine slice takes `seconds` longer; counts the slices."""

    def __init__(self, service, seconds: float):
        self.logits_of, self.seconds, self.calls = service.classifier.logits_of, seconds, 0
        service.classifier.logits_of = self

    def __call__(self, prepared, *args):
        self.calls += 1
        time.sleep(self.seconds)
        return self.logits_of(prepared, *args)


def _metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def _settles(slow: _Slow, within: float = 3.0) -> int:
    """The slice count once it stops moving; fails the test if it keeps moving."""
    deadline = time.time() + within
    last = slow.calls
    while time.time() < deadline:
        time.sleep(slow.seconds * 3)
        if slow.calls == last:
            return last
        last = slow.calls
    raise AssertionError(f"the model kept working: {slow.calls} slices")


def test_a_timed_out_request_is_dropped_between_slices_and_the_next_is_answered_at_once(trained):
    app = create_app(trained.output, device="cpu", max_batch_tokens=64, timeout=0.5)
    slow = _Slow(app.state.service, 0.2)
    with TestClient(app) as c:
        started = time.time()
        r = c.post("/predict", json={"inputs": LONG})
        assert r.status_code == 503 and "--timeout" in r.json()["error"] and time.time() - started < 2
        settled = _settles(slow)
        assert settled <= 8  # the request needs 11 slices of 2 windows; dropped after 0.5 s (3 slices)
        assert _metric(c.get("/metrics").text, "finetune_bert_abandoned_requests_total") == 1
        started = time.time()
        assert c.post("/predict", json={"inputs": "a good film"}).status_code == 200
        assert time.time() - started < 1.5


def test_a_client_that_hangs_up_has_its_request_dropped(trained):
    import httpx

    app = create_app(trained.output, device="cpu", max_batch_tokens=64, timeout=30)
    slow = _Slow(app.state.service, 0.2)
    with live(app) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/predict", json={"inputs": LONG}, timeout=0.6)
        assert _settles(slow) <= 8
        assert _metric(httpx.get(f"{url}/metrics").text, "finetune_bert_abandoned_requests_total") == 1


def test_ready_and_short_requests_are_answered_while_a_long_one_is_scored(trained):
    """/ready means a request would be taken now; a short request waits one slice, not the long one's ten."""
    from finetune_bert import load

    app = create_app(trained.output, device="cpu", max_batch_tokens=64, backend="torch-fp32")
    slow = _Slow(app.state.service, 0.3)
    expected = load(trained.output, device="cpu", backend="torch-fp32").predict_proba([LONG, "a good film"])
    with TestClient(app) as c, concurrent.futures.ThreadPoolExecutor(1) as pool:
        long = pool.submit(c.post, "/predict", json={"inputs": LONG})
        while slow.calls < 2:
            time.sleep(0.02)
        started = time.time()
        ready = c.get("/ready")
        assert ready.status_code == 200 and ready.json()["busy"] == 1 and time.time() - started < 1.0
        short = c.post("/predict", json={"inputs": "a good film"})
        assert short.status_code == 200 and not long.done()  # the long one has 9 slices, 2.7 s, to go
        answer = long.result(30)
    assert answer.status_code == 200
    for r, probs in ((answer, expected[0]), (short, expected[1])):
        assert {a["label"]: a["score"] for a in r.json()}["positive"] == pytest.approx(float(probs[1]), abs=1e-5)


def test_a_request_over_max_request_tokens_is_413_at_once_naming_the_flag(trained):
    with TestClient(create_app(trained.output, device="cpu", max_request_tokens=400)) as c:
        assert c.post("/predict", json={"inputs": " ".join(["good film"] * 60)}).status_code == 200  # 7 windows
        started = time.time()
        for texts in (" ".join(["good film"] * 150),        # its windows pass the budget: counted once tokenized
                      " ".join(["good film"] * 100_000),    # its text alone does: counted before, a piece at a time
                      ["good film " * 10] * 30):            # many texts that together do
            r = c.post("/predict", json={"inputs": texts})
            assert r.status_code == 413 and "--max-request-tokens" in r.json()["error"], r.text
        assert time.time() - started < 3
        assert c.get("/ready").status_code == 200


def test_the_default_budget_refuses_two_megabytes_of_text_at_once(trained):
    text = ("a good film with a superb plot " * 70_000)[:1_950_000]
    with TestClient(create_app(trained.output, device="cpu")) as c:
        started = time.time()
        r = c.post("/predict", json={"inputs": text})
        assert r.status_code == 413 and "--max-request-tokens" in r.json()["error"]
        assert time.time() - started < 2
        assert c.get("/ready").status_code == 200 and c.post("/predict", json={"inputs": "good"}).status_code == 200


def test_cut_texts_are_counted_as_cut(trained):
    """--long-texts truncate: a long text costs the model its max length, whatever its length."""
    with TestClient(create_app(trained.output, device="cpu", long_texts="truncate", max_request_tokens=100)) as c:
        assert c.post("/predict", json={"inputs": LONG * 10}).status_code == 200
        assert c.post("/predict", json={"inputs": [LONG] * 4}).status_code == 413


def test_a_drain_answers_what_it_can_and_the_rest_get_closed(trained):
    from finetune_bert.serving.batcher import Closed

    app = create_app(trained.output, device="cpu", max_batch_tokens=64)
    service = app.state.service
    slow = _Slow(service, 0.2)
    batcher = service.batcher
    short, long = batcher.submit(["a good film"]), batcher.submit([LONG])
    time.sleep(0.1)
    assert batcher.close(drain_seconds=0.5) is False and batcher.unfinished == 1
    assert short.result(1).probs.shape == (1, 2)
    with pytest.raises(Closed):
        long.result(1)
    assert not batcher.alive and slow.calls < 8
