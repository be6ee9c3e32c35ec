"""MkDocs hooks for the documentation site (mkdocs.yml: ``hooks:``); nothing here reaches the network.

The pages under docs/ are written to read on GitHub too, so some of them link to files outside
docs/ (``../benchmarks/results/neuron_cpu.md``, ``../src/staa/reference.py``, ``../README.md``), and
the README links into docs/. MkDocs only knows docs/, so this hook:

* follows every relative link of every page (and of the pages it adds, transitively) to the file it
  names in the repository; a link to a file that does not exist is a warning, so
  ``mkdocs build --strict`` fails on it exactly as on a broken link inside docs/;
* adds each file outside the site to it under ``repo/<path in the repository>``: a Markdown file as a
  page (its own links rewritten the same way, links back into docs/ to the real pages), a text file
  (a script, a source file, a JSON table) as a page showing it as a code block, anything else as it is;
  and rewrites the link to point there. Files under docs/ that mkdocs.yml excludes from the site
  (docs/README.md) count as outside;
* nests the bullets that GitHub nests at a 2-space indent (Python-Markdown needs 4);
* (``StaaDocstrings``, a griffe extension named in mkdocs.yml) resolves the names ``staa`` exports
  lazily and writes the docstrings' reStructuredText habits (roles, ``::``, doctest lines, simple
  tables) as Markdown.
"""
from __future__ import annotations

import ast
import logging
import posixpath
import re
from pathlib import Path

from griffe import Alias, Extension
from mkdocs.structure.files import File, Files, InclusionLevel

log = logging.getLogger("mkdocs.plugins.staa")

REPO_PREFIX = "repo"
TEXT_LANG = {".py": "python", ".sh": "bash", ".json": "json", ".cfg": "ini", ".toml": "toml",
             ".yml": "yaml", ".yaml": "yaml", ".txt": "text", ".cff": "yaml", "": "text"}
# A link or an image target, or a code span or fenced block to leave alone.
_CODE_OR_LINK = re.compile(
    r"(?P<fence>^(?P<ticks>```|~~~)[^\n]*\n.*?^(?P=ticks)[ \t]*$)"
    r"|(?P<span>(?P<bt>`+).+?(?P=bt))"
    r"|(?P<open>\]\()(?P<target>[^)\s]+)(?P<close>\))",
    re.S | re.M,
)

# A target that is not a relative path: a URL, an anchor on the same page, a site-absolute path.
_NOT_RELATIVE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^#|^/")

# The repository files a page links to are part of the site, reached from the page, not the menu.
NOT_IN_NAV = InclusionLevel.NOT_IN_NAV
_state: dict = {}


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _real_path(page_src_uri: str, config) -> Path:
    """The repository file a site page comes from (for a folder's listing, ``<folder>/index.md``)."""
    if page_src_uri in _state["page_real"]:
        return _state["page_real"][page_src_uri]
    return Path(config.docs_dir).resolve() / page_src_uri


def _relative_targets(markdown: str):
    for m in _CODE_OR_LINK.finditer(markdown):
        if m.group("target") is not None and not _NOT_RELATIVE.match(m.group("target")):
            yield m.group("target")


def _is_source(real: Path) -> bool:
    return real.is_file() and real.suffix in TEXT_LANG and real.stat().st_size < 200_000


def _site_uri(real: Path, config, files: Files) -> str | None:
    """The src_uri a repository file or folder has in the site, or None if it is not there yet.
    Text files other than Markdown (scripts, sources) are shown on a page of their own, also
    when mkdocs copies them from docs/ as they are."""
    if real.is_dir() or _is_source(real):
        return _state["outside"].get(real)
    docs = Path(config.docs_dir).resolve()
    try:
        rel = real.relative_to(docs).as_posix()
    except ValueError:
        rel = None
    if rel is not None:
        f = files.get_file_from_path(rel)
        if f is not None and not f.inclusion.is_excluded():
            return rel
    return _state["outside"].get(real)


def _add(real: Path, config, files: Files, queue: list) -> None:
    """Put a repository file or folder into the site; Markdown pages go on ``queue`` to be followed."""
    rel = real.relative_to(_root(config)).as_posix()
    if real.is_dir():
        uri = f"{REPO_PREFIX}/{rel}/index.md"
        entries = sorted(p for p in real.iterdir() if p.is_file() and not p.name.startswith("."))
        lines = [f"# `{rel}/`", "", "| file |", "|---|", *(f"| [`{p.name}`]({p.name}) |" for p in entries)]
        files.append(File.generated(config, uri, content="\n".join(lines) + "\n", inclusion=NOT_IN_NAV))
        _state["page_real"][uri] = real / "index.md"
        for p in entries:
            if _site_uri(p, config, files) is None:
                _add(p, config, files, queue)
    elif real.suffix == ".md":
        uri = f"{REPO_PREFIX}/{rel}"
        files.append(File.generated(config, uri, abs_src_path=str(real), inclusion=NOT_IN_NAV))
        _state["page_real"][uri] = real
        queue.append(real)
    elif _is_source(real):
        uri = f"{REPO_PREFIX}/{rel}.md"
        text = real.read_text()
        ticks = "`" * max(3, 1 + max((len(t) for t in re.findall(r"`+", text)), default=0))
        body = f"# `{rel}`\n\n{ticks}{TEXT_LANG[real.suffix]}\n{text.rstrip()}\n{ticks}\n"
        files.append(File.generated(config, uri, content=body, inclusion=NOT_IN_NAV))
        _state["page_real"][uri] = real
    else:
        uri = f"{REPO_PREFIX}/{rel}"
        files.append(File.generated(config, uri, abs_src_path=str(real), inclusion=NOT_IN_NAV))
    _state["outside"][real] = uri


def on_config(config):
    _state.clear()
    _state.update(outside={}, page_real={})
    return config


def on_files(files: Files, config) -> Files:
    """Bring every file that a page links to from outside the site into it, transitively."""
    root = _root(config)
    docs = Path(config.docs_dir).resolve()
    queue = [docs / f.src_uri for f in files.documentation_pages()]
    seen = set()
    while queue:
        page = queue.pop()
        if page in seen:
            continue
        seen.add(page)
        for target in _relative_targets(page.read_text()):
            path = target.split("#", 1)[0]
            if not path:
                continue
            real = (page.parent / path).resolve()
            if not real.exists():
                continue  # reported in on_page_markdown, with the page that has the link
            if not real.is_relative_to(root):
                continue  # reported in on_page_markdown
            if _site_uri(real, config, files) is None:
                _add(real, config, files, queue)
    return files


_BULLET = re.compile(r"^(?P<indent> *)[-*+] ")


def nest_two_space_sublists(markdown: str) -> str:
    """GitHub nests a bullet indented by 2 spaces under a ``- `` item; Python-Markdown needs 4 and
    would flatten the list. Indent such bullets (outside fenced code) by 4."""
    lines, fence, parent = markdown.split("\n"), None, None
    for i, line in enumerate(lines):
        ticks = re.match(r"^ *(```|~~~)", line)
        if ticks:
            fence = None if fence == ticks.group(1) else (fence or ticks.group(1))
            continue
        if fence or not line.strip():
            continue
        m = _BULLET.match(line)
        if m and len(m.group("indent")) == 0:
            parent = 0
        elif m and len(m.group("indent")) == 2 and parent == 0:
            lines[i] = "  " + line
        elif not line.startswith(" "):
            parent = None  # a paragraph or heading at the margin ends the list
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    src = page.file.src_uri
    markdown = nest_two_space_sublists(markdown)
    real_page = _real_path(src, config)
    root = _root(config)

    def rewrite(m: re.Match) -> str:
        target = m.group("target")
        if target is None or _NOT_RELATIVE.match(target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        real = (real_page.parent / path).resolve()
        rel_page = real_page.relative_to(root).as_posix()
        if not real.exists():
            log.warning("%s links to %r, which does not exist in the repository", rel_page, target)
            return m.group(0)
        if not real.is_relative_to(root):
            log.warning("%s links to %r, outside the repository", rel_page, target)
            return m.group(0)
        uri = _site_uri(real, config, files)
        if uri is None:
            log.warning("%s links to %r, which the site does not carry", rel_page, target)
            return m.group(0)
        new = posixpath.relpath(uri, posixpath.dirname(src) or ".")
        if new == target.split("#", 1)[0]:
            return m.group(0)
        return f"{m.group('open')}{new}{'#' + anchor if anchor else ''}{m.group('close')}"

    return _CODE_OR_LINK.sub(rewrite, markdown)


# ------------------------------------------------------------------ docstrings (a griffe extension)
_RST_BORDER = re.compile(r"^(?P<indent> *)=+(?: +=+)+ *$")


def rst_simple_tables_to_markdown(text: str) -> str:
    """reStructuredText simple tables (``=== ===`` borders) in ``text`` as Markdown tables.

    Columns start where the border's ``=`` runs start; a cell whose text runs past the next
    column's start keeps the word it overflows with."""
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        m = _RST_BORDER.match(lines[i])
        ends = [j for j in range(i + 1, len(lines)) if lines[j] == lines[i]] if m else []
        if len(ends) < 2:
            out.append(lines[i])
            i += 1
            continue
        head_end, body_end = ends[0], ends[1]
        starts = [k.start() for k in re.finditer(r"=+", lines[i])]

        def cells(row: str) -> list[str]:
            cuts = [starts[0]]
            for c in starts[1:]:
                while 0 < c < len(row) and row[c - 1] != " " and row[c] != " ":
                    c += 1
                cuts.append(c)
            cuts.append(len(row))
            return [row[a:b].strip() for a, b in zip(cuts, cuts[1:])]

        indent = m.group("indent")
        header = [" ".join(c) for c in zip(*(cells(r) for r in lines[i + 1:head_end]))]
        out.append(indent + "| " + " | ".join(header) + " |")
        out.append(indent + "|" + "---|" * len(starts))
        for row in lines[head_end + 1:body_end]:
            if row.strip():
                out.append(indent + "| " + " | ".join(cells(row)) + " |")
        i = body_end + 1
    return "\n".join(out)


# Sphinx cross-reference roles: :func:`staa.convert`, :class:`~staa.surrogate.Surrogate`
_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):`~?([^`]+)`")
_DOCTEST = re.compile(r"^(?P<indent> *)>>> ")


def docstring_to_markdown(text: str) -> str:
    """The reStructuredText habits of the docstrings in their Markdown form: roles as code spans
    (``~a.b.C`` as ``C``), a paragraph's ``::`` before a literal block as ``:``, doctest lines in a
    ``pycon`` block (Markdown would read ``>>>`` as nested quotes), simple tables as tables."""
    text = _ROLE.sub(lambda m: "`" + (m.group(1).rsplit(".", 1)[-1] if m.group(0).count("~") else m.group(1)) + "`",
                     text)
    text = re.sub(r"(?<=\S)::(?=\n\s*\n)", ":", text)
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        m = _DOCTEST.match(lines[i])
        if not m or (out and out[-1].strip() and not out[-1].strip().endswith(":")):
            out.append(lines[i])
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].strip():
            j += 1
        indent = m.group("indent")
        out += [indent + "```pycon", *lines[i:j], indent + "```"]
        i = j
    return rst_simple_tables_to_markdown("\n".join(out))


class StaaDocstrings(Extension):
    """mkdocstrings' ``extensions:`` entry for the API reference.

    * ``staa`` exports some names lazily (``_LAZY``: name -> module, read by ``__getattr__``), which
      static analysis cannot follow: each becomes an alias of the object it names, as an import would.
    * Docstrings are rewritten by :func:`docstring_to_markdown` before they are parsed.
    """

    def on_module_members(self, *, mod, **kwargs) -> None:
        if mod.path != "staa" or "_LAZY" not in mod.members:
            return
        lazy = ast.literal_eval(str(mod.members["_LAZY"].value))
        for name, module in lazy.items():
            if name not in mod.members:
                mod.set_member(name, Alias(name, f"staa{module}.{name}", parent=mod))

    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = docstring_to_markdown(obj.docstring.value)
