"""The documentation site's hooks (scripts/mkdocs_hooks.py) on a small project of their own: links
leaving docs/ are followed into the repository, a link to a missing file fails the strict build, and
docstrings' reStructuredText tables become Markdown. Needs the ``docs`` extra, which
scripts/check_release.sh installs before running this file (CI); skipped without it."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("mkdocs", reason="needs the docs extra: pip install -e '.[docs]'")


def _hooks():
    spec = importlib.util.spec_from_file_location("staa_mkdocs_hooks", ROOT / "scripts" / "mkdocs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rst_simple_table_becomes_markdown_with_an_overflowing_cell():
    text = textwrap.dedent("""\
        Kinds:

        ======= ========= ===
        kind    formula   p
        ======= ========= ===
        ``a``   ``1/p``   1.0
        ``long_kind`` ``x|y`` 2.0
        ======= ========= ===

        After.""")
    out = _hooks().rst_simple_tables_to_markdown(text)
    assert out.splitlines()[2:7] == [
        "| kind | formula | p |",
        "|---|---|---|",
        "| ``a`` | ``1/p`` | 1.0 |",
        "| ``long_kind`` | ``x|y`` | 2.0 |",
        "",
    ], out
    assert out.startswith("Kinds:\n\n") and out.endswith("\n\nAfter.")
    assert _hooks().rst_simple_tables_to_markdown("a == b\n=== not a table") == "a == b\n=== not a table"


def _project(tmp_path: Path, index: str) -> Path:
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "bench").mkdir()
    (tmp_path / "mkdocs.yml").write_text(textwrap.dedent(f"""\
        site_name: t
        strict: true
        hooks: [{ROOT / "scripts" / "mkdocs_hooks.py"}]
        nav: [index.md, sub/page.md]
        validation: {{anchors: warn, unrecognized_links: warn}}
        """))
    (tmp_path / "docs" / "index.md").write_text(index)
    (tmp_path / "docs" / "sub" / "page.md").write_text("# Page\n\n## A heading\n")
    (tmp_path / "README.md").write_text("# Readme\n\nBack to [the page](docs/sub/page.md#a-heading).\n")
    (tmp_path / "bench" / "table.md").write_text("# Table\n\nSee [the script](run.py).\n")
    (tmp_path / "bench" / "run.py").write_text("print('``` fenced')\n")
    return tmp_path


def _build(project: Path):
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", "site"],
                          cwd=project, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))


def test_links_leaving_docs_are_followed_into_the_repository(tmp_path):
    project = _project(tmp_path, textwrap.dedent("""\
        # Home

        [readme](../README.md), [table](../bench/table.md), [folder](../bench/),
        [page](sub/page.md#a-heading). Code is left alone: `[x](../missing.md)`

        ```python
        # [y](../missing.md)
        ```
        """))
    proc = _build(project)
    assert proc.returncode == 0, proc.stderr
    site = project / "site"
    home = (site / "index.html").read_text()
    for href in ('href="repo/"', 'href="repo/bench/table/"', 'href="repo/bench/"', 'href="sub/page/#a-heading"'):
        assert href in home, href
    assert "[x](../missing.md)" in home
    # the README's link into docs/ leads to the real page; the table's link to the script, to a page showing it
    assert 'href="../sub/page/#a-heading"' in (site / "repo" / "index.html").read_text()
    assert 'href="../run.py/"' in (site / "repo" / "bench" / "table" / "index.html").read_text()
    assert "``` fenced" in (site / "repo" / "bench" / "run.py" / "index.html").read_text()
    assert 'href="table/"' in (site / "repo" / "bench" / "index.html").read_text()


@pytest.mark.parametrize("link, message", [
    ("../bench/nope.md", "does not exist in the repository"),
    ("../README.md#no-such-heading", "does not contain an anchor"),
    ("sub/page.md#nope", "does not contain an anchor"),
])
def test_a_broken_link_fails_the_strict_build(tmp_path, link, message):
    proc = _build(_project(tmp_path, f"# Home\n\n[broken]({link})\n"))
    assert proc.returncode != 0
    assert message in proc.stderr and link.split("#")[-1] in proc.stderr, proc.stderr


def test_docstring_habits_become_markdown():
    to_md = _hooks().docstring_to_markdown
    assert to_md("See :func:`staa.convert` and :class:`~staa.surrogate.Surrogate`.") == (
        "See `staa.convert` and `Surrogate`.")
    assert to_md("Per step::\n\n    X = I + PE\n") == "Per step:\n\n    X = I + PE\n"
    assert to_md("a::b stays") == "a::b stays"
    assert to_md("Example.\n\n>>> x = 1\n>>> x\n1\n\nAfter.") == (
        "Example.\n\n```pycon\n>>> x = 1\n>>> x\n1\n```\n\nAfter.")
    # a '>>>' inside a running paragraph is not an example
    assert to_md("Compare a\n>>> b here") == "Compare a\n>>> b here"


def test_lazy_exports_of_staa_resolve_statically():
    """The API reference reads ``staa.convert`` etc. without importing staa: the extension
    turns ``_LAZY`` into aliases."""
    griffe = pytest.importorskip("griffe")
    import staa

    ext = _hooks().StaaDocstrings()
    package = griffe.load("staa", search_paths=[str(ROOT / "src")], extensions=griffe.load_extensions(ext),
                          resolve_aliases=True)
    for name in [n for n in staa.__all__ if n != "__version__"]:
        member = package[name]
        assert member.docstring is not None and member.docstring.value, name
    assert package["convert"].target_path == "staa._convert.convert"


def test_two_space_sublists_are_nested_as_on_github():
    nest = _hooks().nest_two_space_sublists
    text = "- **A**, chosen:\n  - one\n    more of one\n  - two\n- B\n\n  not a bullet\n"
    assert nest(text) == "- **A**, chosen:\n    - one\n    more of one\n    - two\n- B\n\n  not a bullet\n"
    fenced = "- a\n```\n  - code\n```\n"
    assert nest(fenced) == fenced
    after_paragraph = "Text\n  - not under a bullet\n"
    assert nest(after_paragraph) == after_paragraph
