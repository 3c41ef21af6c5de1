"""Explanations on the server: `"parameters": {"explain": true}` through a real `serve` process, its limits and
metrics, every model kind, plain predictions answered while a text is explained, the drain, and the page
colouring the words in headless Chromium."""

from __future__ import annotations

import re
import threading
import time

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from finetune_bert.serving.app import create_app  # noqa: E402
from processes import Served, live  # noqa: E402

EXPLAIN = {"explain": True}


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """`serve` with room for 2 explained texts of about 9 tokens each (32 steps: 300 tokens of work), on a copy
    of the model with its ONNX export: on a CPU without AMX `auto` answers through onnxruntime, and the
    explanations, which need gradients, go through the same model in torch."""
    import shutil

    from finetune_bert.export.onnx import export

    folder = tmp_path_factory.mktemp("served") / "model"
    shutil.copytree(trained.output, folder)
    export(model=str(folder))
    server = Served(folder, "--max-explain-texts", "2", "--max-request-tokens", "600")
    yield server
    server.stop()


def _post(server, body):
    import httpx

    return httpx.post(f"{server.url}/predict", json=body, timeout=30)


def _metric(server, name: str) -> float:
    import httpx

    text = httpx.get(f"{server.url}/metrics").text
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def _check(explanation: dict, text: str, label: str) -> None:
    """The label listed first, every word the model read in text order, weights adding up to the total."""
    assert explanation["label"] == label and explanation["steps"] >= 32
    assert "".join(w for w, _ in explanation["words"]) == "".join(text.split())
    assert abs(sum(x for _, x in explanation["words"]) - explanation["total"]) <= \
        explanation["delta"] * max(abs(explanation["total"]), 1e-3) + 1e-5


def test_explain_adds_the_explanation_of_the_top_label_to_each_answer(served):
    text = "a superb film but the plot was dull"
    before = _metric(served, "finetune_bert_explained_texts_total")
    r = _post(served, {"inputs": text, "parameters": EXPLAIN})
    assert r.status_code == 200 and float(r.headers["x-explain-time"]) > 0 and "x-ignored-fields" not in r.headers
    answer = r.json()
    _check(answer[0]["explanation"], text, answer[0]["label"])
    assert all("explanation" not in a for a in answer[1:])
    plain = _post(served, {"inputs": text}).json()
    assert [{k: a[k] for k in ("label", "score")} for a in answer] == plain  # the scores are the same
    texts = ["awful dull plot", "superb music"]
    both = _post(served, {"inputs": texts, "parameters": {"explain": True, "top_k": 1}}).json()
    for scores, one in zip(both, texts):
        assert len(scores) == 1
        _check(scores[0]["explanation"], one, scores[0]["label"])
    assert _metric(served, "finetune_bert_explained_texts_total") == before + 3
    assert _metric(served, "finetune_bert_explain_seconds_count") >= 3
    info = __import__("httpx").get(f"{served.url}/info").json()
    assert info["explain"] == {"available": True, "steps": 32} and info["limits"]["max_explain_texts"] == 2
    from finetune_bert.engine.torch_engine import has_amx
    assert info["backend_requested"] == "auto" and info["backend"] == ("torch" if has_amx() else "onnx")


@pytest.mark.parametrize("parameters, status, message", [
    ({"explain": "yes"}, 422, "explain must be true or false, got 'yes'"),
    ({"explain": 1}, 422, "explain must be true or false"),
])
def test_explain_is_a_boolean(served, parameters, status, message):
    r = _post(served, {"inputs": "good", "parameters": parameters})
    assert r.status_code == status and message in r.json()["error"]


def test_explanations_count_against_the_servers_limits(served):
    r = _post(served, {"inputs": ["good", "bad", "dull"], "parameters": EXPLAIN})
    assert r.status_code == 413 and "--max-explain-texts" in r.json()["error"]
    long = " ".join(["the plot was long and the music superb"] * 3)  # 26 tokens: 832 of work at 32 steps
    r = _post(served, {"inputs": long, "parameters": EXPLAIN})
    assert r.status_code == 413 and "--max-request-tokens" in r.json()["error"] and "x 32 steps" in r.json()["error"]
    assert _post(served, {"inputs": long}).status_code == 200  # scoring it alone is within the budget


@pytest.mark.parametrize("kind", ["multi-label", "regression", "pairs"])
def test_every_kind_explains_what_its_answer_lists_first(kind, trained_kinds, pair_model):
    model = pair_model[0] if kind == "pairs" else trained_kinds[kind]
    inputs = {"text": "the film", "text_pair": "loved it"} if kind == "pairs" else "great camera and a dull plot"
    with TestClient(create_app(str(model), device="cpu")) as c:
        answer = c.post("/predict", json={"inputs": inputs, "parameters": EXPLAIN}).json()
    explanation = answer[0]["explanation"]
    if kind == "pairs":
        assert [w for w, _ in explanation["words"]] == ["the", "film", "[SEP]", "loved", "it"]
        assert explanation["label"] == answer[0]["label"]
    else:
        _check(explanation, inputs, answer[0]["label"])
    assert kind != "regression" or explanation["label"] == "rating"


class _Held:
    """The explainer held inside its first text until released."""

    def __init__(self, classifier):
        self.entered, self.release = threading.Event(), threading.Event()
        self.explain = classifier.explain

    def __call__(self, *args, **kwargs):
        self.entered.set()
        self.release.wait(10)
        return self.explain(*args, **kwargs)


def test_plain_predictions_are_answered_while_a_text_is_explained_and_a_late_one_is_503(trained):
    app = create_app(trained.output, device="cpu", timeout=3)
    service = app.state.service
    held = _Held(service.classifier)
    service.classifier.explain = held
    with TestClient(app) as c:
        answer: dict = {}
        waiting = threading.Thread(target=lambda: answer.update(r=c.post(
            "/predict", json={"inputs": "good film", "parameters": EXPLAIN})))
        waiting.start()
        assert held.entered.wait(10)
        started = time.perf_counter()
        assert c.post("/predict", json={"inputs": "superb"}).status_code == 200
        assert time.perf_counter() - started < 2  # not queued behind the explanation
        waiting.join(10)
        assert answer["r"].status_code == 503 and "--timeout" in answer["r"].json()["error"]
        held.release.set()
        assert c.post("/predict", json={"inputs": "dull", "parameters": EXPLAIN}).status_code == 200


def test_the_drain_answers_an_explanation_it_cannot_finish_with_closed():
    from concurrent.futures import wait

    from finetune_bert.serving.batcher import Closed, QueueFull
    from finetune_bert.serving.explainer import Explainer

    release = threading.Event()

    class Slow:
        def explain(self, text, **_):
            release.wait(5)
            return text

    explainer = Explainer(max_queue=2)
    first, second = explainer.reserve(), explainer.reserve()
    with pytest.raises(QueueFull):
        explainer.reserve()
    explainer.start(first, Slow(), ["a", "b"], [None, None])
    explainer.release(first)
    explainer.start(second, Slow(), ["c"], [None])
    explainer.release(second)
    time.sleep(0.2)
    threading.Timer(0.5, release.set).start()
    assert explainer.close(drain_seconds=0.3) is False and explainer.unfinished == 2
    wait([first, second], timeout=5)
    assert isinstance(first.exception(), Closed) and isinstance(second.exception(), Closed)
    with pytest.raises(Closed):
        explainer.reserve()


def test_the_page_colours_the_words_in_headless_chromium(trained):
    from conftest import _browser
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from finetune_bert import load

    candidates = ["superb but boring", "loved it but dull", "the movie was great but the plot was awful",
                  "wonderful and awful and dull", "hated the great film"]
    explained = load(trained.output, device="cpu").explain(candidates)
    mixed = next(t for t, e in zip(candidates, explained)
                 if min(w for _, w in e.words) < 0 < max(w for _, w in e.words))
    driver, reason = _browser()
    if driver is None:
        pytest.skip(reason)
    try:
        with live(create_app(trained.output, device="cpu")) as url:
            driver.get(url + "/")
            WebDriverWait(driver, 20).until(lambda d: "fine-tuned" in d.find_element(By.ID, "model").text)
            driver.find_element(By.ID, "explain").click()
            driver.find_element(By.ID, "text").send_keys(mixed)
            driver.find_element(By.ID, "go").click()
            WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#words .w"))
            _check_colours(driver, "#words .w", mixed.split())
            legend = driver.find_element(By.ID, "legend")
            assert legend.is_displayed() and "green" in legend.text and "red" in legend.text
            assert "pushed toward " + driver.find_element(By.ID, "label").text in legend.text
            driver.find_element(By.ID, "text").send_keys("\n<script>window.hit=1</script> superb")
            driver.find_element(By.ID, "go").click()
            WebDriverWait(driver, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#rows tr")) == 3)
            cells = driver.find_elements(By.CSS_SELECTOR, "#rows tr td:first-child")
            assert cells[2].text.replace(" ", "") == "<script>window.hit=1</script>superb"  # [0]: the header
            assert driver.execute_script("return window.hit === undefined && !document.querySelector('#rows script')")
            assert driver.find_element(By.ID, "many-legend").is_displayed()
            assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()


def _check_colours(driver, selector: str, words: list[str]) -> None:
    """Each word's background green (toward the label) or red (against), as its title's sign says; both seen."""
    from selenium.webdriver.common.by import By

    spans = driver.find_elements(By.CSS_SELECTOR, selector)
    assert [s.text for s in spans] == words
    signs = set()
    for span in spans:
        r, g, b, *alpha = [float(x) for x in re.findall(r"[\d.]+", span.value_of_css_property("background-color"))]
        positive = span.get_attribute("title").startswith("+")
        assert ((r, g, b) == (34, 197, 94)) if positive else ((r, g, b) == (239, 68, 68))
        signs.add(positive)
    assert signs == {True, False}
