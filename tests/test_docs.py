"""The documentation a user reads: a README that fits its purpose, and links that lead somewhere."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_readme_is_a_page_for_users_not_a_manual():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 180


def test_every_relative_link_in_the_readme_and_docs_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor on the same page
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_the_readme_links_a_page_for_each_highlight():
    readme = (ROOT / "README.md").read_text()
    for page in ("data", "long-texts", "calibration", "serving", "export", "tuning", "robustness", "distributed",
                 "performance", "architecture"):
        assert f"docs/{page}.md" in readme, page
