"""The CPU traffic and operation meter (benchmarks/meter.py), the Triton route's host syncs, and
the kernels' per-program block loads (no program's chain of loads grows with the batch or the
plane; no atomic operation runs).

The meter runs the kernels under TRITON_INTERPRET=1, which triton reads when kernels are
decorated, so every check runs in a subprocess; nothing in the pytest process imports triton.
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TABLE = os.path.join(ROOT, "benchmarks", "results", "traffic-parallel-sums.json")
CHAINS = os.path.join(ROOT, "benchmarks", "results", "chains.json")
FIGURES = ("launches", "ops", "distinct_bytes", "total_bytes", "plane_bytes")

pytestmark = pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import triton"], capture_output=True).returncode != 0,
    reason="triton is not installed")

_PRELUDE = r"""
import json, os, sys
sys.path.insert(0, {bench!r})
import meter
"""


def _start(body: str):
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env.pop("STAA_TRITON_PATH", None)
    code = _PRELUDE.format(bench=os.path.join(ROOT, "benchmarks")) + body
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)


def _finish(proc, timeout=900):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def _run(body: str, timeout=900):
    return _finish(_start(body), timeout)


@pytest.fixture(scope="module")
def measured():
    """The meter at the small ``test`` shape, both dtypes, both loop paths."""
    return _run(r"""
rows = meter.run(["test"], list(meter.DTYPES), list(meter.PATHS), log=sys.stderr)
print(json.dumps(rows))
""")


def _key(row):
    return (tuple(row["shape"]), row["dtype"], row["path"])


def test_meter_does_not_exceed_committed_table(measured):
    with open(TABLE) as f:
        committed = {_key(r): r for r in json.load(f)["results"]}
    assert len(measured) == 4
    risen = []
    for row in measured:
        ref = committed.get(_key(row))
        assert ref is not None, f"no committed row for {_key(row)} in {TABLE}"
        for phase in ("forward", "backward"):
            for fig in FIGURES:
                assert row[phase][fig] > 0, (_key(row), phase, fig)
                if row[phase][fig] > ref[phase][fig]:
                    risen.append(f"{_key(row)} {phase} {fig}: {row[phase][fig]} > committed {ref[phase][fig]}")
        if row["glue_ops"] > ref["glue_ops"]:
            risen.append(f"{_key(row)} glue ops: {row['glue_ops']} > committed {ref['glue_ops']}")
    assert not risen, "figures above benchmarks/results/traffic.json (regenerate it if intended):\n" + \
        "\n".join(risen)


def test_meter_counts_are_consistent(measured):
    for row in measured:
        for phase in ("forward", "backward"):
            r = row[phase]
            # every distinct address is loaded or stored at least once
            assert r["total_bytes"] >= r["distinct_bytes"] > 0
            assert sum(row[phase + "_detail"]["kernels"].values()) == r["launches"]
            assert sum(row[phase + "_detail"]["ops"].values()) == r["ops"]
        # the plane traffic cannot be below what the op itself must move (a check on the meter)
        floor = row["plane_floor"]["op"]
        for phase in ("forward", "backward"):
            assert row["per_neuron_step"][phase]["plane_bytes"] >= floor[phase] - 1e-9, (_key(row), phase)
        kernels = set(row["forward_detail"]["kernels"]) | set(row["backward_detail"]["kernels"])
        persistent = any("persistent" in k for k in kernels)
        assert persistent == (row["path"] == "persistent"), (row["path"], kernels)


def test_meter_fails_loudly_when_hooks_are_missing_or_dead():
    out = _run(r"""
from triton.runtime import interpreter as interp
out = {}
def attempt(name):
    try:
        with meter.Meter():
            pass
        out[name] = None
    except meter.MeterHookError as exc:
        out[name] = str(exc)

orig = interp.InterpreterBuilder.create_masked_load
del interp.InterpreterBuilder.create_masked_load
attempt("missing_load")
interp.InterpreterBuilder.create_masked_load = orig

orig_call = interp.GridExecutor.__call__
interp.GridExecutor.__call__ = None
attempt("missing_launch")
interp.GridExecutor.__call__ = orig_call

# a release whose plain load no longer goes through create_masked_load: the hook exists but sees nothing
orig_load = interp.InterpreterBuilder.create_load
def create_load(self, ptr, cache_policy, is_volatile):
    import numpy as np
    dt = interp._get_np_dtype(ptr.get_element_ty())
    ones = np.ones_like(ptr.data, dtype=bool)
    return interp.TensorHandle(interp._interpreter.load(ptr.data, ones, np.zeros_like(ptr.data, dtype=dt), dt),
                               ptr.get_element_ty())
interp.InterpreterBuilder.create_load = create_load
attempt("dead_load")
interp.InterpreterBuilder.create_load = orig_load
attempt("intact")
print(json.dumps(out))
""")
    assert out["missing_load"] and "create_masked_load" in out["missing_load"], out
    assert out["missing_launch"] and "GridExecutor.__call__" in out["missing_launch"], out
    assert out["dead_load"] and "calibration" in out["dead_load"], out
    assert out["intact"] is None, out


def test_sync_detector_sees_host_reads():
    """The detector behind the no-sync test: host reads planted in the launcher are reported,
    the interpreter's own copies inside launches are not."""
    out = _run(r"""
from staa.kernels import launch
orig = launch.staa_lif_forward
def planted(x, drop, *args, **kwargs):
    drop.tolist()
    if (x.sum() > 1e30):
        pass
    return orig(x, drop, *args, **kwargs)
launch.staa_lif_forward = planted
with meter.Meter() as m:
    row = m.measure(meter.SHAPES["test"], "float32", "persistent")
print(json.dumps(row["syncs"]))
""")
    assert any("Tensor.tolist" in s for s in out), out
    assert any("Tensor.__bool__" in s for s in out), out
    assert any("_local_scalar_dense" in s for s in out), out
    assert all("interpreter.py" not in s for s in out), out


def test_triton_route_has_no_host_sync(measured):
    """Forward + backward of STAALIF(backend="triton") calls no item/tolist/bool on tensors,
    no torch.cuda.synchronize and no data-dependent-size op outside the kernels (so a training
    step can be captured in a CUDA graph)."""
    syncs = sorted({s for row in measured for s in row["syncs"]})
    assert not syncs, "host synchronisations on the Triton route:\n" + "\n".join(syncs)


# ----------------------------------------------------------------------------- chains
def test_chain_growth_detector_flags_growth():
    """``meter.chain_growth`` on made-up counts: growth above 1.5x at B x16 or P x16 is reported,
    P x16 growth of a persistent kernel is not, and a kernel missing at the base is."""
    bad = _run(r"""
def k(n):
    return dict(launches=1, grid=[1, 1, 1], programs=1, max_loads=n)
rows = [dict(path="per_step", name="base", kernels={"a": k(10), "b": k(4), "staa_fwd_persistent_kernel": k(5)}),
        dict(path="per_step", name="B x16", kernels={"a": k(15), "b": k(7), "staa_fwd_persistent_kernel": k(5)}),
        dict(path="per_step", name="P x16", kernels={"a": k(10), "b": k(4), "staa_fwd_persistent_kernel": k(80),
                                                     "c": k(1)})]
print(json.dumps(meter.chain_growth(rows)))
""")
    assert len(bad) == 2, bad
    assert "B x16: b issues 7" in bad[0] and "1.75x" in bad[0]
    assert "P x16: c does not run at the base shape" in bad[1]


def test_no_program_chain_grows_with_batch_or_plane():
    """The chain table's shapes, measured afresh (both loop paths side by side, one process each):
    no kernel's block loads per program grow more than 1.5x when B grows 16x, nor when the plane
    does (the persistent kernels own one sample's plane by design: only B counts for them), no
    atomic operation runs (the meter raises), and the counts equal the committed table
    (benchmarks/results/chains.json: regenerate it with ``meter.py --chains`` when they change).
    The persistent path skips the P x16 shape: its other kernels are the per-step path's."""
    procs = {path: _start(f"""
shapes = {{n: s for n, s in meter.CHAIN_SHAPES.items() if {path!r} == "per_step" or n != "P x16"}}
rows = meter.chain_rows([{path!r}], shapes, log=sys.stderr)
print(json.dumps(dict(rows=rows, growth=meter.chain_growth(rows))))
""") for path in ("per_step", "persistent")}
    got = {path: _finish(proc) for path, proc in procs.items()}
    rows = [r for g in got.values() for r in g["rows"]]
    assert {(r["path"], r["name"]) for r in rows} == {("per_step", "base"), ("per_step", "B x16"),
                                                    ("per_step", "P x16"), ("persistent", "base"),
                                                    ("persistent", "B x16")}
    for r in rows:
        ks = r["kernels"]
        assert ks and all(c["max_loads"] > 0 and c["launches"] > 0 and c["programs"] > 0 for c in ks.values()), r
        assert any("persistent" in k for k in ks) == (r["path"] == "persistent"), r
    growth = [line for g in got.values() for line in g["growth"]]
    assert not growth, "block loads per program grow with B or the plane:\n" + "\n".join(growth)
    with open(CHAINS) as f:
        committed = {(r["path"], r["name"]): r["kernels"] for r in json.load(f)["results"]}
    stale = [f"{r['path']} {r['name']}" for r in rows if committed.get((r["path"], r["name"])) != r["kernels"]]
    assert not stale, f"counts differ from {CHAINS} (regenerate it): {stale}"


def test_meter_refuses_atomics():
    """A launcher that issues an atomic operation makes ``measure`` raise, naming the kernel."""
    out = _run(r"""
import triton, triton.language as tl
from staa.kernels import launch

@triton.jit
def planted_atomic_kernel(p_ptr):
    tl.atomic_add(p_ptr, 1.0)

orig = launch.staa_lif_forward
def planted(*args, **kwargs):
    import torch
    planted_atomic_kernel[(2,)](torch.zeros(1))
    return orig(*args, **kwargs)
launch.staa_lif_forward = planted
try:
    with meter.Meter(count_bytes=False) as m:
        m.measure(meter.SHAPES["test"], "float32", "persistent")
    print(json.dumps(None))
except meter.AtomicsError as exc:
    print(json.dumps(str(exc)))
""")
    assert out and "planted_atomic_kernel" in out and "2" in out, out
