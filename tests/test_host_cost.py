"""benchmarks/host_cost.py: the launchers' host cost with launches intercepted (correctness only,
nothing here is timed against a figure). Triton runs in subprocesses: it must not see
TRITON_INTERPRET, and the pytest process stays free of it."""
import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BENCH = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCH)
import host_cost  # noqa: E402  (no torch or triton at import)

pytestmark = pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import triton"], capture_output=True).returncode != 0,
    reason="triton is not installed")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    env.pop("STAA_TRITON_PATH", None)
    return env


def _probe(body: str):
    code = f"import json, sys\nsys.path.insert(0, {BENCH!r})\nimport host_cost\n" + body
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=ROOT,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def blocks():
    return _probe(r"""
p = host_cost.Prober((3, 1, 8, 2, 2))
print(json.dumps({path: p.block(path, 4) for path in host_cost.PATHS}))
""")


def test_every_launch_is_intercepted_and_bound(blocks):
    T = 3
    for path, res in blocks.items():
        c = res["counts"]
        assert c["launches"] == c["binding_calls"] > 0
        assert c["launch"] == "direct"  # this tree launches compiled kernels directly (triton 3.4-3.9)
        assert sum(c["kernels"].values()) == c["launches"]
        assert any(("persistent" in k) == (path == "persistent") and ("elem" in k or "persistent" in k)
                   for k in c["kernels"]), c["kernels"]
        for k, v in res["samples"].items():
            assert len(v) == 4 and all(x >= 0 for x in v), (path, k, v)
        assert min(res["samples"]["total"]) > 0 and min(res["samples"]["binding"]) > 0
    # Both paths share the plane reduction and the weight-gradient launches; per_step adds two
    # launches per step forward, two per step plus one backward, in place of the two persistent ones.
    assert blocks["per_step"]["counts"]["launches"] - blocks["persistent"]["counts"]["launches"] == 4 * T - 1


def test_every_allocation_and_op_is_attributed(blocks):
    for res in blocks.values():
        c = res["counts"]
        # The wrapped torch functions catch every allocation dispatch sees, so none hides in launcher Python.
        assert c["allocations"] == c["allocations_dispatched"] > 0
        assert c["torch_ops"] == sum(c["torch_op_names"].values())
        assert c["check_calls"] >= 2  # _check in each launcher


@pytest.mark.skipif(shutil.which("git") is None, reason="git is needed to describe the trees")
def test_two_trees_side_by_side(tmp_path):
    out = tmp_path / "hc"
    res = subprocess.run([sys.executable, os.path.join(BENCH, "host_cost.py"), "--trees", ROOT, ROOT,
                          "--paths", "per_step", "--rounds", "2", "--samples", "1", "--warmup", "1",
                          "--shape", "2,1,8,2,2", "--out", str(out)],
                         capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    data = json.loads((tmp_path / "hc.json").read_text())
    labels = [t["label"] for t in data["trees"]]
    assert len(set(labels)) == 2 and all(lab.endswith(("#1", "#2")) for lab in labels)
    assert {r["tree"] for r in data["results"]} == set(labels)
    assert all(r["n"] == 2 for r in data["results"])
    assert [c["path"] for c in data["comparison"]] == ["per_step"]
    assert "target" not in data  # the base is not the starting commit
    for r in data["results"]:
        m = r["median_us"]
        assert abs(m["plain"] - m["checks"] - m["allocation"] - m["torch_ops"] - m["launcher_python"]) < 1e-6
    md = (tmp_path / "hc.md").read_text()
    assert "| tree | path | launches |" in md and labels[0] in md and labels[1] in md

    doc = tmp_path / "triton.md"
    doc.write_text("intro\n" + host_cost.docs_section(None) + "\ntail\n")
    assert "To be filled by `python benchmarks/host_cost.py --docs`" in doc.read_text()
    host_cost.write_docs(data, doc=str(doc))
    once = doc.read_text()
    host_cost.write_docs(data, doc=str(doc))
    assert doc.read_text() == once and once.startswith("intro\n") and once.endswith("\ntail\n")
    assert "To be filled" not in once and "| tree | path | launches |" in once


def test_docs_page_has_the_generated_section():
    text = open(os.path.join(ROOT, "docs", "triton.md")).read()
    assert text.count(host_cost.BEGIN) == 1 and text.count(host_cost.END) == 1


def test_binding_cost_classifies_predicts_and_prices_the_remedies():
    """benchmarks/binding_cost.py at a tiny shape: every launch recorded and classified by the
    kernels' own signatures, predictions that follow the fitted line, and remedies that add up."""
    res = _probe(r"""
sys.path.insert(0, host_cost.HERE)
import binding_cost
print(json.dumps(binding_cost.run((3, 1, 8, 2, 2), 90, 4, 1)))
""")
    m = res["model"]
    assert set(m["per_argument_us"]) == set(m["points_us"]) == {"pointer", "int", "float", "constexpr"}
    T = 3
    ps, pe = res["paths"]["per_step"], res["paths"]["persistent"]
    assert ps["launches"] - pe["launches"] == 4 * T - 1
    for path in (ps, pe):
        assert sum(e["launches"] for e in path["kernels"].values()) == path["launches"]
        for name, e in path["kernels"].items():
            k = e["kinds"]
            expect = m["per_launch_us"] + sum(m["per_argument_us"][kind] * n for kind, n in k.items())
            assert abs(e["predicted_us"] - e["launches"] * expect) < 1e-6 * max(1.0, abs(expect)), name
    # The MLP kernels take the 16 weight pointers among their pointers; their launches are T each.
    fwd = ps["kernels"]["staa_fwd_mlp_kernel"]
    assert fwd["launches"] == T and fwd["kinds"]["pointer"] >= 16
    assert ps["kernels"]["staa_bwd_mlp_kernel"]["launches"] == T
    r = ps["remedies"]
    assert r["mlp_launches"] == 2 * T
    assert abs(r["pack_weights_us"] - 2 * T * 15 * m["per_argument_us"]["pointer"]) < 1e-9
    assert abs(r["both_us"] - r["fold_mlp_launches_us"] - r["pack_weights_us"]) < 1e-9
