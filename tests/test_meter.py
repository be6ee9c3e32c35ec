"""The CPU traffic and operation meter (benchmarks/meter.py) and the Triton route's host syncs.

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
TABLE = os.path.join(ROOT, "benchmarks", "results", "traffic.json")
FIGURES = ("launches", "ops", "distinct_bytes", "total_bytes", "plane_bytes")

pytestmark = pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import triton"], capture_output=True).returncode != 0,
    reason="triton is not installed")

_PRELUDE = r"""
import json, os, sys
sys.path.insert(0, {bench!r})
import meter
"""


def _run(body: str, timeout=900):
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("STAA_TRITON_PATH", None)
    code = _PRELUDE.format(bench=os.path.join(ROOT, "benchmarks")) + body
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=timeout)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


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
