"""The README, docs/ and bench/README.md link to files that exist and to headings those files have."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(\s*([^)\s]+)\s*\)")


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            found.add(anchor(line.lstrip("#")))
    return found


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold commands, not links
    return [m for m in LINK.findall(text) if not re.match(r"[a-z]+:", m)]  # http:, https:, mailto: are external


def test_the_anchor_rule_matches_githubs():
    assert anchor(" compare on Ray (`bench/ray_overhead.py`)") == "compare-on-ray-benchray_overheadpy"
    assert anchor(" Tests: `make test`") == "tests-make-test"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    assert page.exists()
    broken = []
    for target in links(page):
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading #{fragment} in {dest.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def figure_rows(page: Path) -> list[str]:
    """The rows of a page's measured-figures tables (those whose header starts `| what |`)."""
    rows, inside = [], False
    for line in page.read_text().splitlines():
        if line.startswith("| what |"):
            inside = True
        elif inside and not line.startswith("|"):
            inside = False
        elif inside and not line.startswith("|---"):
            rows.append(line)
    return rows


@pytest.mark.parametrize("page", [REPO / "docs" / "results.md", REPO / "README.md"], ids=lambda p: p.name)
def test_every_figure_row_names_its_raw_file(page):
    """A figure is a measurement: each row links the raw record under bench/results/ that it was read from."""
    rows = figure_rows(page)
    assert len(rows) >= 8, f"no figures table found in {page.name}"
    for row in rows:
        raw = [link for link in LINK.findall(row) if "bench/results/" in link]
        assert raw, f"{page.name}: a figure without its raw file under bench/results/:\n{row[:160]}"
        for link in raw:
            target = (page.parent / link.split("#")[0]).resolve()
            assert target.exists() and REPO / "bench" / "results" in target.parents, f"{page.name}: {link}"
