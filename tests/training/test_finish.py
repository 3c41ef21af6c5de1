"""The end of a run: the mistakes its report lists are explained with the model just trained, kept in
metrics.json, and coloured in report.html, which `finetune-bert report` draws again from the files alone."""

from __future__ import annotations

import json
import re
import shutil

from conftest import toy_rows, write_csv

WORD = re.compile(r'<span class="w" style="background: rgba\([^"]*\)" title=')  # a word, not the legend's swatch


def test_the_reports_listed_mistakes_have_their_words_coloured(tiny_model, tmp_path):
    from finetune_bert import train
    from finetune_bert.cli.main import main

    test = toy_rows(12, seed=4)
    for row in test[:4]:  # labels the model cannot agree with: mistakes, whatever it learned
        row["label"] = {"positive": "negative", "negative": "positive"}[row["label"]]
    out = tmp_path / "run"
    train(data=str(write_csv(tmp_path / "train.csv", toy_rows(48, seed=3))),
          test_data=str(write_csv(tmp_path / "test.csv", test)), model=str(tiny_model), output=str(out), epochs=1,
          batch_size=16, lr=1e-2, max_length=32, seed=0, bf16=False)
    metrics = json.loads((out / "metrics.json").read_text())
    mistakes = metrics["mistakes"]
    assert mistakes and all(m["explanation"]["label"] == m["predicted"] for m in mistakes)
    assert all("index" not in m for m in mistakes)
    for m in mistakes:
        assert "".join(w for w, _ in m["explanation"]["words"]) == "".join(m["text"].split())
    page = (out / "report.html").read_text()
    words = sum(len(m["explanation"]["words"]) for m in mistakes)
    assert len(WORD.findall(page)) == words and 'class="legend"' in page
    copy = shutil.copytree(out, tmp_path / "copy")
    (copy / "report.html").unlink()
    assert main(["report", str(copy)]) == 0
    assert len(WORD.findall((copy / "report.html").read_text())) == words
