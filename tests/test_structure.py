"""The shape of the code base: no import circle among staa's modules, no long function, no long file.

Imports inside functions count (a circle that only closes at call time is still a circle to read).
Triton kernels (functions decorated ``@triton.jit``) are exempt from the function-length rule: a
kernel is one fused loop that cannot call helpers freely.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = {"staa": os.path.join(ROOT, "src", "staa"), "staa.kernels": os.path.join(ROOT, "kernels")}
MAX_FUNCTION_LINES = 100
MAX_FILE_LINES = 600


def _modules():
    """``{module name: path}`` for every .py file of staa (kernels as ``staa.kernels``)."""
    found = {}
    for package, folder in SOURCES.items():
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = os.path.relpath(dirpath, folder)
            prefix = package if rel == "." else package + "." + rel.replace(os.sep, ".")
            if package == "staa" and prefix.startswith("staa.kernels"):
                continue
            for f in filenames:
                if f.endswith(".py"):
                    name = prefix if f == "__init__.py" else f"{prefix}.{f[:-3]}"
                    found[name] = os.path.join(dirpath, f)
    return found


def _imports(name: str, path: str, modules) -> set:
    """The staa modules ``name`` imports, anywhere in the file."""
    is_package = path.endswith("__init__.py")
    package = name if is_package else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # "staa.kernels.launch.x" -> the module that holds it
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _cycle(graph):
    """One import circle as a list of modules, or None."""
    state = {}

    def visit(n, path):
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state:
                found = visit(m, path + [m])
                if found:
                    return found
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n, [n])
            if found:
                return found
    return None


def test_no_import_circle():
    modules = _modules()
    graph = {n: _imports(n, p, modules) for n, p in modules.items()}
    # A package's __init__ re-exporting its submodules is not a circle with them: a submodule
    # importing its own package's __init__ is what would close one, and that edge is kept.
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"


def _is_kernel(fn) -> bool:
    return any("jit" in ast.unparse(d) for d in fn.decorator_list)


def _long_functions(path: str):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or _is_kernel(fn):
            continue
        body = fn.body
        if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            body = body[1:]
        if not body:
            continue
        lines = body[-1].end_lineno - body[0].lineno + 1
        if lines > MAX_FUNCTION_LINES:
            yield f"{os.path.relpath(path, ROOT)}:{fn.lineno} {fn.name} ({lines} lines)"


def test_no_function_over_100_lines():
    long = [f for p in _modules().values() for f in _long_functions(p)]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (docstring excluded): {long}"


@pytest.mark.parametrize("name", sorted(n for n in _modules() if not n.startswith("staa.kernels")))
def test_no_file_over_600_lines(name):
    path = _modules()[name]
    with open(path, encoding="utf-8") as f:
        n = sum(1 for _ in f)
    assert n <= MAX_FILE_LINES, f"{os.path.relpath(path, ROOT)} has {n} lines (at most {MAX_FILE_LINES})"


def test_the_rules_see_what_they_check(tmp_path):
    """The checks themselves find a circle, a long function and a kernel."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    src = tmp_path / "m.py"
    src.write_text("def f():\n    '''doc\n    doc'''\n" + "    x = 1\n" * 101
                   + "@triton.jit\ndef k():\n" + "    x = 1\n" * 200)
    assert [s.split()[1] for s in _long_functions(str(src))] == ["f"]
    modules = {"staa": "", "staa.a": "", "staa.b": ""}
    init = tmp_path / "a.py"
    init.write_text("def g():\n    from .b import thing\n")
    assert _imports("staa.a", str(init), modules) == {"staa.b"}


def test_convert_core_imports_no_adapter_and_adapters_not_each_other():
    modules = _modules()
    adapters = {"staa._convert.spikingjelly", "staa._convert.snntorch"}
    core = {"staa._convert._core", "staa._convert._probe", "staa._convert._report", "staa._convert._adapter"}
    assert adapters | core <= set(modules)
    for name in core:
        assert not _imports(name, modules[name], modules) & (adapters | {"staa._convert"}), name
    for name in adapters:
        assert not _imports(name, modules[name], modules) & (adapters - {name}), name
