"""Every relative link in the README and docs/ points at a file that exists."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _links(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [m.group(1) for m in LINK.finditer(text)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z]+://|^mailto:|^#", target):
            continue
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"


def test_docs_pages_are_linked_from_the_index():
    index = {(ROOT / "docs" / t.split("#")[0]).resolve() for t in _links(ROOT / "docs" / "index.md")}
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "index.md":
            assert page.resolve() in index, f"docs/{page.name} is not linked from docs/index.md"
