"""The custom op's Triton route (use_triton=True) against its torch route.

Triton decides at decoration time whether kernels are interpreted, so the check runs in a
subprocess started with TRITON_INTERPRET=1; nothing in the pytest process imports triton.
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

_SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, {here!r})
from helpers import make_neuron
from staa.ops import staa_lif_op

out = {{}}
for dtype in (torch.float64, torch.float32):
    for soft in (False, True):
        m = make_neuron(6, 3, seed=1, tsrd=0.0, v_reset=None if soft else 0.0, dtype=dtype)
        x = (torch.randn(3, 2, 6, 5, dtype=dtype, generator=torch.Generator().manual_seed(2)) * 1.5 + 0.5)
        x.requires_grad_()
        drop = torch.tensor([False, True, False])
        gout = torch.randn(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(3))
        res = []
        for use_triton in (False, True):
            s, h, v = staa_lif_op(x, m.params(), drop, m.cfg, store_v_seq=True, use_triton=use_triton)
            grads = torch.autograd.grad((s * gout).sum(), [x] + list(m.parameters()))
            res.append((s, v, grads))
        (s1, v1, g1), (s2, v2, g2) = res
        out[f"{{dtype}}-{{soft}}"] = dict(
            spikes_equal=bool(torch.equal(s1, s2)),
            state=float((v1 - v2).abs().max()),
            grad=max(float(((a - b).abs() / (1 + a.abs())).max()) for a, b in zip(g1, g2)),
        )
# Initial state (a leaf), the last state in the loss, a dropped first step, every surrogate kind.
for kind in ("rect", "atan", "sigmoid", "fast_sigmoid"):
    dtype = torch.float64
    m = make_neuron(6, 3, seed=4, tsrd=0.0, v_reset=0.0 if kind != "sigmoid" else None, dtype=dtype, surrogate=kind)
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(3, 2, 6, 5, dtype=dtype, generator=gen) * 1.5 + 0.5).requires_grad_()
    h0 = (torch.randn(2, 6, 5, dtype=dtype, generator=gen) * 0.5).requires_grad_()
    drop = torch.tensor([True, False, False])
    gout = torch.randn(x.shape, dtype=dtype, generator=gen)
    ghl = torch.randn(h0.shape, dtype=dtype, generator=gen)
    res = []
    for use_triton in (False, True):
        s, h, v = staa_lif_op(x, m.params(), drop, m.cfg, h0=h0, store_v_seq=True, use_triton=use_triton)
        grads = torch.autograd.grad((s * gout).sum() + (h * ghl).sum(), [x, h0] + list(m.parameters()))
        res.append((s, v, grads))
    (s1, v1, g1), (s2, v2, g2) = res
    out[f"{{dtype}}-h0-{{kind}}"] = dict(
        spikes_equal=bool(torch.equal(s1, s2)),
        state=float((v1 - v2).abs().max()),
        grad=max(float(((a - b).abs() / (1 + a.abs())).max()) for a, b in zip(g1, g2)),
    )
print(json.dumps(out))
"""


def test_triton_route_matches_torch_route():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("STAA_BACKEND", None)
    res = subprocess.run([sys.executable, "-c", _SCRIPT.format(here=HERE)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(out) == 8
    for case, r in out.items():
        tol = 1e-10 if "float64" in case else 1e-4
        assert r["spikes_equal"], case
        assert r["state"] <= tol and r["grad"] <= tol, (case, r)
