"""The Triton kernels under TRITON_INTERPRET=1 against the reference, on the CPU.

This directory runs in its own pytest process with TRITON_INTERPRET=1 set before anything
imports triton (tests/interpret/conftest.py; scripts/test.sh runs it); the case builders and
checks are in tests/triton_cases.py. Every case asserts that no membrane potential of the reference lies within ``MARGIN`` of the threshold
or of the surrogate window's edges, so a spike or surrogate flip cannot hide behind (or
excuse) a tolerance. Fresh ``torch.empty`` allocations are NaN-poisoned in every case.

Tolerances (``triton_cases.TOLERANCES``): float64 1e-12 (states) / 1e-10 (gradients);
float32 1e-5 / 1e-4 relative; bf16/fp16 grad_x one rounding of the input dtype.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import triton_cases
from edge_cases import EDGE_CASES, EXPECTED_FIRST_STEP
from triton_cases import MARGIN, ROOT


class _Plain:
    """``triton_cases`` whose checks return plain JSON values (lists, not tuples or tensors), so
    the assertions below compare like with like."""

    def __getattr__(self, name):
        fn = getattr(triton_cases, name)
        return lambda **kw: json.loads(json.dumps(fn(**kw)))


F = _Plain()

SURROGATES = ["rect", "atan", "sigmoid", "fast_sigmoid"]
BOTH_PATHS = ["per_step", "persistent"]


def _check(rep):
    assert rep["margin"] >= MARGIN, f"inputs too close to a switching point: margin {rep['margin']}"
    assert rep["spike_mismatches"] == 0
    assert rep["nan_outputs"] == []
    assert rep["failures"] == [], "\n".join(rep["failures"])


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


def _check_reductions(rep, opts):
    # With the forward's reductions kept (the op's route), the backward never re-reads the plane
    # to rebuild them; without, it must (when a GC or SA block needs them).
    blocks = opts.get("gc", True) or opts.get("sa", True)
    rebuilt = "staa_plane_reduce_kernel" in rep["bwd_kernels"]
    assert rebuilt == (blocks and not opts.get("keep_stats", True)), rep["bwd_kernels"]


@pytest.mark.parametrize("name", list(CASES))
def test_parity(name):
    # These planes are small enough for the persistent kernels; force the per-step ones.
    T, B, C, P, opts = CASES[name]
    rep = F.parity(T=T, B=B, C=C, P=P, fwd_path="per_step", bwd_path="per_step", **opts)
    _check(rep)
    assert "staa_fwd_elem_kernel" in rep["fwd_kernels"] and "staa_fwd_persistent_kernel" not in rep["fwd_kernels"]
    assert "staa_bwd_elem_kernel" in rep["bwd_kernels"] and "staa_bwd_persistent_kernel" not in rep["bwd_kernels"]
    _check_reductions(rep, opts)
    if opts.get("max_tile"):
        assert rep["np"] > 1  # the plane really is split across programs


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
    rep = F.parity(T=T, B=B, C=C, P=P, fwd_path="persistent", bwd_path="persistent", **opts)
    _check(rep)
    fwd, bwd = set(rep["fwd_kernels"]), set(rep["bwd_kernels"])
    assert "staa_fwd_persistent_kernel" in fwd and not fwd & {"staa_fwd_elem_kernel", "staa_fwd_mlp_kernel"}
    assert "staa_bwd_persistent_kernel" in bwd and not bwd & {"staa_bwd_elem_kernel", "staa_bwd_mlp_kernel"}
    _check_reductions(rep, opts)
    if opts.get("max_tile"):
        assert rep["np"] > 1  # the program loops over several tiles of its plane


@pytest.mark.parametrize("case", [
    dict(T=5, B=2, C=7, P=5, drop=[2, 4]),
    dict(T=4, B=1, C=12, P=33, dtype="bfloat16", max_tile=64, v_reset=None, drop=[1]),
    dict(T=1, B=1, C=3, P=1, gc=False),
])
def test_paths_agree_bitwise(case):
    # Same arithmetic in the same order: under the interpreter the two paths agree exactly,
    # forward outputs and every gradient.
    rep = F.path_equivalence(**case)
    assert rep["fwd_equal"] == {"spikes": True, "h_last": True, "v_seq": True, "u": True, "gate": True}, rep
    assert rep["n_grads"] >= 2 and rep["grads_equal"] == [True] * rep["n_grads"], rep
    assert rep["kernels"]["persistent"] != rep["kernels"]["per_step"]


def test_path_rule():
    rep = F.path_rule()
    assert rep["auto"] == {"512x16": "persistent", "1000x1": "persistent", "128x1024": "per_step",
                           "512x64": "per_step", "8192x1": "persistent", "8193x1": "per_step"}
    assert rep["env_per_step"] == "per_step" and rep["env_persistent_big"] == "persistent"
    assert rep["arg_over_env"] == "persistent"
    assert "STAA_TRITON_PATH" in rep["bad_env"] and "'fast'" in rep["bad_env"]
    assert "path" in rep["bad_arg"]
    assert rep["env_forced_kernels"] == ["staa_fwd_elem_kernel", "staa_fwd_mlp_kernel", "staa_plane_reduce_kernel"]
    # The backward takes the forward's reductions (the op's route), so it launches no plane reduction;
    # one launch after the loop computes every parameter gradient.
    assert rep["env_forced_bwd_kernels"] == ["staa_bwd_elem_kernel", "staa_bwd_mlp_kernel", "staa_bwd_weights_kernel"]


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
    rep = F.parity(T=T, B=B, C=C, P=P, gc=gc, sa=sa, pe=pe, v_reset=reset, v_threshold=v_th,
                      surrogate_width=width, detach_reset=detach, drop=drop, dtype=dtype, max_tile=max_tile,
                      seed=seed, fwd_path=fwd_path, bwd_path=bwd_path, surrogate=surrogate, h0=h0,
                      grad_h_last=grad_h_last, keep_stats=keep_stats)
    _check(rep)


@pytest.mark.parametrize("path", ["per_step", "persistent"])
def test_nan_poison_is_live_and_catches_unwritten_elements(path):
    rep = F.poison_sanity(path=path)
    assert rep["fresh_all_nan"] and rep["fresh_like_all_nan"]
    # A launch grid one tile short leaves the last positions unwritten: they must read NaN.
    assert rep["unwritten_nan"]
    assert rep["written_finite"]


def test_launcher_shape_errors():
    msgs = F.launcher_errors()
    assert "[T, B, C, P]" in msgs["x3d"] and "(2, 1, 4)" in msgs["x3d"]
    assert "[2]" in msgs["drop"] and "(3,)" in msgs["drop"]
    assert "int32" in msgs["int"]
    assert "h0" in msgs["h0"] and "(1, 4, 2)" in msgs["h0"]
    assert "GCParams" in msgs["plain_tuple"]  # weights travel by field name, never as plain tuples
    assert "'triangle'" in msgs["surrogate"] and "'fast_sigmoid'" in msgs["surrogate"]


MODULE_CASES = {
    "conv-fp32-train-tsrd": ([3, 2, 6, 3, 3], dict(dtype="float32")),
    "TBC-fp64-soft-detach": ([4, 1, 5], dict(dtype="float64", v_reset=None, detach_reset=True)),
}


@pytest.mark.parametrize("name", list(MODULE_CASES))
def test_module_backend_triton_matches_torch(name):
    pytest.importorskip("staa.ops")
    shape, opts = MODULE_CASES[name]
    rep = F.module_parity(shape=shape, **opts)
    if "skipped" in rep:
        pytest.skip(rep["skipped"])
    assert rep["backend"] == "triton"
    assert rep["dropped"] >= 1  # TSRD really dropped a step
    assert rep["margin"] >= MARGIN
    assert rep["spike_mismatches"] == 0 and rep["dtype_ok"]
    assert rep["failures"] == [], "\n".join(rep["failures"])


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
    rep = F.determinism(T=3, B=2, C=5, P=6, drop=[1], margin=0.0, path=path)
    assert rep["n"] == 22  # grad_x, pos, 8 + 8 GC, 4 SA
    assert rep["identical"] and rep["saved_unchanged"]


def test_zero_size_inputs():
    rep = F.empty_inputs()
    for h in ("rest", "h0"):
        assert rep[f"T0-{h}"]["shapes"] == [[0, 2, 4, 3], [2, 4, 3], [0, 2, 4, 3], [0, 2, 4, 3], [0, 2, 4]]
        assert rep[f"B0-{h}"]["shapes"] == [[2, 0, 4, 3], [0, 4, 3], [2, 0, 4, 3], [2, 0, 4, 3], [2, 0, 4]]
    for name, case in rep.items():
        # h_last is the rest constant or a fresh copy of h0; grad_h0 is a copy of grad_h_last (or zeros).
        assert case["h_ok"] and case["grads_zero"] and case["grad_shapes_ok"], name
        if name.endswith("-h0"):
            assert case["h_fresh"] and case["grad_h0_is_grad_h_last"] and case["grad_h0_fresh"], name
            assert case["grad_h0_zero_without_grad_h_last"], name
        else:
            assert case["grad_h0_none"], name


def _kernels_of(rep, path):
    fwd, bwd = set(rep["fwd_kernels"]), set(rep["bwd_kernels"])
    assert ("staa_fwd_persistent_kernel" in fwd) == (path == "persistent")
    assert ("staa_bwd_persistent_kernel" in bwd) == (path == "persistent")


@pytest.mark.parametrize("path", BOTH_PATHS)
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_parity_surrogate_kinds(surrogate, path):
    # Every gradient through each kind (forward unchanged), float64 with a random h0, an
    # incoming grad_h_last and the first step dropped; a non-default parameter per kind.
    param = {"rect": 0.5, "atan": 3.0, "sigmoid": 5.0, "fast_sigmoid": 10.0}[surrogate]
    rep = F.parity(T=3, B=2, C=5, P=4, dtype="float64", surrogate=surrogate, surrogate_param=param,
                      h0=True, grad_h_last=True, drop=[0, 2], fwd_path=path, bwd_path=path)
    _check(rep)
    _kernels_of(rep, path)
    assert rep["grads"][:3] == ["x", "h0", "pos"] and len(rep["grads"]) == 23


@pytest.mark.parametrize("surrogate", ["atan", "fast_sigmoid"])
def test_parity_surrogate_fp32_soft_detach(surrogate):
    rep = F.parity(T=4, B=2, C=6, P=5, surrogate=surrogate, v_reset=None, detach_reset=True, drop=[1],
                      fwd_path="per_step", bwd_path="persistent")
    _check(rep)


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
    rep = F.parity(T=T, B=B, C=C, P=P, h0=True, fwd_path=path, bwd_path=path, **opts)
    _check(rep)
    _kernels_of(rep, path)
    assert "h0" in rep["grads"]
    if opts.get("max_tile"):
        assert rep["np"] > 1


@pytest.mark.parametrize("path", BOTH_PATHS)
def test_grad_h_last_without_h0(path):
    rep = F.parity(T=3, B=2, C=5, P=3, dtype="float64", grad_h_last=True, drop=[0],
                      fwd_path=path, bwd_path=path)
    _check(rep)
    assert "h0" not in rep["grads"]


@pytest.mark.parametrize("path", BOTH_PATHS)
def test_grad_h0_finite_difference(path):
    # Independent of the reference: d<h_last, w>/dh0 along a random direction, central
    # difference with eps 1e-6 in float64 (detach_reset, so the backward's reset derivative is
    # the true one), relative agreement 1e-6.
    rep = F.grad_h0_finite_difference(path=path)
    assert rep["flips"] == 0 and rep["margin"] >= MARGIN
    assert abs(rep["fd"] - rep["analytic"]) <= 1e-6 * max(1.0, abs(rep["analytic"])), rep


@pytest.mark.parametrize("case", [
    dict(T=4, B=2, C=5, P=3, surrogate="sigmoid", h0=True, grad_h_last=True, drop=[0, 2]),
    dict(T=3, B=1, C=12, P=33, max_tile=64, surrogate="fast_sigmoid", h0=True, v_reset=None, drop=[1]),
])
def test_paths_agree_bitwise_with_h0(case):
    rep = F.path_equivalence(**case)
    assert all(rep["fwd_equal"].values()), rep
    assert rep["n_grads"] >= 3 and rep["grads_equal"] == [True] * rep["n_grads"], rep


@pytest.mark.parametrize("path", BOTH_PATHS)
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_input_gives_nan_spikes(path, value):
    # x[1, 1, 2, 3] is NaN / +Inf: with GC and SA every V of sample 1 from step 1 on is
    # non-finite, so its spikes are NaN there (as in the reference); sample 0 and 2 and step 0
    # are untouched and still 0/1.
    rep = F.nan_inputs(path=path, value=float(value))
    assert rep["same_as_reference"] and rep["spike_values_ok"] and rep["dtype_ok"], rep
    assert rep["nan_rows"] == [[1, 1], [2, 1]] and rep["all_nan_rows"] == [[1, 1], [2, 1]], rep
    assert rep["h_last_nan_samples"] == [1]


@pytest.mark.parametrize("path", BOTH_PATHS)
def test_non_finite_input_if_neuron(path):
    # Without GC/SA only that neuron is affected: a NaN spike at step 1, then its NaN state.
    rep = F.nan_inputs(path=path, gc=False, sa=False, value=float("inf"), dtype="bfloat16")
    assert rep["same_as_reference"] and rep["spike_values_ok"] and rep["dtype_ok"], rep
    assert rep["nan_rows"] == [[1, 1], [2, 1]] and rep["all_nan_rows"] == [], rep


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
    T, B, C, P, opts = TORCH_IMPL_CASES[name]
    rep = F.torch_impl_parity(T=T, B=B, C=C, P=P, path=path, **opts)
    if "skipped" in rep:
        pytest.skip(rep["skipped"])
    assert rep["margin"] >= MARGIN
    assert rep["spike_mismatches"] == 0
    assert rep["failures"] == [], "\n".join(rep["failures"])


@pytest.mark.parametrize("v_th, width, v_reset", EDGE_CASES)
@pytest.mark.parametrize("mode", ["multi", "single"])
@pytest.mark.parametrize("path", BOTH_PATHS)
def test_exact_edges_if_neuron(v_th, width, v_reset, mode, path):
    """V exactly on v_threshold fires; exactly on a window edge passes no gradient (the window is
    strict); the reset potential is the spec's. The Triton route must agree with the reference
    on every spike, state and on where gradient passes (float64, an IF neuron: no reduction order
    to excuse a difference). The gradient values are equal to 1e-14: with a = 1.5 the factor 1/a
    is not a dyadic number and the kernels multiply in another order than the reference."""
    rep = F.exact_edges(v_th=v_th, width=width, v_reset=v_reset, mode=mode, path=path)
    assert rep["launched"], "nothing ran on the Triton route"
    assert rep["first_step"] == EXPECTED_FIRST_STEP
    assert rep["spikes_equal"] and rep["h_equal"]
    g, g_ref = rep["grad"], rep["grad_ref"]
    assert [v == 0.0 for v in g] == [v == 0.0 for v in g_ref], (g, g_ref)
    assert g == pytest.approx(g_ref, rel=1e-14, abs=0.0)
    if math.log2(1.0 / width).is_integer():
        assert rep["grad_equal"], (g, g_ref)
