"""The Triton kernels under TRITON_INTERPRET=1 against the reference, on the CPU.

This directory runs in its own pytest process with TRITON_INTERPRET=1 set before anything
imports triton (tests/interpret/conftest.py; scripts/test.sh runs it). The case builders are
in tests/triton_cases.py, the checks shared with the GPU tests in tests/triton_checks.py.
Every case asserts that no membrane potential of the reference lies within ``MARGIN`` of the
threshold or of the surrogate window's edges, so a spike or surrogate flip cannot hide behind (or
excuse) a tolerance. Fresh ``torch.empty`` allocations are NaN-poisoned in every case.

Tolerances (``triton_cases.TOLERANCES``): float64 1e-12 (states) / 1e-10 (gradients);
float32 1e-5 / 1e-4 relative; bf16/fp16 grad_x one rounding of the input dtype.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edge_cases import (EDGE_CASES, EXPECTED_FIRST_STEP, if_edge_input, reference_if_neuron, run_if_neuron,
                        upstream_gradient)
from triton_cases import (MARGIN, ROOT, backward, build_case, flat_grads, flat_params, forward, launcher_settings,
                          make_params, margin_of, poisoned, recorded_launches, tolerances)
from triton_checks import Mismatches, check_deterministic_backward, check_non_finite_input, check_parity

SURROGATES = ["rect", "atan", "sigmoid", "fast_sigmoid"]
BOTH_PATHS = ["per_step", "persistent"]


CASES = {
    # name: (T, B, C, P, options)
    "T5-default-drops": (5, 2, 6, 7, dict(drop=[2, 4])),
    "T1-B1-soft": (1, 1, 5, 1, dict(v_reset=None)),
    "bf16-split-plane-detach-soft": (5, 1, 12, 33, dict(dtype="bfloat16", max_tile=64, v_reset=None,
                                                        detach_reset=True, drop=[1, 3])),
    "fp16-TBC-input-neg-reset": (3, 2, 7, 1, dict(dtype="float16", v_reset=-0.25, drop=[1])),
    "fp64-gc-only": (4, 1, 3, 5, dict(dtype="float64", v_reset=-0.25, sa=False, pe=False, drop=[3])),
    "no-gc-split-detach": (3, 2, 9, 10, dict(gc=False, detach_reset=True, max_tile=32, drop=[2])),
    "if-neuron": (3, 1, 4, 6, dict(gc=False, sa=False, pe=False, store_v_seq=False)),
    "threshold-width": (4, 2, 5, 4, dict(v_threshold=0.75, surrogate_width=0.5, drop=[1, 2])),
    "T5-rebuilt-stats": (5, 2, 6, 7, dict(drop=[2, 4], keep_stats=False)),
}


def _check_reductions(run, opts):
    # With the forward's reductions kept (the op's route), the backward never re-reads the plane
    # to rebuild them; without, it must (when a GC or SA block needs them).
    blocks = opts.get("gc", True) or opts.get("sa", True)
    rebuilt = "staa_plane_reduce_kernel" in run.bwd_kernels
    assert rebuilt == (blocks and not opts.get("keep_stats", True)), run.bwd_kernels


@pytest.mark.parametrize("name", list(CASES))
def test_parity(name):
    # These planes are small enough for the persistent kernels; force the per-step ones.
    T, B, C, P, opts = CASES[name]
    run = check_parity(T, B, C, P, fwd_path="per_step", bwd_path="per_step", **opts)
    assert "staa_fwd_elem_kernel" in run.fwd_kernels and "staa_fwd_persistent_kernel" not in run.fwd_kernels
    assert "staa_bwd_elem_kernel" in run.bwd_kernels and "staa_bwd_persistent_kernel" not in run.bwd_kernels
    _check_reductions(run, opts)
    if opts.get("max_tile"):
        assert run.np > 1  # the plane really is split across programs


PERSISTENT_CASES = {
    "T5-oddC-drops-hard": (5, 2, 7, 5, dict(drop=[2, 4])),
    "T1-P1-soft": (1, 2, 5, 1, dict(v_reset=None)),
    "bf16-tiles-soft-detach": (5, 1, 12, 33, dict(dtype="bfloat16", max_tile=64, v_reset=None, detach_reset=True,
                                                  drop=[1, 3])),
    "fp64-gc-only-P1-neg-reset": (4, 1, 3, 1, dict(dtype="float64", v_reset=-0.25, sa=False, pe=False, drop=[3])),
    "sa-only-width": (3, 2, 9, 4, dict(gc=False, v_threshold=0.75, surrogate_width=0.5, drop=[1])),
    "if-neuron": (3, 1, 4, 6, dict(gc=False, sa=False, pe=False, store_v_seq=False)),
    "rebuilt-stats-tiles": (4, 1, 12, 33, dict(max_tile=64, drop=[2], keep_stats=False)),
}


@pytest.mark.parametrize("name", list(PERSISTENT_CASES))
def test_parity_persistent(name):
    T, B, C, P, opts = PERSISTENT_CASES[name]
    run = check_parity(T, B, C, P, fwd_path="persistent", bwd_path="persistent", **opts)
    fwd, bwd = set(run.fwd_kernels), set(run.bwd_kernels)
    assert "staa_fwd_persistent_kernel" in fwd and not fwd & {"staa_fwd_elem_kernel", "staa_fwd_mlp_kernel"}
    assert "staa_bwd_persistent_kernel" in bwd and not bwd & {"staa_bwd_elem_kernel", "staa_bwd_mlp_kernel"}
    _check_reductions(run, opts)
    if opts.get("max_tile"):
        assert run.np > 1  # the program loops over several tiles of its plane


def _run_both_paths(T, B, C, P, *, max_tile=None, grad_h_last=False, **case):
    """Forward (with the V sequence) and backward with ``path="persistent"`` and
    ``path="per_step"`` on the same inputs, fresh allocations NaN-poisoned: per path the five
    forward outputs, the flat gradients and the kernels launched."""
    x, params, drop, kw, _, _, h0 = build_case(T, B, C, P, **case)
    gen = torch.Generator().manual_seed(9)
    gs = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)
    ghl = torch.randn(x.shape[1:], generator=gen, dtype=torch.float64).to(x.dtype) if grad_h_last else None
    runs = {}
    with launcher_settings(max_tile=max_tile) as launch:
        for path in ("persistent", "per_step"):
            with recorded_launches() as kernels, poisoned():
                outs = forward(launch, x, drop, h0, params, kw, store_v_seq=True, path=path)
                grads = flat_grads(backward(launch, gs, ghl, x, drop, h0, params, outs[3], outs[4], kw, path=path))
            runs[path] = (outs, grads, sorted(set(kernels)))
    return runs


def _assert_paths_bitwise_equal(runs, min_grads):
    (out_a, grads_a, kernels_a), (out_b, grads_b, kernels_b) = runs["persistent"], runs["per_step"]
    differ = [n for n, a, b in zip(("spikes", "h_last", "v_seq", "u", "gate"), out_a, out_b) if not torch.equal(a, b)]
    assert not differ, f"forward outputs {differ} differ between the paths"
    assert len(grads_a) == len(grads_b) >= min_grads
    differ = [i for i, (a, b) in enumerate(zip(grads_a, grads_b)) if not torch.equal(a, b)]
    assert not differ, f"gradients {differ} (in flat_grads order) differ between the paths"
    assert kernels_a != kernels_b


@pytest.mark.parametrize("case", [
    dict(T=5, B=2, C=7, P=5, drop=[2, 4]),
    dict(T=4, B=1, C=12, P=33, dtype="bfloat16", max_tile=64, v_reset=None, drop=[1]),
    dict(T=1, B=1, C=3, P=1, gc=False),
])
def test_paths_agree_bitwise(case):
    # Same arithmetic in the same order: under the interpreter the two paths agree exactly,
    # forward outputs and every gradient.
    _assert_paths_bitwise_equal(_run_both_paths(**case), min_grads=2)


def test_path_rule():
    """``launch.loop_path``: the automatic rule, the environment variable, the argument and the
    errors for unknown values; and the kernels the launchers run when the variable forces the
    per-step path."""
    with launcher_settings(path_env="") as launch:
        auto = {f"{c}x{p}": launch.loop_path(c, p) for c, p in
                ((512, 16), (1000, 1), (128, 1024), (512, 64), (8192, 1), (8193, 1))}
        assert auto == {"512x16": "persistent", "1000x1": "persistent", "128x1024": "per_step",
                        "512x64": "per_step", "8192x1": "persistent", "8193x1": "per_step"}
    with launcher_settings(path_env="per_step") as launch:
        assert launch.loop_path(512, 16) == "per_step"
        assert launch.loop_path(512, 16, "persistent") == "persistent"  # the argument wins
        run = check_parity(2, 1, 4, 3)
        assert run.fwd_kernels == ["staa_fwd_elem_kernel", "staa_fwd_mlp_kernel", "staa_plane_reduce_kernel"]
        # The backward takes the forward's reductions (the op's route), so it launches no plane
        # reduction; two launches after the loop compute every parameter gradient.
        assert run.bwd_kernels == ["staa_bwd_elem_kernel", "staa_bwd_mlp_kernel", "staa_bwd_weights_kernel",
                                   "staa_bwd_weights_sum_kernel"]
    with launcher_settings(path_env="persistent") as launch:
        assert launch.loop_path(128, 1024) == "persistent"
    with launcher_settings(path_env="fast") as launch:
        with pytest.raises(ValueError, match="STAA_TRITON_PATH") as bad_env:
            launch.loop_path(4, 4)
        assert "'fast'" in str(bad_env.value)
        with pytest.raises(ValueError, match="path"):
            launch.loop_path(4, 4, "auto-ish")


@settings(max_examples=15, deadline=None)
@given(
    T=st.integers(1, 4), B=st.integers(1, 2), C=st.integers(1, 10), P=st.integers(1, 12),
    gc=st.booleans(), sa=st.booleans(), pe=st.booleans(), reset=st.sampled_from([0.0, -0.3, None]),
    detach=st.booleans(), v_th=st.sampled_from([0.75, 1.0, 1.5]), width=st.sampled_from([0.5, 1.0, 2.0]),
    drop_bits=st.integers(0, 15), dtype=st.sampled_from(["float32", "float64", "bfloat16"]),
    max_tile=st.sampled_from([None, 16]), seed=st.integers(0, 50),
    fwd_path=st.sampled_from(["persistent", "per_step"]), bwd_path=st.sampled_from(["persistent", "per_step"]),
    surrogate=st.sampled_from(SURROGATES), h0=st.booleans(), grad_h_last=st.booleans(), keep_stats=st.booleans(),
)
# float64 with a reset and threshold that fp32 cannot hold exactly (the kernels get fp32 scalars).
@example(T=1, B=1, C=1, P=1, gc=True, sa=True, pe=True, reset=-0.3, detach=False, v_th=0.75, width=0.5, drop_bits=0,
         dtype="float64", max_tile=None, seed=0, fwd_path="persistent", bwd_path="persistent", surrogate="rect",
         h0=False, grad_h_last=False, keep_stats=True)
def test_parity_hypothesis(T, B, C, P, gc, sa, pe, reset, detach, v_th, width, drop_bits, dtype, max_tile,
                           seed, fwd_path, bwd_path, surrogate, h0, grad_h_last, keep_stats):
    """Threshold, reset (hard to 0 or -0.3, soft), detach_reset, surrogate kind and rectangle
    width drawn with the shapes; any step dropped, the first included (with ``h0`` that is
    the first step of a call that continues a sequence)."""
    drop = [t for t in range(T) if drop_bits >> t & 1]
    check_parity(T, B, C, P, gc=gc, sa=sa, pe=pe, v_reset=reset, v_threshold=v_th, surrogate_width=width,
                 detach_reset=detach, drop=drop, dtype=dtype, max_tile=max_tile, seed=seed, fwd_path=fwd_path,
                 bwd_path=bwd_path, surrogate=surrogate, h0=h0, grad_h_last=grad_h_last, keep_stats=keep_stats)


@pytest.mark.parametrize("path", ["per_step", "persistent"])
def test_nan_poison_is_live_and_catches_unwritten_elements(path):
    with poisoned():
        assert bool(torch.isnan(torch.empty(4, 3)).all())
        assert bool(torch.isnan(torch.empty_like(torch.zeros(2, dtype=torch.float32))).all())
    # A launch grid one tile short leaves the last positions unwritten: they must read NaN.
    x, params, drop, kw, _, _, h0 = build_case(2, 1, 5, 9)
    from staa.kernels import launch

    full = launch.tile_config
    # MAX_TILE 8: BLOCK_C = 8 -> BLOCK_P = 1, one program per position; one plane tile short.
    with launcher_settings(max_tile=8, tile_config=lambda c, p: full(c, p)._replace(NP=full(c, p).NP - 1)):
        with poisoned():
            u = forward(launch, x, drop, h0, params, kw, store_v_seq=False, path=path)[3]
    assert bool(torch.isnan(u[..., -1]).all())
    assert bool(torch.isfinite(u[..., :-1]).all())


def test_launcher_shape_errors():
    from staa.kernels import launch

    params = make_params(4, 2)
    kw = dict(alpha=2.0, v_threshold=1.0, v_reset=0.0, detach_reset=False, surrogate="rect", surrogate_param=1.0,
              store_v_seq=False)
    x, drop = torch.zeros(2, 1, 4, 3), torch.zeros(2, dtype=torch.bool)
    cases = [  # (x, drop, h0, params, keywords), the words the message must hold
        ((torch.zeros(2, 1, 4), drop, None, params, kw), ["[T, B, C, P]", "(2, 1, 4)"]),
        ((x, torch.zeros(3, dtype=torch.bool), None, params, kw), ["[2]", "(3,)"]),
        ((torch.zeros(2, 1, 4, 3, dtype=torch.int32), drop, None, params, kw), ["int32"]),
        ((x, drop, torch.zeros(1, 4, 2), params, kw), ["h0", "(1, 4, 2)"]),
        # weights travel by field name, never as plain tuples
        ((x, drop, None, params._replace(gc_x=tuple(params.gc_x)), kw), ["GCParams"]),
        ((x, drop, None, params, dict(kw, surrogate="triangle")), ["'triangle'", "'fast_sigmoid'"]),
    ]
    for args, words in cases:
        with pytest.raises((ValueError, TypeError)) as err:
            forward(launch, *args)
        missing = [w for w in words if w not in str(err.value)]
        assert not missing, f"{missing} not in: {err.value}"


MODULE_CASES = {
    "conv-fp32-train-tsrd": ([3, 2, 6, 3, 3], dict(dtype="float32")),
    "TBC-fp64-soft-detach": ([4, 1, 5], dict(dtype="float64", v_reset=None, detach_reset=True)),
}


@pytest.mark.parametrize("name", list(MODULE_CASES))
def test_module_backend_triton_matches_torch(name):
    """``STAALIF(backend="triton")`` against ``backend="torch"`` through the custom op, in
    training mode with TSRD (both draw the same mask: same RNG seed): spikes, final state and
    every gradient. Inputs are re-drawn until the reference's V keeps ``MARGIN``."""
    import staa
    from staa.reference import staa_lif_reference

    shape, opts = MODULE_CASES[name]
    opts = dict(opts)
    dtype, seed = opts.pop("dtype"), 0
    dt = getattr(torch, dtype)
    T, B, C = shape[:3]
    torch.manual_seed(seed)
    m_t = staa.STAALIF(C, T, tsrd=0.5, backend="triton", **opts)
    with torch.no_grad():
        for p in m_t.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # non-zero value layers
    m_r = staa.STAALIF(C, T, tsrd=0.5, backend="torch", **opts)
    m_r.load_state_dict(m_t.state_dict())
    m_t.train()
    m_r.train()
    torch.manual_seed(seed + 2)
    drop = m_t._draw_drop(T, 0, torch.device("cpu"))
    assert int(drop.sum()) >= 1  # TSRD really drops a step
    g = torch.Generator().manual_seed(seed + 1)
    cfg = dict(alpha=m_t.cfg.alpha, v_threshold=m_t.cfg.v_threshold, v_reset=m_t.cfg.v_reset)
    for _ in range(40):
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * 0.8 + 0.35).to(dt)
        with torch.no_grad():
            v = staa_lif_reference(x.reshape(T, B, C, -1), m_t.params(), drop, **cfg, return_potentials=True)[1]
        margin = margin_of(v, m_t.cfg.v_threshold, 1.0)
        if margin >= MARGIN:
            break
    assert margin >= MARGIN
    assert staa.backend_for(x, "triton") == "triton"
    results = []
    for m in (m_t, m_r):
        m.reset()
        xx = x.clone().requires_grad_(True)
        torch.manual_seed(seed + 2)  # the same TSRD mask as ``drop`` above
        y = m(xx)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(y.dtype)
        results.append((y, torch.autograd.grad(y, [xx] + list(m.parameters()), gy), m.v.detach().clone()))
    (y_t, g_t, v_t), (y_r, g_r, v_r) = results
    assert y_t.dtype == x.dtype
    assert int((y_t != y_r).sum()) == 0
    tol = tolerances(dt)
    bad = Mismatches()
    for n, a, b in zip(["x"] + [n for n, _ in m_t.named_parameters()], g_t, g_r):
        bad.close(f"grad {n}", a, b, tol["grad_x" if n == "x" else "grad"])
    bad.close("v", v_t, v_r, tol["state"])
    bad.check()


def test_import_does_not_load_triton():
    code = ("import sys, staa, staa.kernels; assert staa.kernels.HAS_KERNELS is True; "
            "assert 'triton' not in sys.modules, 'triton imported'")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("path", ["per_step", "persistent"])
def test_backward_reuses_nothing_between_calls(path):
    """The interpreter runs atomics in order, so this cannot catch a non-deterministic reduction
    (tests/test_triton_cuda.py runs the same helper on the GPU for that). What it proves here: a
    second backward on the same saved tensors, with its allocations NaN-poisoned, gives the same
    gradients bit for bit, so every accumulator is initialised by the backward itself and the
    backward does not write into what the forward saved."""
    assert check_deterministic_backward(3, 2, 5, 6, drop=[1], margin=0.0, path=path) == 22  # x, pos, 8 + 8 GC, 4 SA


def test_zero_size_inputs():
    """T = 0 and B = 0, with and without h0 / grad_h_last: the outputs' shapes, h_last the rest
    constant or a fresh copy of h0, zero gradients of the weights' shapes, grad_h0 None without
    h0 and else a fresh copy of grad_h_last (zeros without it)."""
    from staa.kernels import launch

    params = make_params(4, 2)
    kw = dict(alpha=2.0, v_threshold=1.0, v_reset=-0.5, detach_reset=False, surrogate="rect", surrogate_param=1.0)
    expected_shapes = {(0, 2, 4, 3): [[0, 2, 4, 3], [2, 4, 3], [0, 2, 4, 3], [0, 2, 4, 3], [0, 2, 4]],
                       (2, 0, 4, 3): [[2, 0, 4, 3], [0, 4, 3], [2, 0, 4, 3], [2, 0, 4, 3], [2, 0, 4]]}
    for shape, shapes in expected_shapes.items():
        for with_h0 in (False, True):
            x = torch.zeros(shape)
            drop = torch.zeros(shape[0], dtype=torch.bool)
            h0 = torch.randn(shape[1:]) if with_h0 else None
            ghl = torch.randn(shape[1:]) if with_h0 else None
            s, h, vs, u, g = forward(launch, x, drop, h0, params, kw, store_v_seq=True)
            assert [list(t.shape) for t in (s, h, vs, u, g)] == shapes
            grads = backward(launch, torch.zeros(shape), ghl, x, drop, h0, params, u, g, kw)
            flat = [grads[0], grads[2]] + list(grads[3]) + list(grads[4]) + list(grads[5])
            assert all(bool((t == 0).all()) for t in flat)
            assert [t.shape for t in flat[1:]] == [p.shape for p in flat_params(params)]
            if not with_h0:
                assert bool((h == -0.5).all())
                assert grads[1] is None
                continue
            assert torch.equal(h, h0) and (h.numel() == 0 or h.data_ptr() != h0.data_ptr())
            assert torch.equal(grads[1], ghl) and (ghl.numel() == 0 or grads[1].data_ptr() != ghl.data_ptr())
            no_ghl = backward(launch, torch.zeros(shape), None, x, drop, h0, params, u, g, kw)[1]
            assert no_ghl.shape == h0.shape and bool((no_ghl == 0).all())


def _kernels_of(run, path):
    fwd, bwd = set(run.fwd_kernels), set(run.bwd_kernels)
    assert ("staa_fwd_persistent_kernel" in fwd) == (path == "persistent")
    assert ("staa_bwd_persistent_kernel" in bwd) == (path == "persistent")


@pytest.mark.parametrize("path", BOTH_PATHS)
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_parity_surrogate_kinds(surrogate, path):
    # Every gradient through each kind (forward unchanged), float64 with a random h0, an
    # incoming grad_h_last and the first step dropped; a non-default parameter per kind.
    param = {"rect": 0.5, "atan": 3.0, "sigmoid": 5.0, "fast_sigmoid": 10.0}[surrogate]
    run = check_parity(3, 2, 5, 4, dtype="float64", surrogate=surrogate, surrogate_param=param, h0=True,
                       grad_h_last=True, drop=[0, 2], fwd_path=path, bwd_path=path)
    _kernels_of(run, path)
    assert run.grads[:3] == ["x", "h0", "pos"] and len(run.grads) == 23


@pytest.mark.parametrize("surrogate", ["atan", "fast_sigmoid"])
def test_parity_surrogate_fp32_soft_detach(surrogate):
    check_parity(4, 2, 6, 5, surrogate=surrogate, v_reset=None, detach_reset=True, drop=[1],
                 fwd_path="per_step", bwd_path="persistent")


H0_CASES = {
    # name: (T, B, C, P, options); every case has a random initial state h0.
    "fp64-drop-first": (4, 2, 5, 3, dict(dtype="float64", drop=[0], grad_h_last=True)),
    "fp64-drop-first-only-gc": (3, 1, 4, 6, dict(dtype="float64", drop=[0], sa=False, v_reset=-0.25)),
    "fp64-T1": (1, 2, 3, 5, dict(dtype="float64", grad_h_last=True)),
    "fp64-T1-dropped": (1, 2, 3, 5, dict(dtype="float64", drop=[0], grad_h_last=True)),
    "fp32-no-grad-h-last-soft": (3, 2, 7, 5, dict(v_reset=None, drop=[2])),
    "fp32-split-plane": (3, 1, 12, 33, dict(max_tile=64, grad_h_last=True, drop=[1])),
    "bf16-sa-only": (3, 2, 6, 4, dict(dtype="bfloat16", gc=False, grad_h_last=True)),
    "fp64-if-neuron": (3, 1, 4, 6, dict(dtype="float64", gc=False, sa=False, pe=False, grad_h_last=True)),
}


@pytest.mark.parametrize("path", BOTH_PATHS)
@pytest.mark.parametrize("name", list(H0_CASES))
def test_parity_initial_state(name, path):
    # grad_h0 against autograd of the reference with h0 a leaf.
    T, B, C, P, opts = H0_CASES[name]
    run = check_parity(T, B, C, P, h0=True, fwd_path=path, bwd_path=path, **opts)
    _kernels_of(run, path)
    assert "h0" in run.grads
    if opts.get("max_tile"):
        assert run.np > 1


@pytest.mark.parametrize("path", BOTH_PATHS)
def test_grad_h_last_without_h0(path):
    run = check_parity(3, 2, 5, 3, dtype="float64", grad_h_last=True, drop=[0], fwd_path=path, bwd_path=path)
    assert "h0" not in run.grads


@pytest.mark.parametrize("path", BOTH_PATHS)
def test_grad_h0_finite_difference(path):
    """Independent of the reference: d<h_last, w>/dh0 along a random direction d against a
    central difference with eps 1e-6 in float64, relative agreement 1e-6. With detach_reset the
    backward's reset derivative is the true one (1 - S), so away from spike flips the loss is
    smooth in h0."""
    from staa.kernels import launch

    x, params, drop, kw, margin, _, h0 = build_case(3, 2, 4, 3, dtype="float64", h0=True, detach_reset=True)
    assert margin >= MARGIN
    g = torch.Generator().manual_seed(11)
    w = torch.randn(h0.shape, generator=g, dtype=torch.float64)
    d = torch.randn(h0.shape, generator=g, dtype=torch.float64)
    s0, _, _, u, gate = forward(launch, x, drop, h0, params, kw, store_v_seq=False, path=path)
    grad_h0 = backward(launch, torch.zeros_like(x), w, x, drop, h0, params, u, gate, kw, path=path)[1]
    eps, losses = 1e-6, []
    for sign in (1.0, -1.0):
        s, h_last, _, _, _ = forward(launch, x, drop, h0 + sign * eps * d, params, kw, store_v_seq=False, path=path)
        assert torch.equal(s, s0), "a spike flipped: the finite difference is not the derivative"
        losses.append(float((h_last * w).sum()))
    fd, analytic = (losses[0] - losses[1]) / (2 * eps), float((grad_h0 * d).sum())
    assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(analytic)), (fd, analytic)


@pytest.mark.parametrize("case", [
    dict(T=4, B=2, C=5, P=3, surrogate="sigmoid", h0=True, grad_h_last=True, drop=[0, 2]),
    dict(T=3, B=1, C=12, P=33, max_tile=64, surrogate="fast_sigmoid", h0=True, v_reset=None, drop=[1]),
])
def test_paths_agree_bitwise_with_h0(case):
    _assert_paths_bitwise_equal(_run_both_paths(**case), min_grads=3)


@pytest.mark.parametrize("path", BOTH_PATHS)
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_input_gives_nan_spikes(path, value):
    # x[1, 1, 2, 3] is NaN / +Inf: with GC and SA every V of sample 1 from step 1 on is
    # non-finite, so its spikes are NaN there (as in the reference); sample 0 and 2 and step 0
    # are untouched and still 0/1.
    check_non_finite_input(path=path, value=float(value), nan_rows=[[1, 1], [2, 1]], all_nan_rows=[[1, 1], [2, 1]],
                           h_last_nan_samples=[1])


@pytest.mark.parametrize("path", BOTH_PATHS)
def test_non_finite_input_if_neuron(path):
    # Without GC/SA only that neuron is affected: a NaN spike at step 1, then its NaN state.
    check_non_finite_input(path=path, gc=False, sa=False, value=float("inf"), dtype="bfloat16",
                           nan_rows=[[1, 1], [2, 1]], all_nan_rows=[])


TORCH_IMPL_CASES = {
    "fp64-h0-drop-first-atan": (3, 2, 5, 4, dict(dtype="float64", h0=True, grad_h_last=True, drop=[0],
                                                 surrogate="atan")),
    "fp32-rect-soft": (3, 2, 6, 5, dict(v_reset=None, drop=[1], surrogate_width=0.5)),
    "fp64-sigmoid-no-sa": (2, 1, 4, 3, dict(dtype="float64", sa=False, h0=True, surrogate="sigmoid")),
    "fp32-fast-sigmoid-detach": (2, 2, 5, 3, dict(detach_reset=True, surrogate="fast_sigmoid", grad_h_last=True)),
}


@pytest.mark.parametrize("path", BOTH_PATHS)
@pytest.mark.parametrize("name", list(TORCH_IMPL_CASES))
def test_launchers_match_torch_impl(name, path):
    """The launchers against ``staa.ops.torch_impl`` (same contract): every output and gradient."""
    from staa.kernels import launch
    from staa.ops import torch_impl

    T, B, C, P, opts = TORCH_IMPL_CASES[name]
    opts = dict(opts)
    grad_h_last = opts.pop("grad_h_last", False)
    x, params, drop, kw, margin, _, h0 = build_case(T, B, C, P, **opts)
    assert margin >= MARGIN
    tol = tolerances(x.dtype)
    gen = torch.Generator().manual_seed(5)
    gs = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    ghl = torch.randn(x.shape[1:], generator=gen, dtype=torch.float64).to(cd) if grad_h_last else None
    runs = []
    for impl, extra in ((launch, dict(path=path)), (torch_impl, {})):
        fwd = forward(impl, x, drop, h0, params, kw, store_v_seq=True, **extra)
        runs.append((fwd[:5], backward(impl, gs, ghl, x, drop, h0, params, fwd[3], fwd[4], kw, **extra)))
    (fwd_t, bwd_t), (fwd_r, bwd_r) = runs
    assert int((fwd_t[0] != fwd_r[0]).sum()) == 0
    bad = Mismatches()
    for n, a, b in zip(("h_last", "v_seq", "u", "gate"), fwd_t[1:], fwd_r[1:]):
        assert (a is None) == (b is None), f"{n}: None on one side only"
        if a is not None:
            bad.close(n, a, b, tol["state"])
    for i, (name_i, a, b) in enumerate(zip(("x", "h0", "pos", "gcx", "gch", "sa"), bwd_t, bwd_r)):
        assert (a is None) == (b is None), f"grad {name_i}: None on one side only"
        if a is None:
            continue
        if i < 3:
            pairs = [(name_i, a, b)]
        else:
            fields = (params.gc_x, params.gc_h, params.sa)[i - 3]._fields
            assert len(a) == len(b) == len(fields), f"grad {name_i}: {len(a)} / {len(b)} tensors"
            pairs = [(f"{name_i}.{f}", u, v) for f, u, v in zip(fields, a, b)]
        for n, u, v in pairs:
            bad.expect(u.dtype == v.dtype and u.shape == v.shape,
                       f"grad {n}: {u.dtype}{tuple(u.shape)} vs {v.dtype}{tuple(v.shape)}")
            bad.close(f"grad {n}", u, v, tol["grad_x" if n == "x" else "grad"])
    bad.check()


@pytest.mark.parametrize("v_th, width, v_reset", EDGE_CASES)
@pytest.mark.parametrize("mode", ["multi", "single"])
@pytest.mark.parametrize("path", BOTH_PATHS)
def test_exact_edges_if_neuron(v_th, width, v_reset, mode, path):
    """V exactly on v_threshold fires; exactly on a window edge passes no gradient (the window is
    strict); the reset potential is the spec's. The Triton route must agree with the reference
    on every spike, state and on where gradient passes (float64, an IF neuron: no reduction order
    to excuse a difference). The gradient values are equal to 1e-14: with a = 1.5 the factor 1/a
    is not a dyadic number and the kernels multiply in another order than the reference."""
    x = if_edge_input(v_th, width, v_reset).requires_grad_()
    gy = upstream_gradient()
    with launcher_settings(path_env=path), recorded_launches() as launched:
        spikes, h_last = run_if_neuron(x, v_th, width, v_reset, mode, backend="triton")
        (g,) = torch.autograd.grad((spikes * gy).sum() + h_last.sum(), x)
    assert launched, "nothing ran on the Triton route"
    ref, ref_h_last = reference_if_neuron(x, v_th, width, v_reset)
    (g_ref,) = torch.autograd.grad((ref * gy).sum() + ref_h_last.sum(), x)
    assert spikes[0, 0].tolist() == EXPECTED_FIRST_STEP
    assert torch.equal(spikes, ref) and torch.equal(h_last, ref_h_last)
    assert torch.equal(g == 0, g_ref == 0), (g, g_ref)
    assert g.flatten().tolist() == pytest.approx(g_ref.flatten().tolist(), rel=1e-14, abs=0.0)
    if math.log2(1.0 / width).is_integer():
        assert torch.equal(g, g_ref), (g, g_ref)
