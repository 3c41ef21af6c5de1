"""Coloured words: the HTML renderer every report shares, the explanations kept in the metrics, and the report
pages that colour the words of their listed mistakes."""

from __future__ import annotations

import csv
import json
import re
from html.parser import HTMLParser

from finetune_bert.evaluation.explained import NOT_EXPLAINED, metrics_text
from finetune_bert.evaluation.words import NEGATIVE, POSITIVE, WORDS_CSS, legend_html, words_html
from finetune_bert.inference.attributions import PAIR_SEPARATOR, Explanation


class _Spans(HTMLParser):
    """Every word span of a page: (text, background, title), and whether any <script> element was opened."""

    def __init__(self):
        super().__init__()
        self.spans: list[list[str]] = []
        self.scripts = 0
        self._open: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.scripts += tag == "script"
        if tag == "span" and attrs.get("class") == "w" and "title" in attrs:
            self._open = ["", attrs["style"], attrs["title"]]

    def handle_data(self, data):
        if self._open is not None:
            self._open[0] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            self.spans.append(self._open)
            self._open = None


def _spans(page: str) -> _Spans:
    parser = _Spans()
    parser.feed(page)
    return parser


def _rgba(style: str) -> tuple[int, int, int, float]:
    r, g, b, a = re.search(r"rgba\(([^)]*)\)", style).group(1).split(",")
    return int(r), int(g), int(b), float(a)


def test_words_are_green_toward_the_label_red_against_deeper_when_larger_and_escaped():
    page = words_html([("superb", 0.8), ("<script>alert(1)</script>", -0.2), ("film", 0.0)], "positive")
    found = _spans(page)
    assert found.scripts == 0 and "&lt;script&gt;" in page
    (superb, style_s, title_s), (script, style_x, title_x), (film, style_f, _) = found.spans
    assert (superb, script, film) == ("superb", "<script>alert(1)</script>", "film")
    assert _rgba(style_s)[:3] == POSITIVE and _rgba(style_x)[:3] == NEGATIVE
    assert _rgba(style_s)[3] > _rgba(style_x)[3] > _rgba(style_f)[3] == 0  # relative to the text's largest
    assert _rgba(style_x)[3] == round(_rgba(style_s)[3] * 0.25, 3)
    assert title_s == "+0.8000 toward positive" and title_x == "-0.2000 toward positive"


def test_an_explanation_its_json_words_and_a_pairs_separator_render_alike():
    explanation = Explanation("entailment", (("a", 0.5), (PAIR_SEPARATOR, 0.0), ("b", -0.5)), 0.0, 0.0, True, 32)
    from_object = words_html(explanation)
    assert from_object == words_html(explanation.to_json()["words"], "entailment")
    assert 'class="sep"' in from_object and [s[0] for s in _spans(from_object).spans] == ["a", "b"]
    legend = legend_html("positive")
    assert "green" in legend and "red" in legend and "positive" in legend
    assert "raised" in legend_html(regression=True) and ".words" in WORDS_CSS


def test_explanations_in_the_metrics_keep_their_words_on_one_line_and_read_back_unchanged():
    words = [["great", 0.5], ["\u00e9t\u00e9 \"x\"", -0.25]] * 50
    metrics = {"n": 3, "mistakes": [{"row": "line 2", "explanation": {"label": "a", "words": words, "total": 1.0}}],
               "words": "a plain field"}
    text = metrics_text(metrics)
    assert json.loads(text) == metrics and len(text.splitlines()) < 20


def test_an_onnx_backend_leaves_the_listed_mistakes_uncoloured_and_says_why():
    from types import SimpleNamespace

    from finetune_bert.evaluation.explained import explain_rows

    rows, metrics = [{"row": "line 2", "text": "dull", "predicted": "positive"}], {}
    explain_rows(SimpleNamespace(model=None, backend="onnx-int8"), rows, ["dull"], metrics)
    assert "explanation" not in rows[0] and "--backend onnx-int8 cannot explain" in metrics[NOT_EXPLAINED]


def test_the_report_colours_the_words_of_each_listed_mistake(trained):
    from finetune_bert.evaluation.report_page import evaluation_report

    metrics = json.loads(open(f"{trained.output}/metrics.json").read())["test"]
    explained = {"label": "positive", "words": [["superb", 0.7], ["<b>dull</b>", -0.3]], "converged": True}
    metrics.update(model="m", data="d.csv", mistakes=[{"row": "line 2", "text": "superb <b>dull</b>",
                                                      "true_label": "negative", "predicted": "positive",
                                                      "confidence": 0.9, "explanation": explained}])
    page = evaluation_report(metrics, "d.json")
    spans = _spans(page).spans
    assert [s[0] for s in spans] == ["superb", "<b>dull</b>"] and "<b>dull" not in page
    assert _rgba(spans[0][1])[:3] == POSITIVE and _rgba(spans[1][1])[:3] == NEGATIVE
    assert "the predicted label" in page and 'class="legend"' in page
    del metrics["mistakes"][0]["explanation"]
    metrics[NOT_EXPLAINED] = "--backend onnx cannot explain"
    page = evaluation_report(metrics, "d.json")
    assert not _spans(page).spans and "Words not coloured: --backend onnx cannot explain" in page


def test_evaluate_with_errors_explains_the_mistakes_it_lists_and_report_redraws_them(trained, toy_data, tmp_path):
    """The trained model on the toy test set with 3 labels flipped: its mistakes (it learned the rest)."""
    from finetune_bert import evaluate
    from finetune_bert.cli.main import main

    rows = list(csv.DictReader(open(toy_data["test"])))
    flipped = tmp_path / "flipped.csv"
    with flipped.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": {"positive": "negative", "negative": "positive"}[r["label"]]
                          if i < 3 else r["label"]} for i, r in enumerate(rows))
    out = tmp_path / "flipped.json"
    metrics = evaluate(model=trained.output, data=str(flipped), output=str(out), errors=3, quiet=True)
    listed = metrics["mistakes"]
    assert len(listed) == 3 and all(r["explanation"]["label"] == r["predicted"] for r in listed)
    assert "".join(w for w, _ in listed[0]["explanation"]["words"]) == "".join(listed[0]["text"].split())
    page = (tmp_path / "flipped.html").read_text()
    assert len(_spans(page).spans) == sum(len(r["explanation"]["words"]) for r in listed)
    (tmp_path / "flipped.html").unlink()
    assert main(["report", str(out)]) == 0 and (tmp_path / "flipped.html").read_text() == page
    assert out.read_text().count('"words": [["') == 3  # the words of each explanation on one line
