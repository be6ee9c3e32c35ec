"""The compiled Triton kernels on a CUDA device (skipped without one; run by
benchmarks/gpu_check.sh). Same checks as the interpreter tests, in-process, plus the two
goal layer shapes and bitwise-deterministic gradients."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from triton_checks import check_deterministic_backward, check_non_finite_input, check_parity

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                       reason="TRITON_INTERPRET is set: these tests need compiled kernels"),
]


SMALL = {
    "fp32-odd-drops": (5, 2, 6, 7, dict(drop=[2, 4])),
    "bf16-split-soft-detach": (5, 1, 12, 33, dict(dtype="bfloat16", max_tile=64, v_reset=None, detach_reset=True,
                                                  drop=[1, 3])),
    "fp16-TBC": (3, 2, 7, 1, dict(dtype="float16", v_reset=-0.25, drop=[1])),
    "fp32-T1-B1": (1, 1, 5, 1, dict(v_reset=None)),
    "fp32-h0-atan-drop-first": (4, 2, 6, 7, dict(h0=True, grad_h_last=True, surrogate="atan", drop=[0, 2])),
    "bf16-h0-split-fast-sigmoid": (3, 1, 12, 33, dict(dtype="bfloat16", max_tile=64, h0=True, grad_h_last=True,
                                                      surrogate="fast_sigmoid", v_reset=None, drop=[1])),
    "fp64-sigmoid-h0": (3, 2, 5, 4, dict(dtype="float64", h0=True, surrogate="sigmoid", drop=[0])),
}


PATHS = [("per_step", "per_step"), ("persistent", "persistent"), ("persistent", "per_step")]


@pytest.mark.parametrize("paths", PATHS, ids=["-".join(p) for p in PATHS])
@pytest.mark.parametrize("name", list(SMALL))
def test_cuda_parity_small(name, paths):
    T, B, C, P, opts = SMALL[name]
    run = check_parity(T, B, C, P, device="cuda", fwd_path=paths[0], bwd_path=paths[1], **opts)
    assert any(k.startswith("staa_fwd_persistent") for k in run.fwd_kernels) == (paths[0] == "persistent")
    assert any(k.startswith("staa_bwd_persistent") for k in run.bwd_kernels) == (paths[1] == "persistent")


# The goal layers at batch 2, in float64: with ~1e-15 relative agreement a margin of 1e-8
# is still seven orders of magnitude above any numerical difference, and unlike 1e-4 it is
# attainable for 10^5-10^6 potentials.
@pytest.mark.parametrize("path", ["per_step", "persistent"])
@pytest.mark.parametrize("shape", [(4, 2, 128, 1024), (4, 2, 512, 16)])
def test_cuda_parity_goal_shapes_fp64(shape, path):
    T, B, C, P = shape
    check_parity(T, B, C, P, device="cuda", dtype="float64", drop=[2], margin=1e-8, fwd_path=path, bwd_path=path)


@pytest.mark.parametrize("shape,path", [((4, 2, 128, 256), "per_step"), ((4, 3, 512, 16), "persistent")])
def test_cuda_gradients_are_deterministic(shape, path):
    # margin 0: no comparison with the reference, any inputs do
    assert check_deterministic_backward(*shape, device="cuda", drop=[1], margin=0.0, path=path) >= 20


@pytest.mark.parametrize("path", ["per_step", "persistent"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_cuda_non_finite_input_gives_nan_spikes(path, value):
    # Compiled code must keep V - V (no folding to 0): NaN spikes exactly where the reference has them.
    check_non_finite_input(path=path, value=float(value), device="cuda", all_nan_rows=[[1, 1], [2, 1]],
                           h_last_nan_samples=[1])


@pytest.mark.parametrize("path", ["per_step", "persistent"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_direct_launch_equals_the_jit(path, dtype, monkeypatch):
    """Direct launching (kernels/_direct.py, the default) against every launch through triton's JIT
    (STAA_TRITON_LAUNCH=jit): outputs and gradients bitwise equal, with an aligned input and one
    4 bytes off 16-byte alignment (another specialisation of the kernels reading it); the second
    direct run keeps no new kernel (every launch found in the cache)."""
    from triton_cases import backward, build_case, flat_grads, forward, on_device

    from staa.kernels import _direct, launch

    T, B, C, P = 4, 2, 12, 33
    x, params, drop, kw, _, _, h0 = build_case(T, B, C, P, dtype=dtype, h0=True, drop=[2])
    x, drop, params, h0 = on_device("cuda", x, drop, params, h0)
    off = torch.empty(x.numel() + 8, dtype=x.dtype, device="cuda")[2:x.numel() + 2].view(x.shape).copy_(x)
    gs = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(device="cuda", dtype=x.dtype)

    def run(inp):
        out = forward(launch, inp, drop, h0, params, kw, store_v_seq=True, path=path, keep_stats=True)
        grads = backward(launch, gs, None, inp, drop, h0, params, out[3], out[4], kw, path=path, stats=out[5])
        return [t for t in out if t is not None] + flat_grads(grads)

    for inp in (x, off):
        monkeypatch.setenv("STAA_TRITON_LAUNCH", "jit")
        jit = run(inp)
        monkeypatch.setenv("STAA_TRITON_LAUNCH", "direct")
        first = run(inp)
        kept = _direct.cached()
        second = run(inp)
        assert kept > 0 and _direct.cached() == kept
        assert len(jit) == len(first) == len(second)
        for i, (a, b, c) in enumerate(zip(jit, first, second)):
            assert torch.equal(a, b), f"output {i}: direct launching differs from the JIT's"
            assert torch.equal(b, c), f"output {i}: the cached launch differs from the first"
