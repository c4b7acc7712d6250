"""The README and docs/ pages: the README stays a short guide (the reference lives in docs/), and every
relative link in them resolves to a file and, where it names one, a heading of that file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_anchor_rule_matches_github():
    assert anchors("## SAR input and normalisation\n### Compare: the leaderboard\n") == {
        "sar-input-and-normalisation",
        "compare-the-leaderboard",
    }


def test_readme_is_a_short_guide_with_the_reference_in_docs():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300
    assert len(list((ROOT / "docs").glob("*.md"))) >= 3


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        missing_anchor = file.exists() and anchor and file.suffix == ".md"
        if not file.exists() or (missing_anchor and anchor not in anchors(file.read_text(encoding="utf-8"))):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"
