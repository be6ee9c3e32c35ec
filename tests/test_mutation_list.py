"""scripts/mutation_check.py's list stays applicable: each mutation's code occurs exactly once,
its tests exist, and its keys are unique (so the check cannot silently mutate nothing)."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("mutation_check", os.path.join(ROOT, "scripts", "mutation_check.py"))
mc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mc)


def _source(path):
    rel = path.split("/", 1)[1]  # staa/<rel>: src/staa/<rel>, or kernels/<file> for staa/kernels/<file>
    real = os.path.join(ROOT, "kernels", rel.split("/", 1)[1]) if rel.startswith("kernels/") else \
        os.path.join(ROOT, "src", "staa", rel)
    with open(real) as f:
        return f.read()


def test_every_mutation_applies_once_and_names_existing_tests():
    keys = [m.key for m in mc.MUTATIONS]
    assert len(keys) == len(set(keys)) and 15 <= len(keys)
    for m in mc.MUTATIONS:
        assert _source(m.path).count(m.old) == 1, m.key
        assert m.old != m.new, m.key
        assert all(os.path.isfile(os.path.join(ROOT, t)) for t in m.tests), m.key
    assert any(m.fast for m in mc.MUTATIONS)
    assert {m.path.split("/")[-1] for m in mc.MUTATIONS if m.path.startswith("staa/kernels/")} == \
        {"staa_fwd.py", "staa_bwd.py", "_direct.py"}  # each kernel module and direct launching


def test_the_package_copy_is_the_installed_layout(tmp_path):
    pkg = mc.copy_package(str(tmp_path / "pkg"))
    assert os.path.isfile(os.path.join(pkg, "staa", "kernels", "launch.py"))
    assert os.path.isfile(os.path.join(pkg, "staa", "ops", "torch_impl.py"))
    mc.check_imports_come_from(pkg)


def test_blocked_sums_have_their_mutations():
    """The blocked sums over the batch and the plane keep a dropped partial, a wrong block
    offset and a reorder that breaks bitwise repeatability among the bugs, run against the tests
    that force those sums into several blocks and ranges."""
    reds = {m.key: m for m in mc.MUTATIONS if m.key.startswith("R")}
    assert len(reds) >= 5
    assert all(m.tests in (mc.REDUCTIONS, mc.REPEAT) for m in reds.values())
    assert any(m.tests == mc.REPEAT for m in reds.values())
    whats = " ".join(m.what for m in reds.values())
    for words in ("drops the last", "offset", "not bitwise repeatable"):
        assert words in whats, words


def test_readme_states_the_number_of_mutations():
    with open(os.path.join(ROOT, "CONTRIBUTING.md")) as f:  # the mutation check is described there
        readme = f.read()
    n, fast = len(mc.MUTATIONS), sum(m.fast for m in mc.MUTATIONS)
    assert f"applies\n{n} hand-written bugs" in readme or f"applies {n} hand-written bugs" in readme
    assert f"# all {n};" in readme and f"--fast a {fast}-bug subset" in readme
