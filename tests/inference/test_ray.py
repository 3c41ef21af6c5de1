"""The Ray Data example of docs/distributed.md, run as written on a local Ray cluster: `load(DIR).predict` in a
callable class given to `map_batches`, one model per actor.

Ray is an extra (`pip install 'finetune-bert[ray]'`), not in `make setup`'s dev one: about 245 MB installed, and
this test takes some 20 s on 2 cores (a local cluster started, an actor that imports torch and loads the model).
Without it the test is skipped."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from finetune_bert import load

ray = pytest.importorskip("ray", reason="Ray is the `ray` extra (pip install 'finetune-bert[ray]'), not installed")
pytest.importorskip("ray.data", reason="Ray Data is the `ray` extra's ray[data] (pip install 'finetune-bert[ray]')")

DOC = Path(__file__).resolve().parents[2] / "docs" / "distributed.md"


def _example() -> str:
    """The page's Ray Data example, as a user copies it."""
    section = DOC.read_text().split("## Ray Data", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_docs_ray_data_example_labels_every_row_as_load_predict_does(trained, toy_data, tmp_path):
    code = _example()
    settings = 'MODEL, DATA, OUTPUT, ACTORS = "runs/reviews", "reviews.csv", "predictions/", 4'
    assert settings in code
    code = code.replace(settings, f"MODEL, DATA, OUTPUT, ACTORS = {trained.output!r}, {str(toy_data['test'])!r}, "
                                  f"{str(tmp_path / 'out')!r}, 1")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        exec(compile(code, str(DOC), "exec"), {"__name__": "ray_example"})
    finally:
        ray.shutdown()
    rows = [row for part in sorted((tmp_path / "out").glob("*.csv")) for row in csv.DictReader(part.open())]
    texts = [row["text"] for row in csv.DictReader(toy_data["test"].open())]
    assert sorted(row["text"] for row in rows) == sorted(texts)
    expected = {text: p.label for text, p in zip(texts, load(trained.output).predict(texts))}
    assert all(row["predicted"] == expected[row["text"]] for row in rows)
