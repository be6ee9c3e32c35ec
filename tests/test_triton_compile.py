"""Every kernel configuration the quick set of layer shapes launches compiles for sm_90.

Runs ``benchmarks/compile_kernels.py --quick`` in a subprocess (the kernels must be
decorated without TRITON_INTERPRET), with triton's bundled ptxas; no GPU is needed. The
full table over all shipped layer shapes is ``benchmarks/results/kernel_compile_sm90.md``.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or platform.machine() != "x86_64" or sys.platform != "linux",
    reason="needs triton with its bundled CUDA toolchain (Linux x86_64)",
)


def test_quick_configurations_compile_for_sm90(tmp_path):
    out = tmp_path / "compile.md"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")  # compile for real, not from a cache
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "compile_kernels.py"), "--quick",
                          "--out", str(out)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    table = out.read_text()
    m = re.search(r"(\d+) distinct configurations, (\d+) failed to compile", table)
    assert m and int(m.group(1)) >= 8 and int(m.group(2)) == 0, table[:2000]
    # [128, 32, 32] runs the per-step kernels, [512, 4, 4] the persistent ones.
    kernels = {"staa_plane_reduce_kernel", "staa_fwd_mlp_kernel", "staa_fwd_elem_kernel", "staa_fwd_persistent_kernel",
               "staa_bwd_mlp_kernel", "staa_bwd_elem_kernel", "staa_bwd_persistent_kernel",
                   "staa_bwd_weights_kernel", "staa_bwd_weights_sum_kernel"}
    rows = [line for line in table.splitlines() if line.startswith("| staa_")]
    assert {r.split("|")[1].strip() for r in rows} == kernels
    for r in rows:
        cells = [c.strip() for c in r.split("|")[1:-1]]
        assert cells[-1] == "ok" and int(cells[5]) > 0, r  # registers were read back from ptxas
    # One backward variant per surrogate kind, in both loop paths; the forward never has one.
    flags = [(r.split("|")[1].strip(), r.split("|")[4]) for r in rows]
    for kind in ("rect", "atan", "sigmoid", "fast_sigmoid"):
        for kernel in ("staa_bwd_elem_kernel", "staa_bwd_persistent_kernel"):
            assert any(k == kernel and f"sg={kind}" in f for k, f in flags), (kernel, kind)
    assert not any(k.startswith("staa_fwd") and "sg=" in f for k, f in flags)
    # The initial-state variants (h0 read at step 0, dL/dh0 written, dL/dH_{T-1} read).
    for kernel in ("staa_fwd_elem_kernel", "staa_fwd_persistent_kernel", "staa_plane_reduce_kernel",
                   "staa_bwd_elem_kernel", "staa_bwd_persistent_kernel"):
        assert any(k == kernel and "HAS_H0" in f for k, f in flags), kernel
    assert any(k == "staa_bwd_elem_kernel" and "HAS_GHL" in f for k, f in flags)


def test_compile_script_refuses_interpreter_mode():
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "compile_kernels.py"), "--quick"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert res.returncode == 2 and "TRITON_INTERPRET" in res.stderr
