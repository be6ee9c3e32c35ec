"""The README and docs/ stay true: links resolve, every Python snippet runs as written, and the
shell commands name scripts, flags and versions that exist.

Snippet rules (for writers of docs):

- a ```python block runs, in order with the page's other Python blocks, in one fresh
  interpreter per page (a temporary working directory; names carry over between blocks);
- a ```bash / ```sh / ```shell block runs with bash from the repository root;
- a block right after the line ``<!-- snippet: no-run -->`` (a reason may follow) does not run:
  a Python block is only compiled; a shell block only has what it names checked: the scripts
  and test paths exist, every ``--flag`` given to a script or to ``python -m staa`` appears in
  its source, and ``torch==``/``spikingjelly==`` pins agree with setup.cfg and scripts/test.sh;
- ```text and unlabeled blocks are output and are not checked.
"""
from __future__ import annotations

import functools
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
SNIPPET_PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^( *)```(\S*)\s*$")
NO_RUN = re.compile(r"^\s*<!--\s*snippet:\s*no-run\b.*-->\s*$")
SHELL = ("bash", "sh", "shell", "console")

# Blocks in pages maintained elsewhere that do not yet follow the rules above, by page and a
# piece of their text. Each is expected to fail (or, for shell blocks, is not run) until it is
# fixed; a listed Python block that starts to pass fails this test so that its entry is removed.
PENDING = {
}


# ----------------------------------------------------------------------------- links
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


def test_docs_cite_no_private_modules():
    """Docs name public paths only (`staa.X`), never `staa._module`."""
    for page in SNIPPET_PAGES:
        rel = str(page.relative_to(ROOT))
        hits = re.findall(r"staa\._\w+", page.read_text())
        assert not hits, f"{rel} cites private modules: {sorted(set(hits))}"


# ----------------------------------------------------------------------------- snippets
def blocks(page):
    """``[(lang, first_line, code, no_run)]`` for every fenced block of ``page``."""
    lines = page.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = len(m.group(1)), m.group(2).lower()
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        j = i + 1
        while j < len(lines) and not re.match(r"^ *```\s*$", lines[j]):
            j += 1
        code = "\n".join(ln[indent:] if ln[:indent].strip() == "" else ln for ln in lines[i + 1 : j])
        out.append((lang, i + 2, code, bool(NO_RUN.match(prev))))
        i = j + 1
    return out


def _pending(rel, code):
    return next((why for (p, piece), why in PENDING.items() if p == rel and piece in code), None)


def _cases():
    for page in SNIPPET_PAGES:
        rel = str(page.relative_to(ROOT))
        for lang, line, code, no_run in blocks(page):
            if lang in ("python", "py") or lang in SHELL:
                yield pytest.param(page, lang, line, code, no_run, id=f"{rel}:{line}")


_RUNNER = r"""
import json, sys, traceback
blocks = json.load(open(sys.argv[1]))
ns = {"__name__": "__main__"}
results = {}
for line, code in blocks:
    try:
        exec(compile(code, f"snippet at line {line}", "exec"), ns)
        results[line] = None
    except BaseException as exc:
        results[line] = [type(exc).__name__, getattr(exc, "name", None) or "", traceback.format_exc()]
json.dump(results, open(sys.argv[2], "w"))
"""


@functools.lru_cache(maxsize=None)
def _run_page(page):
    """Run a page's runnable Python blocks in order in one interpreter: ``{first_line: None | error}``."""
    runnable = [(line, code) for lang, line, code, no_run in blocks(page) if lang in ("python", "py") and not no_run]
    with tempfile.TemporaryDirectory() as tmp:
        src, res = Path(tmp, "blocks.json"), Path(tmp, "results.json")
        src.write_text(json.dumps(runnable))
        env = dict(os.environ, MPLBACKEND="Agg")
        env.pop("STAA_BACKEND", None)
        proc = subprocess.run([sys.executable, "-c", _RUNNER, str(src), str(res)], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=900)
        if not res.exists():
            raise AssertionError(f"the snippet runner died:\n{proc.stdout}\n{proc.stderr}")
        return {int(k): v for k, v in json.loads(res.read_text()).items()}


def _flags_known(flags, source: Path, what):
    text = source.read_text()
    unknown = [f for f in flags if f.startswith("--") and f.split("=")[0] not in text]
    assert not unknown, f"{what}: flags {unknown} do not appear in {source.relative_to(ROOT)}"


def _version_tuple(v):
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def _check_pin(token):
    name, _, version = token.partition("==")
    if name == "torch":
        spec = re.search(r"torch\s*>=\s*([\d.]+)\s*,\s*<\s*([\d.]+)", (ROOT / "setup.cfg").read_text())
        lo, hi = _version_tuple(spec.group(1)), _version_tuple(spec.group(2))
        assert lo <= _version_tuple(version) < hi, f"torch=={version} is outside setup.cfg's range"
    elif name == "spikingjelly" and version.startswith("2"):
        assert token in (ROOT / "scripts" / "test.sh").read_text(), f"{token} is not what scripts/test.sh installs"


def check_shell_arguments(code):
    """What a shell block names exists: scripts, test paths, flags and pinned versions."""
    text = re.sub(r"\\\n", " ", code)
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
            words = shlex.split(part)
            while words and (re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]) or words[0] in ("sudo", "time")):
                words = words[1:]
            if not words or words[0] in ("export", "cd", "apt-get", "apt", "source", "."):
                continue
            cmd, args = words[0], words[1:]
            if cmd in ("pip", "pip3") or (cmd.startswith("python") and args[:2] == ["-m", "pip"]):
                for a in args:
                    if "==" in a:
                        _check_pin(a)
                continue
            if cmd.startswith("python"):
                if args[:1] == ["-m"]:
                    mod, rest = args[1], args[2:]
                    if mod == "staa":
                        _flags_known(rest, ROOT / "src" / "staa" / "__main__.py", part)
                    elif mod == "pytest":
                        _paths_exist(_pytest_paths(rest), part)
                    continue
                if args and not args[0].startswith("-"):
                    script = ROOT / args[0]
                    assert script.is_file(), f"{part}: {args[0]} does not exist"
                    _flags_known(args[1:], script, part)
                continue
            if cmd == "bash" or cmd.endswith(".sh"):
                script_arg = args[0] if cmd == "bash" else cmd
                script = ROOT / script_arg
                assert script.is_file(), f"{part}: {script_arg} does not exist"
                rest = args[1:] if cmd == "bash" else args
                if script_arg == "scripts/test.sh":  # its arguments go to pytest
                    _paths_exist(_pytest_paths(rest), part)
                else:
                    _flags_known(rest, script, part)


def _pytest_paths(args):
    """The test paths among pytest arguments (the values of -k, -m, -p, ... are not paths)."""
    paths, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in ("-k", "-m", "-p", "-n", "-W", "-o", "--maxfail", "--deselect", "--ignore"):
            skip = True
        elif not a.startswith("-"):
            paths.append(a)
    return paths


def _paths_exist(paths, what):
    missing = [p for p in paths if not (ROOT / p.split("::")[0]).exists()]
    assert not missing, f"{what}: {missing} do not exist"


@pytest.mark.parametrize("page, lang, line, code, no_run", list(_cases()))
def test_snippet(page, lang, line, code, no_run):
    rel = str(page.relative_to(ROOT))
    pending = _pending(rel, code)
    if lang in SHELL:
        check_shell_arguments(code)
        if no_run:
            return
        if pending:
            pytest.xfail(f"not run: {pending}")
        env = dict(os.environ)
        env.pop("STAA_BACKEND", None)
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"{rel}:{line} failed:\n{proc.stdout}\n{proc.stderr}"
        return
    if no_run:
        try:
            compile(code, f"{rel}:{line}", "exec")
        except SyntaxError as exc:
            if pending:
                pytest.xfail(pending)
            raise AssertionError(f"{rel}:{line} (no-run) does not compile: {exc}") from exc
        return
    error = _run_page(page)[line]
    if error is not None and error[0] == "ModuleNotFoundError" and error[1].split(".")[0] in ("spikingjelly", "matplotlib"):
        pytest.skip(f"{error[1]} is not installed")
    if pending:
        assert error is not None, f"{rel}:{line} now runs: remove its PENDING entry ({pending})"
        pytest.xfail(pending)
    assert error is None, f"{rel}:{line} failed:\n{error[2]}"


def test_pending_entries_still_match_a_block():
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in SNIPPET_PAGES}
    stale = [key for key in PENDING if key[1] not in texts.get(key[0], "")]
    assert not stale, f"PENDING entries that match no block any more (remove them): {stale}"


def test_shell_checker_catches_wrong_commands():
    check_shell_arguments("python -m staa --T 2 --json\nbash scripts/test.sh tests/test_docs.py -k snippet")
    for bad in ("python -m staa --epochs 3", "python benchmarks/no_such.py", "pip install torch==2.1.0",
                "bash scripts/test.sh tests/test_nothing.py", "python docs/examples/train_fmnist.py --nope 1"):
        with pytest.raises(AssertionError):
            check_shell_arguments(bad)


def test_api_page_shows_the_current_signature():
    """docs/api.md's signature of STAALIF is the constructor's."""
    import staa

    text = (ROOT / "docs" / "api.md").read_text()
    m = re.search(r"staa\.STAALIF(\(.*?\))\n```", text, flags=re.S)
    assert m, "docs/api.md has no staa.STAALIF(...) signature block"
    shown = re.sub(r"\s+", " ", m.group(1)).replace("( ", "(")
    params = [q.replace(annotation=inspect.Parameter.empty)  # the page shows names and defaults
              for q in list(inspect.signature(staa.STAALIF.__init__).parameters.values())[1:]]
    actual = str(inspect.Signature(params)).replace("'", '"')
    assert shown == actual, f"docs/api.md shows\n  {shown}\nbut the constructor is\n  {actual}"


def test_api_page_names_every_parameter_of_the_reference():
    """docs/api.md's line for staa_lif_reference lists its parameters in order, with their defaults."""
    from staa.reference import staa_lif_reference

    text = (ROOT / "docs" / "api.md").read_text()
    m = re.search(r"`staa_lif_reference\((.*?)\)`", text)
    assert m, "docs/api.md does not show staa_lif_reference(...)"
    shown = [p.strip().split("=")[0] for p in m.group(1).split(",") if p.strip() not in ("*", "")]
    actual = list(inspect.signature(staa_lif_reference).parameters)
    assert shown == actual, f"docs/api.md shows {shown}, the function takes {actual}"
    for name, q in inspect.signature(staa_lif_reference).parameters.items():
        if q.default is not inspect.Parameter.empty:
            assert f"{name}={q.default!r}".replace("'", '"') in m.group(1), f"{name}'s default is not {q.default!r}"


def test_convert_reports_shown_are_the_printed_ones():
    """Each convert report docs/convert.md shows (a text block starting ``staa.convert:`` after a
    Python block) is what that block prints, line for line."""
    pytest.importorskip("spikingjelly")
    pytest.importorskip("snntorch")
    import contextlib
    import io

    page = ROOT / "docs" / "convert.md"
    found = blocks(page)
    ns = {"__name__": "__main__"}
    checked = 0
    for i, (lang, line, code, no_run) in enumerate(found):
        if lang not in ("python", "py") or no_run:
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"convert.md:{line}", "exec"), ns)
        nxt = next((b for b in found[i + 1:] if b[0] in ("python", "py", "text", "")), None)
        if nxt and nxt[0] in ("text", "") and nxt[2].startswith("staa.convert:"):
            printed = [ln.rstrip() for ln in out.getvalue().splitlines()]
            shown = [ln.rstrip() for ln in nxt[2].splitlines()]
            assert printed[:len(shown)] == shown, f"convert.md:{nxt[1]} shows\n{nxt[2]}\nbut the block prints\n{out.getvalue()}"
            checked += 1
    assert checked >= 2, "docs/convert.md shows fewer convert reports than expected"


def test_readme_first_screen_is_a_front_page():
    """The README's first screen: install, a quick start with STAALIF and convert for spikingjelly and
    snnTorch, and its cost quoted from a results file; the two set-up commands as CI runs them."""
    text = (ROOT / "README.md").read_text()
    first = "\n".join(text.splitlines()[:60])
    for piece in ("pip install -e .", "staa.STAALIF(", "spikingjelly", "snntorch", "staa.convert(", "<!-- fig:",
                  "docs/training.md", "docs/choosing-options.md", "docs/results/"):
        assert piece in first, f"the README's first 60 lines lack {piece!r}"
    for command in ("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e . "
                    "&& python -m staa", "python3 -m venv .venv && . .venv/bin/activate && bash scripts/test.sh"):
        assert command in text, f"the README lacks the set-up command {command!r}"
