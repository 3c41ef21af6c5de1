"""The server's page for the other kinds, in headless Chromium as a person uses it: a multi-label model's
labels over their thresholds, a regression's value, and a pair typed as 'first ||| second'."""

from __future__ import annotations

import pytest

from finetune_bert.serving.app import create_app
from processes import live


def _page(model, lines: list[str]) -> tuple[str, list[str], list[str]]:
    """What the page shows for `lines` typed in: the headline, the rows of the one-text table or of the
    many-texts table, and the console's errors."""
    from conftest import _browser
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver, reason = _browser()
    if driver is None:
        pytest.skip(reason)
    try:
        with live(create_app(str(model), device="cpu")) as url:
            driver.get(url + "/")
            WebDriverWait(driver, 20).until(lambda d: "fine-tuned" in d.find_element(By.ID, "model").text)
            driver.find_element(By.ID, "text").send_keys("\n".join(lines))
            driver.find_element(By.ID, "go").click()
            table = "#classes tr" if len(lines) == 1 else "#rows tr"
            WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "label").text
                                            or len(d.find_elements(By.CSS_SELECTOR, "#rows tr")) > 1)
            rows = [r.text for r in driver.find_elements(By.CSS_SELECTOR, table)]
            errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            return driver.find_element(By.ID, "label").text, rows, errors
    finally:
        driver.quit()


def test_the_page_shows_a_multi_label_models_labels_over_their_thresholds(trained_kinds):
    label, rows, errors = _page(trained_kinds["multi-label"], ["great camera"])
    assert errors == [] and len(rows) == 3  # every label, with its own probability
    chosen = [r.split()[0] for r in rows if r.endswith("over its threshold")]
    assert label == (", ".join(chosen) or "no label")
    assert {r.split()[0] for r in rows} == {"neg", "pos", "tech"}


def test_the_page_shows_a_regression_value_and_pairs(trained_kinds, pair_model):
    label, rows, errors = _page(trained_kinds["regression"], ["good great loved"])
    assert errors == [] and rows == [] and label.split()[0] == "rating" and 0 < float(label.split()[1]) < 15
    _, rows, errors = _page(pair_model[0], ["the film ||| loved it", "the film ||| hated it"])
    assert errors == [] and len(rows) == 3
    assert rows[1].split()[-2] == "1" and rows[2].split()[-2] == "0"  # label, then confidence
