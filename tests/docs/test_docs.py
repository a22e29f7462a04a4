"""README and docs/: every relative link and image resolves to a file, the command-line page is the parser's own
help, and README's first screen shows a picture and the first commands."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@functools.cache  # a page is read once, however many links point into it
def anchors(page: Path) -> set[str]:
    """The headings' anchors as GitHub makes them: lower case, punctuation but - and _ dropped, spaces to -, and a
    repeated one numbered."""
    seen: dict[str, int] = {}
    out = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^#{1,6}\s+(.*?)\s*$", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return out


def test_heading_anchors_are_githubs():
    page = ROOT / "docs" / "benchmarks.md"
    assert "laser-reproduce-exhaustive-against---halving-reproduce_speedpy" in anchors(page)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(page):
    text = page.read_text(encoding="utf-8")
    missing = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue  # a web address
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
            missing.append(target)
    assert not missing, f"{page.name} links to files or headings that do not exist: {missing}"


def test_the_cli_page_is_the_parsers_own_help():
    from laserlm.cli.reference import markdown

    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == markdown(), \
        "docs/cli.md is out of date: run `make docs` (python -m laserlm.cli.reference > docs/cli.md)"


def test_readme_shows_before_it_tells_and_links_every_docs_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first = "\n".join(text.splitlines()[:80])
    images = [t for t in LINK.findall(first) if re.search(r"\.(png|jpg|svg)$", t)]
    assert images and all((ROOT / t).is_file() for t in images)
    assert "make demo" in first and "laser search" in first
    docs = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert len(docs) >= 6
    assert [d for d in docs if f"docs/{d}" not in text] == []
