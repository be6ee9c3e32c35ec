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


# ----------------------------------------------------------------------------- shared memory per architecture
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def _launch():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import compile_kernels
    from staa.kernels import launch

    return launch, compile_kernels


def _weight_rows(name):
    """``(label, BLOCK_HD, BLOCK_WC, shared bytes, status)`` of every weights-kernel row of a committed table."""
    out = []
    for line in open(os.path.join(RESULTS, name)).read().splitlines():
        if line.startswith("| staa_bwd_weights_kernel |"):
            cells = [c.strip() for c in line.split("|")[1:-1]]
            tiles = dict(t.split("=") for t in cells[2].split())
            out.append((cells[1], int(tiles["BLOCK_HD"]), int(tiles["BLOCK_WC"]), int(cells[8]), cells[9]))
    return out


@pytest.mark.parametrize("name", ["kernel_compile_sm80_quick.md", "kernel_compile_sm89_quick.md",
                                  "kernel_compile_sm90_quick.md"])
def test_shared_memory_estimate_bounds_the_compiled_figures(name):
    """``weight_shared_bytes`` is what the launcher's choice rests on: it must not be below what
    the compiler allocated for any weights-kernel configuration of the committed tables (fp32
    compute for float32 and bfloat16 inputs)."""
    launch, _ = _launch()
    rows = _weight_rows(name)
    assert rows
    for label, hd, wc, shared, _ in rows:
        assert launch.weight_shared_bytes(hd, wc, 4) >= shared, (name, label, hd, wc, shared)


@pytest.mark.parametrize("arch", [80, 86, 89, 90])
@pytest.mark.parametrize("itemsize", [4, 8])
def test_weight_tile_fits_each_architecture(arch, itemsize):
    """At every shipped layer shape and a training batch, the chosen weight tile's estimate fits the
    architecture's limit; sm_80 and sm_90 keep the unlimited choice in fp32 (their tables stay valid)."""
    launch, ck = _launch()
    limit = launch.SMEM_LIMIT[arch]
    from staa._blocks import hidden_features

    for C, H, W in ck.SHAPES:
        ch = hidden_features(C, 4)
        NP = launch.tile_config(C, H * W).NP
        for T, B in ((4, 1), (4, 64)):
            wc = launch.weight_config(T, B, NP, C, (ch, ch, ch), T, has_gc=True, has_pos=True, smem=limit,
                                      itemsize=itemsize)
            free = launch.weight_config(T, B, NP, C, (ch, ch, ch), T, has_gc=True, has_pos=True, itemsize=itemsize)
            assert launch.weight_shared_bytes(wc.BLOCK_HD, wc.BLOCK_WC, itemsize) <= limit, (C, H, W)
            assert wc.BLOCK_HD <= free.BLOCK_HD and wc.BLOCK_WC <= free.BLOCK_WC
            if arch in (80, 90) and itemsize == 4:
                assert wc == free, (arch, C, H, W)
    # The goal layers on sm_89: the longer side halved.
    for C, P, tile in ((128, 1024, (32, 64)), (512, 16, (64, 32))):
        ch = hidden_features(C, 4)
        wc = launch.weight_config(4, 64, launch.tile_config(C, P).NP, C, (ch, ch, ch), 4, has_gc=True,
                                  has_pos=True, smem=launch.SMEM_LIMIT[89])
        assert (wc.BLOCK_HD, wc.BLOCK_WC) == tile


def test_device_smem_follows_the_override():
    import torch

    launch, _ = _launch()
    assert launch.device_smem(torch.device("cpu")) is None
    launch.smem_limit = 12345
    try:
        assert launch.device_smem(torch.device("cpu")) == 12345
    finally:
        launch.smem_limit = None


@pytest.mark.parametrize("name", ["kernel_compile_sm80_quick.md", "kernel_compile_sm89_quick.md",
                                  "kernel_compile_sm90_quick.md"])
def test_committed_quick_tables_compile_everything(name):
    """Every shipped configuration of the goal layers compiles within its architecture's shared
    memory (the sm_89 table had two weights-kernel rows over 101,376 B before the launcher chose
    the tile from the device's limit)."""
    text = open(os.path.join(RESULTS, name)).read()
    failed = [ln for ln in text.splitlines() if ln.startswith("| staa_") and "FAILED" in ln]
    assert not failed, f"{name}: {len(failed)} configurations failed:\n" + "\n".join(failed[:3])
    assert " 0 failed" in text or "0 failed to compile" in text
