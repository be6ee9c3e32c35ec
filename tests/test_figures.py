"""Every figure the README and docs/ quote from a benchmark or a run equals its source.

Marker rules (for writers of docs). Put an HTML comment right before the number; it does not
show on GitHub or in the site:

- a JSON source and the path of the value, with an optional format (Python format spec;
  a leading ``*N`` multiplies first, e.g. ``*100 .1f`` for a fraction shown in percent)::

      <!-- fig: benchmarks/results/neuron_cpu.json#results.cifar.providers.staa-torch.x_lif .2f -->1.64

  The path is split at dots; an integer picks a list item.

- a text source (a committed Markdown table or page) and a pattern in double quotes, in which
  ``{}`` stands for the figure and ``{_}`` for any text within one table cell; the pattern must
  match exactly once. The format (optional) applies as above; without it the page quotes the
  source's text as it is::

      <!-- fig: docs/results/convert-snntorch.md "| original | {_} | {} |" .1f -->60.2

The number after the marker (spaces allowed, a leading sign kept) must equal the formatted
source value. Sources name their command, commit and machine (a JSON source may leave them to
the Markdown table of the same name; a page under docs/results/ to the run files in its
``<name>-runs/`` folder). When a table is regenerated, the pages that quote it change in the
same commit: this test fails until they do.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
NUMBER = r"[-+\u2212]?\d[\d,]*(?:\.\d+)?"
MARKER = re.compile(
    r"<!--\s*fig:\s*(?P<source>[^\s#\"]+)(?:#(?P<path>\S+))?(?:\s+\"(?P<pattern>[^\"]*)\")?"
    r"(?:\s+(?P<fmt>(?:\*[\d.]+\s*)?[^\s\"]*?))?\s*-->(?P<after>[ \t]*(?P<value>" + NUMBER + r")?)"
)

# Figures the docs must keep marked: (page, a piece of the marker's source or path, how many at least).
REQUIRED = [
    ("README.md", "benchmarks/results/neuron_cpu_single_step.json", 1),
    ("docs/choosing-options.md", "benchmarks/results/neuron_cpu_single_step.json", 3),
    ("docs/choosing-options.md", "docs/results/accuracy-large.md", 4),
    ("docs/convert.md", "benchmarks/results/neuron_cpu_single_step.json", 1),
    ("docs/convert.md", "docs/results/convert-snntorch.md", 6),
    ("docs/convert.md", "docs/results/convert-practice.md", 2),
    ("docs/performance.md", "benchmarks/results/neuron_cpu.json", 6),
    ("docs/performance.md", "benchmarks/results/gpu_graph.md", 2),
    ("docs/performance.md", "benchmarks/results/traffic", 1),
]


class FigureError(AssertionError):
    pass


def _json_value(data, path, where):
    value = data
    for key in path.split("."):
        try:
            value = value[int(key)] if isinstance(value, list) else value[key]
        except (KeyError, IndexError, ValueError, TypeError):
            raise FigureError(f"{where}: no {key!r} on the path {path!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or (
            isinstance(value, str) and not re.fullmatch(NUMBER, value)):
        raise FigureError(f"{where}: {path!r} is {value!r}, not a number")
    return value


def _pattern_value(text, pattern, where):
    if pattern.count("{}") != 1:
        raise FigureError(f"{where}: the pattern {pattern!r} needs exactly one {{}}")
    regex = re.escape(pattern).replace(r"\{_\}", r"[^|\n]*?").replace(r"\{\}", f"({NUMBER})")
    hits = re.findall(regex, text)
    if len(hits) != 1:
        raise FigureError(f"{where}: the pattern {pattern!r} matches {len(hits)} times in the source, not once")
    return hits[0]


def _format(value, fmt):
    if not fmt:
        return str(value)
    scale = 1.0
    m = re.match(r"\*([\d.]+)\s*(.*)$", fmt)
    if m:
        scale, fmt = float(m.group(1)), m.group(2)
    number = float(str(value).replace(",", "").replace("\u2212", "-")) * scale
    return format(number, fmt)


def _normal(text):
    return text.replace("\u2212", "-").replace(",", "")


def expected(source, path, pattern, fmt, where, root=ROOT):
    """The figure a marker asks for, formatted as the page must show it."""
    file = root / source
    if not file.is_file():
        raise FigureError(f"{where}: the source {source} does not exist")
    if path is not None:
        if file.suffix != ".json":
            raise FigureError(f"{where}: a #path needs a JSON source, not {source}")
        return _format(_json_value(json.loads(file.read_text()), path, where), fmt)
    if pattern is None:
        raise FigureError(f"{where}: the marker gives neither a #path nor a \"pattern\"")
    return _format(_pattern_value(file.read_text(), pattern, where), fmt)


def markers(text):
    """``[(line, match)]`` for every figure marker of a page's text."""
    return [(text.count("\n", 0, m.start()) + 1, m) for m in MARKER.finditer(text)]


def check_text(text, name, root=ROOT):
    """The differences between a page's marked figures and their sources (empty when all agree)."""
    errors = []
    for line, m in markers(text):
        where = f"{name}:{line}"
        try:
            want = expected(m.group("source"), m.group("path"), m.group("pattern"), m.group("fmt"), where, root)
        except FigureError as exc:
            errors.append(str(exc))
            continue
        got = m.group("value")
        if got is None:
            errors.append(f"{where}: no number right after the marker for {m.group('source')}")
        elif _normal(got) != _normal(want):
            errors.append(f"{where}: the page says {got}, {m.group('source')} gives {want}")
    return errors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_marked_figures_equal_their_source(page):
    errors = check_text(page.read_text(), str(page.relative_to(ROOT)))
    assert not errors, "marked figures differ from their sources:\n" + "\n".join(errors)


def test_every_fig_comment_is_a_well_formed_marker():
    """A comment that starts like a marker but does not parse would silently check nothing."""
    for page in PAGES:
        text = page.read_text()
        loose = len(re.findall(r"<!--\s*fig:", text))
        assert loose == len(markers(text)), f"{page.relative_to(ROOT)} has a malformed figure marker"


def test_no_marker_starts_a_line():
    """A line that starts with an HTML comment ends the paragraph in the docs site (Python-Markdown
    reads it as an HTML block), so a marker always follows text on its line."""
    for page in PAGES:
        starts = [i + 1 for i, ln in enumerate(page.read_text().splitlines()) if re.match(r"\s*<!--\s*fig:", ln)]
        assert not starts, f"{page.relative_to(ROOT)}: lines {starts} start with a figure marker"


@pytest.mark.parametrize("page, piece, least", REQUIRED)
def test_listed_figures_are_marked(page, piece, least):
    found = [m for _, m in markers((ROOT / page).read_text()) if piece in m.group(0)]
    assert len(found) >= least, f"{page} marks {len(found)} figures from {piece}, expected at least {least}"


_COMMAND = re.compile(r"\b(?:python3?|bash|PYTHON=\S+ bash)\s+(?:-m\s+)?\S+")
_COMMIT = re.compile(r"(?i)commit\W{0,4}[0-9a-f]{7,40}\b|[0-9a-f]{7,40} \(commit\)")
_MACHINE = re.compile(r"(?i)\b(?:machine|cpu|cpus|cores|h100|h200)\b")


def _provenance_text(source):
    file = ROOT / source
    texts = [file.read_text()]
    if file.suffix == ".json" and file.with_suffix(".md").is_file():
        texts.append(file.with_suffix(".md").read_text())
    runs = file.with_name(file.stem + "-runs")
    if runs.is_dir():
        texts += [p.read_text() for p in sorted(runs.glob("*.json"))[:3]]
    return "\n".join(texts)


# Sources written before their script recorded the command, with what they lack; each entry goes
# when the table is regenerated (benchmarks/bench_neuron.py now writes "command" into both files).
PENDING_PROVENANCE = {}


def _missing_provenance(source):
    text = _provenance_text(source)
    return [what for what, rx in (("command", _COMMAND), ("commit", _COMMIT), ("machine", _MACHINE))
            if not rx.search(text)]


def test_sources_name_command_commit_and_machine():
    sources = {m.group("source") for page in PAGES for _, m in markers(page.read_text())}
    assert sources, "no marked figures found"
    for source in sorted(sources):
        missing = _missing_provenance(source)
        allowed = PENDING_PROVENANCE.get(source)
        if allowed:
            assert missing == [allowed], f"{source}: remove or update its PENDING_PROVENANCE entry ({missing})"
            continue
        assert not missing, f"{source} (a figure source) does not name its {', '.join(missing)}"


# ----------------------------------------------------------------------------- the checker itself
def _first_marked_page():
    for page in PAGES:
        found = [m for _, m in markers(page.read_text()) if m.group("value")]
        if found:
            return page, found
    pytest.fail("no page has a marked figure")


def _bump(number):
    """A different number of the same form (keeps sign, decimals and width)."""
    digits = [i for i, c in enumerate(number) if c.isdigit()]
    last = digits[-1]
    return number[:last] + str((int(number[last]) + 1) % 10) + number[last + 1:]


def test_an_edited_figure_fails():
    """Every marked figure of every page, changed by one digit, is reported (and only it)."""
    pages = [page for page in PAGES if markers(page.read_text())]
    assert {ROOT / "README.md", ROOT / "docs" / "choosing-options.md", ROOT / "docs" / "performance.md"} <= set(pages)
    for page in pages:
        text = page.read_text()
        found = [m for _, m in markers(text) if m.group("value")]
        for m in found:
            start = m.start("value")
            edited = text[:start] + _bump(m.group("value")) + text[m.end("value"):]
            errors = check_text(edited, page.name)
            assert len(errors) == 1 and "the page says" in errors[0], errors


def test_the_checker_catches_broken_markers(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"a": {"b": [0.5, 1.2345]}, "s": "x"}))
    (tmp_path / "t.md").write_text("| row | 1.0 | 61.25 ± 2.1 |\n| other | 2.0 | 3.0 |\n| dup | 7 |\n| dup | 7 |\n")
    good = ('<!-- fig: r.json#a.b.1 .2f -->1.23 and <!-- fig: r.json#a.b.0 *100 .0f -->50% and '
            '<!-- fig: t.md "| row | {_} | {} ±" .1f -->61.2 and <!-- fig: t.md "| other | {} |" -->2.0')
    assert check_text(good, "good", tmp_path) == []
    bad = {
        "<!-- fig: r.json#a.b.1 .2f -->1.24": "the page says 1.24",
        "<!-- fig: r.json#a.c .2f -->1.23": "no 'c'",
        "<!-- fig: r.json#s -->1": "not a number",
        "<!-- fig: missing.json#a -->1": "does not exist",
        "<!-- fig: r.json#a.b.1 .2f --> about": "no number right after",
        '<!-- fig: t.md "| dup | {} |" -->7': "matches 2 times",
        '<!-- fig: t.md "| none | {} |" -->7': "matches 0 times",
        "<!-- fig: t.md .1f -->7": "neither",
    }
    for text, message in bad.items():
        errors = check_text(text, "bad", tmp_path)
        assert len(errors) == 1 and message in errors[0], (text, errors)


def test_a_regenerated_source_leaves_no_page_behind(tmp_path):
    """Changing a value in a source (as a rerun would) makes every page that quotes it fail."""
    page, found = _first_marked_page()
    m = found[0]
    source = m.group("source")
    copy = tmp_path / source
    copy.parent.mkdir(parents=True, exist_ok=True)
    original = (ROOT / source).read_text()
    if m.group("path"):
        data = json.loads(original)
        *head, key = m.group("path").split(".")
        node = data
        for k in head:
            node = node[int(k)] if isinstance(node, list) else node[k]
        key = int(key) if isinstance(node, list) else key
        node[key] = float(str(node[key]).replace(",", "")) * 1.5 + 1
        copy.write_text(json.dumps(data))
    else:
        value = _pattern_value(original, m.group("pattern"), "source")
        regex = re.escape(m.group("pattern")).replace(r"\{_\}", r"[^|\n]*?").replace(r"\{\}", f"({NUMBER})")
        hit = re.search(regex, original)
        copy.write_text(original[:hit.start(1)] + _bump(value) + "9" + original[hit.end(1):])
    errors = check_text(m.group(0), page.name, tmp_path)
    assert errors and "the page says" in errors[0], errors
