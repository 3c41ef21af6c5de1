"""Word attributions (Integrated Gradients): completeness, words merged from wordpieces, long texts, batches,
every task kind, and predict --explain."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from finetune_bert.errors import UserError
from conftest import toy_rows, write_csv
from finetune_bert.inference.attributions import (DEFAULT_STEPS, PAIR_SEPARATOR, RETRY_FACTOR, Explanation,
                                                  explain_inputs)

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
# The toy models, trained at lr 1e-2, turn sharply along the path from [PAD] to a sentiment word: 32 steps can miss
# the change by more than 5% there (a fine-tuned MiniLM converged on 40 of 40 IMDB reviews at 32), and 256 make
# the integral exact on them (measured: within 1e-6). Tests that check other things than the default take EXACT steps.
EXACT = 256
AWKWARD = ("Café naïve wonderful!! 每个字 🙂 <b>bold</b> 12 34 5678 <br /><br />the end... (dull?) &amp; "
           "rock'n'roll\u00a0\tdone")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The toy models' passes are too small to share between threads: on a machine shared with other work, 256
    steps took 3.6 s with torch's two threads and 0.06 s with one (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clf(trained):
    from finetune_bert import load
    return load(trained.output)


def _pad_text(clf, text: str) -> str:
    """The baseline as a text: one [PAD] per token of `text` (the tokenizer reads a special token's name as it)."""
    n = len(clf.tokenizer(text, add_special_tokens=False)["input_ids"])
    return " ".join(["[PAD]"] * n)


def _sum(e: Explanation) -> float:
    return sum(w for _, w in e.words)


def test_weights_add_up_to_the_change_in_probability_and_total_is_that_change(clf):
    texts = ["the film was wonderful and the music superb", "awful plot , a boring and dull night", "loved it !!"]
    for text, e in zip(texts, clf.explain(texts, steps=EXACT)):
        p, base = clf.predict_proba(text), clf.predict_proba(_pad_text(clf, text))
        c = clf.label_names.index(e.label)
        assert e.label == clf.predict(text).label and e.steps == EXACT
        assert abs(e.total - (p[c] - base[c])) < 1e-4  # f is the explained class's probability
        assert e.converged and abs(_sum(e) - e.total) <= 0.01 * abs(e.total)
        assert e.delta == pytest.approx(abs(_sum(e) - e.total) / max(abs(e.total), 1e-3), rel=1e-3, abs=1e-7)
    first = clf.explain(texts[0])  # the default: 32 steps, or 128 where 32 did not converge
    assert first.steps in (DEFAULT_STEPS, DEFAULT_STEPS * RETRY_FACTOR) and first.converged
    assert first.top(1)[0][0] in ("wonderful", "superb") and first.top(1)[0][1] > 0  # toward positive


def test_converged_is_measured_and_a_text_that_misses_is_retried_with_more_steps(clf):
    text = "loved it !!"
    coarse = explain_inputs(clf, [text], None, steps=8, retry=False)[0]
    retried = clf.explain(text, steps=8)
    assert not coarse.converged and coarse.delta > 0.05 and coarse.steps == 8
    assert retried.steps == 8 * RETRY_FACTOR and retried.delta < coarse.delta
    assert retried.converged == (retried.delta <= 0.05)
    assert coarse.total == pytest.approx(retried.total, abs=1e-6)  # the ends of the path do not depend on steps


def test_words_are_the_cleaned_texts_words_in_order_none_lost(clf):
    from finetune_bert.data.rows import clean_text
    cleaned = clean_text(AWKWARD)
    e = clf.explain(AWKWARD, steps=EXACT)
    words = [w for w, _ in e.words]
    at = 0
    for word in words:  # each a substring, after the one before it
        at = cleaned.index(word, at) + len(word)
    assert "".join(words) == "".join(cleaned.split())
    for expected in ("Café", "naïve", "每", "个", "字", "🙂", "5678", "rock", "roll", "done"):
        assert expected in words
    assert "<br" not in "".join(words) and "&" in words  # <br /> and &amp; cleaned as the model read them
    assert e.converged


def test_a_text_longer_than_a_window_gets_a_weight_for_every_word(clf):
    words = (["the", "film", "was", "wonderful", "and", "the", "plot", "dull"] * 12)  # 96 tokens, windows of 30
    text = " ".join(words)
    assert clf.reading_json()["long_texts"] == "chunks" and clf.max_length < len(words)
    e = clf.explain(text, steps=EXACT)
    assert [w for w, _ in e.words] == words and all(w != 0 for _, w in e.words)
    p, base = clf.predict_proba(text), clf.predict_proba(_pad_text(clf, text))
    c = clf.label_names.index(e.label)
    assert abs(e.total - (p[c] - base[c])) < 1e-4 and e.converged  # the text's probability: windows averaged
    from finetune_bert import load
    from finetune_bert.inference.reading import Reading
    cut = load(clf.folder.name, reading=Reading("truncate")).explain(text, steps=EXACT)
    assert len(cut.words) < len(words) and cut.converged  # only the tokens read: head and tail


def test_explaining_texts_together_equals_one_by_one(clf):
    texts = ["superb", "the movie was a long and dull story with bad music " * 5, "loved the camera and light",
             "hated it", AWKWARD]
    together = clf.explain(texts, batch_size=4, steps=EXACT)
    for text, e in zip(texts, together):
        alone = clf.explain(text, steps=EXACT)
        assert [w for w, _ in e.words] == [w for w, _ in alone.words] and e.label == alone.label
        assert np.allclose([w for _, w in e.words], [w for _, w in alone.words], atol=2e-6)
        assert e.total == pytest.approx(alone.total, abs=1e-6)


def test_explain_leaves_no_gradient_and_runs_under_inference_mode(clf):
    with torch.inference_mode():
        e = clf.explain("the film was wonderful and the music superb", steps=EXACT)
    assert e.converged and not clf.model.training
    assert all(p.grad is None for p in clf.model.parameters())


def test_targets_by_name_index_or_one_per_text(clf):
    texts = ["a superb film", "an awful film"]
    by_name = clf.explain(texts, target="negative", steps=EXACT)
    assert [e.label for e in by_name] == ["negative", "negative"]
    by_index = clf.explain(texts, target=[1, 0])
    assert [e.label for e in by_index] == [clf.label_names[1], clf.label_names[0]]
    positive = clf.explain("a superb film", target="positive", steps=EXACT)
    negative = by_name[0]
    assert np.allclose([w for _, w in positive.words], [-w for _, w in negative.words], atol=1e-5)  # p_neg = 1 - p_pos
    for bad, message in (("neutral", "not one of the model's labels"), (5, "not a label index"),
                         (["positive"], "1 targets for 2 texts")):
        with pytest.raises(UserError, match=message):
            clf.explain(texts, target=bad)


def test_every_kind_explains_what_it_answers(trained_kinds):
    from finetune_bert import load
    multi = load(trained_kinds["multi-label"])
    text = "a superb story with great camera light"
    e = multi.explain(text, steps=EXACT)
    assert e.label == multi.label_names[int(multi.predict_proba(text).argmax())] and e.converged
    tech = multi.explain(text, target="tech", steps=EXACT)
    p, base = multi.predict_proba(text), multi.predict_proba(_pad_text(multi, text))
    assert tech.label == "tech" and tech.converged and tech.top(1)[0][0] == "camera" and tech.top(1)[0][1] > 0
    assert abs(tech.total - (p[2] - base[2])) < 1e-4  # the label's own sigmoid
    reg = load(trained_kinds["regression"])
    text = "superb wonderful film but the plot awful"
    e = reg.explain(text, steps=EXACT)
    weights = dict(e.words)
    assert e.label == reg.label_names[0] and e.converged and abs(_sum(e) - e.total) <= 0.01 * abs(e.total)
    assert abs(e.total - (reg.predict(text).value - reg.predict(_pad_text(reg, text)).value)) < 1e-3
    assert weights["superb"] > 0 and weights["awful"] < 0  # the rating rises with one, falls with the other


def test_a_pair_is_explained_with_its_second_texts_words_after_sep(pair_model):
    from finetune_bert import load
    clf = load(pair_model[0])
    e = clf.explain(("the plot was dull", "a superb film"), steps=EXACT)
    words = [w for w, _ in e.words]
    assert words == ["the", "plot", "was", "dull", PAIR_SEPARATOR, "a", "superb", "film"] and e.converged
    assert dict(e.words)[PAIR_SEPARATOR] == 0.0 and PAIR_SEPARATOR not in dict(e.top(10))
    as_dict = clf.explain([{"text": "the plot was dull", "text_pair": "a superb film"}], steps=EXACT)[0]
    assert as_dict.words == e.words and e.label == clf.predict(("the plot was dull", "a superb film")).label


def test_to_json_top_and_compact():
    e = Explanation("positive", (("great", 0.41234567), ("film", -0.001), ("awful", -0.22)), 0.2, 0.01, True, 32)
    assert e.top(2) == [("great", 0.41234567), ("awful", -0.22)]
    assert e.compact(2) == "great +0.412; awful -0.22"
    assert json.loads(json.dumps(e.to_json())) == {"label": "positive", "words": [["great", 0.412346], ["film", -0.001],
                                                   ["awful", -0.22]], "total": 0.2, "delta": 0.01, "converged": True,
                                                   "steps": 32}


def _predict(model, *args):
    return subprocess.run([sys.executable, "-m", "finetune_bert.cli", "predict", "--model", str(model), *args],
                          capture_output=True, text=True, env=ENV, timeout=300)


def test_predict_explain_prints_the_top_words_under_each_prediction(trained):
    done = _predict(trained.output, "--explain", "--top-words", "3", "the film was wonderful", "awful , dull plot")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("positive\t") and lines[2].startswith("negative\t") and len(lines) == 4
    for line, label in ((lines[1], "positive"), (lines[3], "negative")):
        assert line.startswith(f"\t{label}: ")
        shown = [part.rsplit(" ", 1) for part in line.split(": ", 1)[1].split("; ")]
        assert len(shown) == 3 and all(float(w) == float(w) for _, w in shown)
    assert "wonderful +" in lines[1] and ("awful +" in lines[3] or "dull +" in lines[3])


def test_predict_explain_into_csv_and_jsonl(trained, tmp_path):
    data = write_csv(tmp_path / "in.csv", toy_rows(12, seed=5))
    out = tmp_path / "p.csv"
    done = _predict(trained.output, "--input", str(data), "--output", str(out), "--explain", "--top-words", "2",
                    "--batch-size", "5")  # chunks of 5 rows: explained a chunk at a time
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.open(newline="")))
    assert len(rows) == 12 and list(rows[0])[-1] == "explanation"
    for row in rows:
        shown = row["explanation"].split("; ")
        assert 1 <= len(shown) <= 2 and all(part.rsplit(" ", 1)[1][0] in "+-" for part in shown)
    lines = tmp_path / "p.jsonl"
    done = _predict(trained.output, "--input", str(data), "--output", str(lines), "--explain", "--explain-steps", "64")
    assert done.returncode == 0, done.stderr
    for row in map(json.loads, lines.read_text().splitlines()):
        e = row["explanation"]
        assert e["label"] == row["predicted"] and e["steps"] in (64, 64 * RETRY_FACTOR)
        assert "".join(w for w, _ in e["words"]) == "".join(row["text"].split())
        gap = abs(sum(w for _, w in e["words"]) - e["total"]) / max(abs(e["total"]), 1e-3)
        assert e["delta"] == pytest.approx(gap, abs=1e-4) and e["converged"] == (e["delta"] <= 0.05)


def test_explain_is_refused_for_onnx_up_front_and_by_the_api(trained, tmp_path):
    done = _predict(trained.output, "--explain", "--backend", "onnx", "a good film")
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("error: --explain needs the model's gradients, which --backend onnx cannot give")
    from finetune_bert import load
    from finetune_bert.export.onnx import export
    folder = tmp_path / "model"
    shutil.copytree(trained.output, folder)
    export(str(folder))
    with pytest.raises(UserError, match="--backend onnx cannot explain: onnxruntime runs the model forward only"):
        load(folder, backend="onnx").explain("a good film")
