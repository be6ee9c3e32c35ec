"""Case builders of the Triton kernel tests, shared by tests/interpret/test_kernels.py (the
kernels under ``TRITON_INTERPRET=1`` on the CPU, in a pytest process of its own) and
tests/test_triton_cuda.py (compiled kernels on a GPU); the checks both run are in
tests/triton_checks.py.

``build_case`` draws inputs, weights and an optional initial state for one case and re-draws
them until no membrane potential of the reference lies within ``MARGIN`` of a point where a spike
or the surrogate window switches, so a tolerance never has to absorb (or can hide) a flip.
"""
from __future__ import annotations

import contextlib
import os
import struct

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MARGIN = 1e-4  # no V within this distance of a point where spikes or the surrogate window switch

# Tolerances per input dtype: (rtol, atol) for fp32/fp64 state and parameter grads, and
# for grad_x, which comes back in the input dtype (one rounding of a value that differs
# from the reference's by float32 reduction-order noise).
TOLERANCES = {
    "float64": dict(state=(1e-12, 1e-12), grad=(1e-10, 1e-10), grad_x=(1e-10, 1e-10)),
    "float32": dict(state=(1e-5, 1e-5), grad=(1e-4, 1e-5), grad_x=(1e-4, 1e-5)),
    # A float32 difference that straddles a rounding boundary moves the rounded value by
    # one ulp, and one ulp is at most 2**-7 (bf16) / 2**-10 (fp16) of the value.
    "bfloat16": dict(state=(1e-5, 1e-5), grad=(1e-4, 1e-5), grad_x=(2.0**-7, 1e-6)),
    "float16": dict(state=(1e-5, 1e-5), grad=(1e-4, 1e-5), grad_x=(2.0**-10, 1e-7)),
}


# A case whose blocked sums span several blocks and ranges once the launchers' blocks and ranges
# are shrunk (tests/interpret/test_reductions*.py): C = 5 with MAX_TILE 16 gives [8, 2] tiles, so
# P = 5 is NP = 3 tiles per sample, and MLP blocks of MAX_PARTIAL_TILE / BLOCK_CC = 16 / 8 = 2 tiles
# (2 + 1); the parameter-gradient sums take ranges of at least 1 block, at most 2 ranges for the
# weight matrices (T*B = 33 rows: 2 ranges of 2 blocks, the last one partial) and 4 for the
# vectors (T*B*NP = 99 rows: 4 ranges of 2 blocks; pass 2 adds 4 partials per element).
SPLIT_CASE = dict(T=3, B=11, C=5, P=5, max_tile=16)
SPLIT_SMALL = dict(max_partial_tile=16, weight_splits=(1, 2, 4))


def tolerances(dtype: torch.dtype) -> dict:
    return TOLERANCES[str(dtype).replace("torch.", "")]


def make_params(C, T, *, gc=True, sa=True, pe=True, dtype="float32", seed=0):
    """Random STAA weights (value layers non-zero, unlike the module's zero init, so every
    block really contributes)."""
    from staa.reference import GCParams, SAParams, STAAParams

    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    ch = max(C // 4, 4)

    def rnd(*shape, scale=0.3, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dt)

    def gcp():
        return GCParams(rnd(1, C), rnd(1, scale=0.1), rnd(ch, C), rnd(ch, scale=0.1), rnd(ch, scale=0.1, shift=1.0),
                        rnd(ch, scale=0.1), rnd(C, ch, scale=0.2), rnd(C, scale=0.1))

    return STAAParams(
        rnd(T + 1, C, scale=0.2) if pe else None,
        gcp() if gc else None,
        gcp() if gc else None,
        SAParams(rnd(ch, C), rnd(ch, scale=0.1), rnd(C, ch), rnd(C, scale=0.1)) if sa else None,
    )


def flat_params(params):
    """The case's parameter tensors in the order the launchers return their gradients."""
    out = [params.pos] if params.pos is not None else []
    for blk in (params.gc_x, params.gc_h, params.sa):
        if blk is not None:
            out += list(blk)
    return out


def reference(x, params, drop, kw, h0=None, potentials=False):
    """``staa.reference.staa_lif_reference`` with the launchers' keywords ``kw`` (surrogate kind
    and parameter included); returns ``(spikes, states)`` (and the potentials V with
    ``potentials``), differentiable in x, h0 and the weights."""
    from staa.reference import staa_lif_reference

    kind, p = kw["surrogate"], float(kw["surrogate_param"])
    extra = dict(surrogate_width=p) if kind == "rect" else dict(surrogate_alpha=p)
    return staa_lif_reference(x, params, drop, alpha=kw["alpha"], v_threshold=kw["v_threshold"],
                              v_reset=kw["v_reset"], detach_reset=kw["detach_reset"], h0=h0, return_states=True,
                              return_potentials=potentials, surrogate=kind, **extra)


def margin_of(v, v_threshold, width=None):
    """Distance of the closest V to the threshold or (``width`` given: the rectangle's) to an
    edge of the surrogate window."""
    pts = [v_threshold] + ([v_threshold - width / 2, v_threshold + width / 2] if width is not None else [])
    return (v.detach().reshape(-1, 1) - torch.tensor(pts, dtype=v.dtype)).abs().min().item()


def _fp32(value):
    """``value`` rounded to the nearest fp32, as a Python float (None stays None)."""
    return None if value is None else struct.unpack("f", struct.pack("f", float(value)))[0]


def build_case(T, B, C, P, *, dtype="float32", param_dtype=None, gc=True, sa=True, pe=True, v_reset=0.0,
               detach_reset=False, drop=(), alpha=2.0, v_threshold=1.0, surrogate="rect", surrogate_param=None,
               surrogate_width=1.0, h0=False, seed=0, tries=40, margin=MARGIN):
    """Inputs, weights, the initial state (``h0``: a random one, else None) and the reference's
    V for one case, re-drawn (deterministically) until no V is within ``margin`` of the
    threshold or (rect) of the surrogate window's edges.

    ``surrogate_param`` defaults to ``surrogate_width`` for rect, the kind's default otherwise.
    Returns ``(x, params, drop mask, launcher keywords, margin, V, h0)``."""
    from staa.reference import compute_dtype
    from staa.surrogate import DEFAULT_PARAM

    dt = getattr(torch, dtype)
    cd = compute_dtype(dt)
    if surrogate_param is None:
        surrogate_param = surrogate_width if surrogate == "rect" else DEFAULT_PARAM[surrogate]
    # Triton passes Python floats to a kernel as fp32 (compiled and interpreted alike), so the
    # kernels see the scalar settings rounded to fp32 (docs/triton.md, "Numerics"). The
    # reference gets the same values; in float64 an unrounded -0.3 would differ by ~1e-8.
    kw = dict(alpha=_fp32(alpha), v_threshold=_fp32(v_threshold), v_reset=_fp32(v_reset), detach_reset=detach_reset,
              surrogate=surrogate, surrogate_param=_fp32(surrogate_param))
    alpha, v_threshold, v_reset = kw["alpha"], kw["v_threshold"], kw["v_reset"]
    mask = torch.zeros(T, dtype=torch.bool)
    for t in drop:
        mask[t] = True
    for k in range(tries):
        s = seed * 1000 + k
        params = make_params(C, T, gc=gc, sa=sa, pe=pe, dtype=param_dtype or ("float64" if dtype == "float64" else "float32"), seed=s)
        g = torch.Generator().manual_seed(s + 7)
        x = (torch.randn(T, B, C, P, generator=g, dtype=torch.float64) * 0.8 + 0.35).to(dt)
        h_init = (torch.randn(B, C, P, generator=g, dtype=torch.float64) * 0.5 + 0.2).to(cd) if h0 else None
        with torch.no_grad():
            _, _, v = reference(x, params, mask, kw, h_init, potentials=True)
        got = margin_of(v, v_threshold, surrogate_param if surrogate == "rect" else None)
        if got >= margin:
            break
    return x, params, mask, kw, got, v, h_init


def on_device(device, x, drop, params, h0, *more):
    """The case's tensors on ``device`` (None stays None)."""
    if device == "cpu":
        return (x, drop, params, h0) + more
    params = type(params)(*[None if b is None else b.to(device) if isinstance(b, torch.Tensor)
                            else type(b)(*[w.to(device) for w in b]) for b in params])
    move = [t.to(device) if t is not None else None for t in (x, drop, h0) + more]
    return (move[0], move[1], params, move[2]) + tuple(move[3:])


def forward(launch, x, drop, h0, params, kw, **extra):
    """``launch.staa_lif_forward`` (or the torch implementation's, same contract) on a case."""
    return launch.staa_lif_forward(x, drop, h0, params.pos, params.gc_x, params.gc_h, params.sa, **kw, **extra)


def backward(launch, gs, ghl, x, drop, h0, params, u, gate, kw, **extra):
    """``launch.staa_lif_backward`` (or the torch implementation's) on a case and its forward's u, gate."""
    return launch.staa_lif_backward(gs, ghl, x, drop, h0, params.pos, params.gc_x, params.gc_h, params.sa, u, gate,
                                    **kw, **extra)


def flat_grads(out):
    """grad_x, grad_h0 (if any), grad_pos (if any), then every block's gradients in field order."""
    flat = [out[0]] + [g for g in out[1:3] if g is not None]
    for blk in out[3:]:
        flat += list(blk) if blk is not None else []
    return flat


@contextlib.contextmanager
def poisoned(active=True, shift=0):
    """Every fresh floating-point ``torch.empty``/``empty_like`` is NaN-filled while active, so an
    element a kernel forgets to write shows as NaN. ``shift`` > 0: each such allocation is also a
    view ``shift`` elements into a larger one, so its address differs from any aligned allocation
    of an earlier run (a reduction whose order depends on where its buffers lie then changes)."""
    if not active:
        yield
        return
    empty, empty_like = torch.empty, torch.empty_like

    def nan_filled(make):
        def poisoned_make(*a, **k):
            t = make(*a, **k)
            if t.is_floating_point():
                if shift and t.numel() > 0 and t.is_contiguous():
                    base = empty(t.numel() + shift, dtype=t.dtype, device=t.device)
                    t = base[shift:].view(t.shape)
                t.fill_(float("nan"))
            return t
        return poisoned_make

    torch.empty, torch.empty_like = nan_filled(empty), nan_filled(empty_like)
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like


@contextlib.contextmanager
def launcher_settings(max_tile=None, tile_config=None, path_env=None, max_partial_tile=None, weight_splits=None):
    """The launchers with a smaller tile (``max_tile``), a replaced ``tile_config``, the path
    variable set (``path_env``: "per_step", "persistent", or "" to unset it), smaller blocks of
    plane-tile partials in the MLP kernels (``max_partial_tile``: elements per block) or other
    row splits of the parameter-gradient sums (``weight_splits``: ``(blocks per split at least,
    matrix splits at most, vector splits at most)``); everything is restored on exit."""
    from staa.kernels import launch

    names = ("MAX_TILE", "MAX_PARTIAL_TILE", "WEIGHT_SPLIT_BLOCKS", "MAX_MATRIX_SPLITS", "MAX_VECTOR_SPLITS")
    saved = {n: getattr(launch, n) for n in names}
    saved_cfg, saved_env = launch.tile_config, os.environ.get(launch.PATH_ENV)
    if max_tile is not None:
        launch.MAX_TILE = max_tile
    if max_partial_tile is not None:
        launch.MAX_PARTIAL_TILE = max_partial_tile
    if weight_splits is not None:
        launch.WEIGHT_SPLIT_BLOCKS, launch.MAX_MATRIX_SPLITS, launch.MAX_VECTOR_SPLITS = weight_splits
    if tile_config is not None:
        launch.tile_config = tile_config
    if path_env is not None:
        os.environ.pop(launch.PATH_ENV, None)
        if path_env:
            os.environ[launch.PATH_ENV] = path_env
    try:
        yield launch
    finally:
        for n, v in saved.items():
            setattr(launch, n, v)
        launch.tile_config = saved_cfg
        os.environ.pop(launch.PATH_ENV, None)
        if saved_env is not None:
            os.environ[launch.PATH_ENV] = saved_env


@contextlib.contextmanager
def recorded_launches():
    """The names of the Triton kernels launched inside the block, as a list filled in place."""
    from staa.kernels import launch

    names = []
    call = launch._Launch.__call__  # every launch goes through it, ``_run``'s included

    def recording_call(self, grid, *varying):
        names.append(getattr(self.kernel, "fn", self.kernel).__name__)
        return call(self, grid, *varying)

    launch._Launch.__call__ = recording_call
    try:
        yield names
    finally:
        launch._Launch.__call__ = call
