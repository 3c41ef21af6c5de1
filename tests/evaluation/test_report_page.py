"""report.html: what it holds, `finetune-bert report`, and how it renders in a real browser."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import pytest

from conftest import _browser


def test_train_writes_a_self_contained_report(trained):
    page = open(f"{trained.output}/report.html", encoding="utf-8").read()
    for heading in ("Results", "Per class (test)", "Calibration", "Confidence and length", "Training",
                    "most confident mistakes", "Configuration", "Data"):
        assert heading.lower() in page.lower()
    assert "<script" not in page and "http://" not in page and "https://" not in page  # offline, nothing to load
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 5
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG")


def test_the_report_escapes_texts(trained, tmp_path):
    from finetune_bert.evaluation.report_page import evaluation_report

    metrics = json.loads(open(f"{trained.output}/metrics.json").read())["test"]
    metrics.update(model="m", data="d.csv", mistakes=[{"row": "line 2", "text": "<script>alert(1)</script>",
                                                      "true_label": "a", "predicted": "b", "confidence": 0.9}])
    page = evaluation_report(metrics, "d.json")
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_report_command_rebuilds_a_runs_report_and_an_evaluations(trained, toy_data, tmp_path, capsys):
    from finetune_bert.cli.main import main

    run = tmp_path / "run"
    shutil.copytree(trained.output, run)
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file() and "report written to" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(run), "--data", str(toy_data["test"])]) == 0
    (run / "evaluation.html").unlink()
    assert main(["report", str(run / "evaluation.json")]) == 0
    assert "finetune-bert evaluation" in (run / "evaluation.html").read_text()


@pytest.mark.parametrize("what", ["missing", "empty folder", "data file", "json of another kind"])
def test_report_on_what_is_not_a_run_or_an_evaluation_is_one_line(tmp_path, capsys, what):
    from finetune_bert.cli.main import main

    target = {"missing": tmp_path / "nope", "empty folder": tmp_path, "data file": tmp_path / "d.csv",
              "json of another kind": tmp_path / "x.json"}[what]
    if what == "data file":
        target.write_text("text,label\na,b\n")
    if what == "json of another kind":
        target.write_text('{"a": 1}')
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {target}") and err.count("\n") == 1


def test_the_report_renders_in_headless_chromium(trained, tmp_path):
    """As a person would see it: no console errors, every image decoded, and figures that are not blank in
    a screenshot of the page."""
    import numpy as np
    from PIL import Image

    driver, reason = _browser()
    if driver is None:
        pytest.skip(reason)
    try:
        driver.get(f"file://{trained.output}/report.html")
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])")
        assert len(images) >= 5 and all(done and w > 100 and h > 100 for done, w, h, _ in images), images
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1200, height + 100)
        shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L"), dtype=float)
        scale = shot.shape[1] / driver.execute_script("return window.innerWidth")
        boxes = driver.execute_script("return Array.from(document.images).map(i => { const r = "
                                      "i.getBoundingClientRect(); return [r.left, r.top + window.scrollY, r.width, r.height]; })")
        for left, top, width, height in boxes:
            region = shot[int(top * scale):int((top + height) * scale), int(left * scale):int((left + width) * scale)]
            assert region.size and region.std() > 10, "a figure is blank in the screenshot"  # a plot, not a flat fill
        Image.fromarray(shot.astype("uint8")).save(tmp_path / "report.png")
    finally:
        driver.quit()


def test_report_of_a_json_that_is_not_evaluate_metrics_is_one_line(trained, toy_data, tmp_path, capsys):
    """A predictions .json (an array), valid JSON of another shape, or a damaged metrics.json: one line, exit 2."""
    import shutil

    from finetune_bert.cli.main import main

    predictions = tmp_path / "p.json"
    assert main(["predict", "--model", trained.output, "--input", str(toy_data["test"]), "--output",
                 str(predictions)]) == 0
    capsys.readouterr()
    assert main(["report", str(predictions)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not the metrics of `finetune-bert evaluate`" in err
    shaped = tmp_path / "m.json"
    shaped.write_text(json.dumps({"n": 3, "accuracy": "high", "confusion_matrix": 7, "confidence_histogram": []}))
    assert main(["report", str(shaped)]) == 2
    assert "its metrics do not have the shape finetune-bert writes" in capsys.readouterr().err
    run = shutil.copytree(trained.output, tmp_path / "run")
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["test"]["confusion_matrix"] = "lost"
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert main(["report", str(run)]) == 2
    assert "Traceback" not in capsys.readouterr().err
