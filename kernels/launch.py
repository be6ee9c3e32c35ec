"""Launchers of the STAA-LIF Triton kernels: the ``backend="triton"`` side of the op contract.

``staa_lif_forward`` / ``staa_lif_backward`` take and return exactly what the torch
implementation of the custom op does (see ``staa.ops``): inputs ``x [T, B, C, P]``, the bool
TSRD mask ``drop [T]``, the initial state ``h0 [B, C, P]`` (or None: the rest constant), the
position encoding and the GC/SA weights as ``staa.reference.GCParams`` / ``SAParams``; saved
tensors ``u [T, B, C, P]`` and ``gate [T, B, C]`` in the compute dtype. The surrogate kind
only changes the backward kernels (a compile-time switch).

Work that does not depend on the membrane state (position encoding, GC1 on every step,
X's share of SA's spatial mean, and in backward every forward activation, since H_t is a
pure function of the saved ``u_t`` and ``gate_t``) runs batched over all steps: one plane
reduction kernel per input plane, then small ``[T*B, C]`` torch ops for the channel MLPs.
The time loop launches two kernels per step, or, for small planes, one persistent program
per sample runs all steps (``loop_path``); see docs/triton.md for the layout.
"""
from __future__ import annotations

import functools
import os
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from ..ops import torch_impl
from ..ops.torch_impl import _cast
from ..reference import GCParams, SAParams, compute_dtype
from ..surrogate import SURROGATE_KINDS
from .staa_bwd import staa_bwd_elem_kernel, staa_bwd_mlp_kernel, staa_bwd_persistent_kernel
from .staa_fwd import (staa_fwd_elem_kernel, staa_fwd_mlp_kernel, staa_fwd_persistent_kernel,
                       staa_plane_reduce_kernel)

Tensor = torch.Tensor

__all__ = ["TileConfig", "tile_config", "mlp_config", "loop_path", "staa_lif_forward", "staa_lif_backward"]

# Elements of one [BLOCK_C, BLOCK_P] plane tile held by one program of the elementwise
# kernels; one program always holds every channel of its positions, because GC's key
# logit of a position is a sum over all C channels.
MAX_TILE = 4096
# Elements of one [BLOCK_H, BLOCK_CC] weight tile in the MLP kernels.
MAX_WEIGHT_TILE = 4096


class TileConfig(NamedTuple):
    BLOCK_C: int
    BLOCK_P: int
    NP: int  # programs per sample along the plane
    num_warps: int


def tile_config(C: int, P: int) -> TileConfig:
    """Plane tiling of the elementwise kernels for ``C`` channels and ``P`` positions.

    ``BLOCK_C`` covers every channel; ``BLOCK_P`` is the largest power of two (at most
    ``P`` rounded up) that keeps the tile within ``MAX_TILE`` elements.
    """
    block_c = triton.next_power_of_2(C)
    block_p = max(1, min(triton.next_power_of_2(P), MAX_TILE // block_c))
    n_p = triton.cdiv(P, block_p)
    tile = block_c * block_p
    num_warps = 2 if tile <= 512 else 4 if tile <= 2048 else 8
    return TileConfig(block_c, block_p, n_p, num_warps)


def mlp_config(C: int, *hidden: int) -> tuple:
    """``(BLOCK_CC, [BLOCK_H...], num_warps)`` of the per-sample MLP kernels."""
    block_h = [triton.next_power_of_2(max(h, 1)) for h in hidden]
    widest = max(block_h) if block_h else 1
    block_cc = max(1, min(triton.next_power_of_2(C), MAX_WEIGHT_TILE // widest))
    num_warps = 4 if widest * block_cc >= 2048 else 2
    return block_cc, block_h, num_warps


# Planes of at most this many elements (C * P) run the time loop (forward and backward) in one
# persistent program per sample: that is at most two MAX_TILE tiles, so the per-step path would launch
# at most two programs per sample per step anyway and gains no parallelism for its 2 T launches.
PERSISTENT_MAX_PLANE = 2 * MAX_TILE
LOOP_PATHS = ("per_step", "persistent")
PATH_ENV = "STAA_TRITON_PATH"


def loop_path(C: int, P: int, path: Optional[str] = None) -> str:
    """Which time-loop path the launchers run for a ``[C, P]`` plane: ``"persistent"`` (one
    program per sample runs all steps) or ``"per_step"`` (two launches per step).

    ``path`` (the launcher's argument) wins, then the ``STAA_TRITON_PATH`` environment
    variable (``auto``, ``per_step`` or ``persistent``); ``auto`` picks ``"persistent"``
    when ``C * P <= PERSISTENT_MAX_PLANE`` (8192 elements, e.g. ``[512, 4, 4]``).
    """
    choice = path if path is not None else os.environ.get(PATH_ENV, "auto")
    if choice == "auto" or choice == "":
        return "persistent" if C * P <= PERSISTENT_MAX_PLANE else "per_step"
    if choice not in LOOP_PATHS:
        src = "path" if path is not None else PATH_ENV
        raise ValueError(f"{src} must be 'auto', 'per_step' or 'persistent', got {choice!r}")
    return choice


def persistent_warps(tc: TileConfig) -> int:
    """Warps of a persistent program (both directions): twice the per-step tile's (at most 16). The
    program is alone on its SM, so more warps hide more latency; at 8 warps the
    ``[512, 8]`` tile spilled (benchmarks/results/kernel_compile_sm90_persistent.md)."""
    return min(16, 2 * tc.num_warps)


# Set by benchmarks/compile_kernels.py to record launches instead of running them.
launch_hook = None


def _run(kernel, grid, *args, **kwargs):
    # No FMA contraction: V = u * gate must round exactly as the backward (and the torch
    # recomputation of H) evaluates it, e.g. soft reset's V - v_th must not fuse into the product.
    kwargs.setdefault("enable_fp_fusion", False)
    if launch_hook is not None:
        return launch_hook(kernel, grid, args, kwargs)
    kernel[grid](*args, **kwargs)


def _compute_dtype(dtype: torch.dtype):
    """(torch, triton) compute dtype for an input dtype, by the reference's rule."""
    cd = compute_dtype(dtype)
    return cd, (tl.float64 if cd == torch.float64 else tl.float32)


def _check(x: Tensor, drop: Optional[Tensor], h0: Optional[Tensor], pos, gcx, gch, sa):
    if x.dim() != 4:
        raise ValueError(f"x must be [T, B, C, P], got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"x must be float16/bfloat16/float32/float64, got {x.dtype}")
    T, B, C, P = x.shape
    if drop is not None and tuple(drop.shape) != (T,):
        raise ValueError(f"drop must be a bool mask of shape [{T}], got {tuple(drop.shape)}")
    if h0 is not None and tuple(h0.shape) != (B, C, P):
        raise ValueError(f"h0 must be [B, C, P] = [{B}, {C}, {P}] or None, got {tuple(h0.shape)}")
    if pos is not None and (pos.dim() != 2 or pos.shape[0] < T or pos.shape[1] != C):
        raise ValueError(f"pos must be [T_pos >= {T}, {C}], got {tuple(pos.shape)}")
    for name, blk, cls in (("gcx", gcx, GCParams), ("gch", gch, GCParams), ("sa", sa, SAParams)):
        if blk is not None and not isinstance(blk, cls):
            raise TypeError(f"{name} must be a staa.reference.{cls.__name__} or None, got {type(blk).__name__}")


def _surrogate_index(surrogate: str) -> int:
    """The kernels' ``SURROGATE`` constexpr: the kind's index in ``SURROGATE_KINDS``."""
    if surrogate not in SURROGATE_KINDS:
        raise ValueError(f"surrogate must be one of {', '.join(map(repr, SURROGATE_KINDS))}, got {surrogate!r}")
    return SURROGATE_KINDS.index(surrogate)


def _drop_i8(drop: Optional[Tensor], T: int, device) -> Tensor:
    if drop is None:
        return torch.zeros(T, dtype=torch.int8, device=device)
    return drop.to(device=device, dtype=torch.int8).contiguous()


def _vec(p: Tensor) -> Tensor:
    return p.detach().contiguous()


def _block(blk, cls, dummy: Tensor):
    """The block's weights detached and contiguous (same named tuple), or ``dummy`` in every
    field for a disabled block (its pointers are never dereferenced)."""
    if blk is None:
        return cls(*([dummy] * len(cls._fields)))
    return cls(*(_vec(w) for w in blk))


def _rest(v_reset: Optional[float]) -> float:
    """The constant H_{-1} when no initial state is given: v_reset (hard reset) or 0 (soft)."""
    return 0.0 if v_reset is None else float(v_reset)


def gc_mlp(ctx: Tensor, gc: GCParams):
    """GC's channel MLP on ``[N, C]``: the torch implementation's (``staa.ops.torch_impl.gc_mlp``)
    with the weights in ``ctx``'s dtype. Returns ``(delta, qhat, n, rstd)``, ``rstd`` ``[N]``."""
    delta, qhat, n, rstd = torch_impl.gc_mlp(ctx, _cast(gc, ctx.dtype))
    return delta, qhat, n, rstd[:, 0]


def plane_partials(src: Tensor, pos, gate, gc: Optional[GCParams], *, from_u: bool, want_sum: bool,
                   v_threshold: float, v_reset: Optional[float], h0: Optional[Tensor], CD):
    """Per-tile GC context (``gc`` given: its key) and spatial sum (``want_sum``) of every (t, b)
    plane, each ``[T*B, NP, C]`` in the layout the MLP kernels read, or None.

    The plane is ``X = src + pos`` or, with ``from_u``, ``H_{t-1} = reset(u_{t-1} * gate_{t-1})``
    (``src = u``; H_{-1} is ``h0``, a ``[B, C, P]`` tensor, or the rest constant). One read of ``src``.
    """
    T, B, C, P = src.shape
    cd = torch.float64 if CD == tl.float64 else torch.float32
    tc = tile_config(C, P)
    part_ctx = torch.empty((T * B, tc.NP, C), dtype=cd, device=src.device) if gc is not None else None
    part_sum = torch.empty((T * B, tc.NP, C), dtype=cd, device=src.device) if want_sum else None
    dummy = part_ctx if part_ctx is not None else part_sum
    rest = _rest(v_reset)
    has_h0 = from_u and h0 is not None
    _run(staa_plane_reduce_kernel, (T * B, tc.NP),
         src, pos if pos is not None else dummy, gate if gate is not None else dummy,
         gc.key_weight if gc is not None else dummy, gc.key_bias if gc is not None else dummy,
         part_ctx if part_ctx is not None else dummy, part_sum if part_sum is not None else dummy,
         h0 if has_h0 else dummy,
         B, C, P, tc.NP, float(v_threshold), rest, rest,
         FROM_U=from_u, HAS_H0=has_h0, HAS_POS=pos is not None, HAS_CTX=gc is not None, HAS_SUM=want_sum,
         HARD=v_reset is not None, BLOCK_C=tc.BLOCK_C, BLOCK_P=tc.BLOCK_P, CD=CD, num_warps=tc.num_warps)
    return part_ctx, part_sum


def plane_reductions(src: Tensor, pos, gate, gc: Optional[GCParams], *, from_u: bool, want_sum: bool,
                     v_threshold: float, v_reset: Optional[float], h0: Optional[Tensor], CD,
                     out_ctx: Optional[Tensor] = None, out_sum: Optional[Tensor] = None):
    """``plane_partials`` summed over the tiles in a fixed order: ``[T*B, C]`` each, or None
    (written into ``out_ctx`` / ``out_sum``, contiguous ``[T, B, C]``, where given)."""
    part_ctx, part_sum = plane_partials(src, pos, gate, gc, from_u=from_u, want_sum=want_sum,
                                        v_threshold=v_threshold, v_reset=v_reset, h0=h0, CD=CD)

    def total(part, out):
        if part is None:
            return None
        return part.sum(1) if out is None else torch.sum(part, 1, out=out.view(part.shape[0], part.shape[2]))

    return total(part_ctx, out_ctx), total(part_sum, out_sum)


def _initial_parts(rest: float, C: int, P: int, NP: int, B: int, gch: Optional[GCParams], cd, device):
    """Partial reductions of the constant initial state H_{-1} = rest, as the kernels lay them out."""
    part_ctx = torch.zeros(B, NP, C, dtype=cd, device=device)
    part_hsum = torch.zeros(B, NP, C, dtype=cd, device=device)
    if rest != 0.0:
        plane = torch.full((1, C, P), rest, dtype=cd, device=device)
        if gch is not None:
            part_ctx[:, 0, :] = torch_impl.gc_context(plane, gch.key_weight.to(cd), gch.key_bias.to(cd))[0]
        part_hsum[:, 0, :] = plane.sum(-1)[0]
    return part_ctx, part_hsum


def stat_rows(has_gcx: bool, has_gch: bool, has_sa: bool) -> dict:
    """Rows of the forward's kept reductions ``stats [K, T, B, C]`` (``keep_stats=True``): the
    GC1 context of X (``ctx1``), the spatial sum of X (``xsum``), the GC2 context of H_{t-1}
    (``ctx2``) and the spatial sum of H_{t-1} (``hsum``), those of the blocks present, in that order."""
    names = [n for n, on in (("ctx1", has_gcx), ("xsum", has_sa), ("ctx2", has_gch), ("hsum", has_sa)) if on]
    return {n: k for k, n in enumerate(names)}


def _on_device(fn):
    """Run ``fn`` with x's CUDA device current, so the kernels launch where the data is."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        i = 0 if fn.__name__ == "staa_lif_forward" else 2  # backward: (grad_spikes, grad_h_last, x, ...)
        x = args[i] if len(args) > i else kwargs["x"]
        if x.device.type == "cuda":
            with torch.cuda.device(x.device):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper



@_on_device
def staa_lif_forward(
    x: Tensor,
    drop: Optional[Tensor],
    h0: Optional[Tensor],
    pos: Optional[Tensor],
    gcx: Optional[GCParams],
    gch: Optional[GCParams],
    sa: Optional[SAParams],
    *,
    alpha: float,
    v_threshold: float,
    v_reset: Optional[float],
    detach_reset: bool,
    surrogate: str,
    surrogate_param: float,
    store_v_seq: bool,
    path: Optional[str] = None,
    keep_stats: bool = False,
):
    """Multi-step STAA-LIF forward with the Triton kernels.

    Args:
        x: input currents ``[T, B, C, P]`` (fp16/bf16/fp32/fp64), on CUDA or on the CPU
            under ``TRITON_INTERPRET=1``.
        drop: bool TSRD mask ``[T]`` (True: aggregator skipped, V_t = I_t + H_{t-1}); any step,
            the first included.
        h0: initial state H_{-1} ``[B, C, P]`` or ``None`` (v_reset for hard reset, 0 for soft).
        pos: position encoding ``[T_pos >= T, C]`` (row t at local step t) or ``None``.
        gcx, gch: GC1 / GC2 ``GCParams`` or ``None``; sa: ``SAParams`` or ``None``.
        surrogate, surrogate_param: checked, otherwise unused (only the backward depends on them).
        path: ``"per_step"``, ``"persistent"`` or ``"auto"``/``None`` (see ``loop_path``);
            both give the same results.
        keep_stats: also return the per-step reductions the forward computed (``stats``
            ``[K, T, B, C]``, rows named by ``stat_rows``), which ``staa_lif_backward`` takes
            instead of re-reading x and u to rebuild them.

    Returns:
        ``(spikes [T, B, C, P] x.dtype, h_last [B, C, P], v_seq [T, B, C, P] or None,
        u [T, B, C, P], gate [T, B, C])``, all but spikes in the compute dtype, then ``stats``
        with ``keep_stats``. Spikes are NaN where V is not finite.
    """
    _check(x, drop, h0, pos, gcx, gch, sa)
    _surrogate_index(surrogate)
    T, B, C, P = x.shape
    persistent = loop_path(C, P, path) == "persistent"
    cd, CD = _compute_dtype(x.dtype)
    dev = x.device
    x = x.contiguous()
    drop8 = _drop_i8(drop, T, dev)
    rest = _rest(v_reset)
    h0c = h0.detach().to(cd).contiguous() if h0 is not None else None
    gcx = None if gcx is None else _block(gcx, GCParams, None)
    gch = None if gch is None else _block(gch, GCParams, None)
    sa = None if sa is None else _block(sa, SAParams, None)
    posc = pos.detach()[:T].to(cd).contiguous() if pos is not None else None
    rows = stat_rows(gcx is not None, gch is not None, sa is not None)
    stats = torch.empty((len(rows), T, B, C), dtype=cd, device=dev) if keep_stats else None
    if x.numel() == 0:  # nothing to launch; the state after zero steps is H_{-1} (a fresh tensor)
        h_last = (h0c.clone() if h0c is not None else torch.full((B, C, P), rest, dtype=cd, device=dev))
        out = (torch.empty_like(x), h_last,
               torch.zeros((T, B, C, P), dtype=cd, device=dev) if store_v_seq else None,
               torch.zeros((T, B, C, P), dtype=cd, device=dev), torch.ones((T, B, C), dtype=cd, device=dev))
        return out + (stats.zero_(),) if keep_stats else out
    red = dict(v_threshold=v_threshold, v_reset=v_reset, CD=CD)

    # H-independent work for all steps at once.
    d1 = xmean = None
    if gcx is not None or sa is not None:
        ctx1, xsum = plane_reductions(x, posc, None, gcx, from_u=False, want_sum=sa is not None, h0=None, **red,
                                      out_ctx=stats[rows["ctx1"]] if keep_stats and gcx is not None else None,
                                      out_sum=stats[rows["xsum"]] if keep_stats and sa is not None else None)
        if gcx is not None:
            d1 = gc_mlp(ctx1, gcx)[0].reshape(T, B, C).contiguous()
        if sa is not None:
            xmean = (xsum / P).reshape(T, B, C).contiguous()
    ctx2_out = stats[rows["ctx2"]] if keep_stats and gch is not None else None
    hsum_out = stats[rows["hsum"]] if keep_stats and sa is not None else None

    tc = tile_config(C, P)
    u = torch.empty((T, B, C, P), dtype=cd, device=dev)
    spikes = torch.empty((T, B, C, P), dtype=x.dtype, device=dev)
    h_last = torch.empty((B, C, P), dtype=cd, device=dev)
    v_seq = torch.empty((T, B, C, P), dtype=cd, device=dev) if store_v_seq else None
    if sa is not None:
        gate = torch.empty((T, B, C), dtype=cd, device=dev)
    else:
        gate = torch.ones((T, B, C), dtype=cd, device=dev)
    d2 = torch.empty((B, C), dtype=cd, device=dev) if gch is not None else None
    # The reductions of H_{-1} that step 0's MLP kernel reads.
    if h0c is None or (gch is None and sa is None):
        part_ctx, part_hsum = _initial_parts(rest, C, P, tc.NP, B, gch, cd, dev)
    else:
        part_ctx, part_hsum = plane_partials(h0c[None], None, None, gch, from_u=False, want_sum=sa is not None,
                                             h0=None, **red)
        part_ctx = part_ctx if part_ctx is not None else torch.zeros_like(part_hsum)
        part_hsum = part_hsum if part_hsum is not None else torch.zeros_like(part_ctx)

    chg = gch.query_weight.shape[0] if gch is not None else 1
    chs = sa.fc1_weight.shape[0] if sa is not None else 1
    block_cc, (block_hg, block_hs), mlp_warps = mlp_config(C, chg, chs)
    dummy = u  # stands in for pointers of disabled blocks; never dereferenced
    g2 = _block(gch, GCParams, dummy)
    s4 = _block(sa, SAParams, dummy)
    flags = dict(HAS_GCX=gcx is not None, HAS_GCH=gch is not None, HAS_SA=sa is not None)
    scal = (float(v_threshold), rest, rest)  # v_th, v_reset, the constant H_{-1}
    if persistent:
        _run(staa_fwd_persistent_kernel, (B,),
            x, posc if posc is not None else dummy, d1 if d1 is not None else dummy,
            xmean if xmean is not None else dummy, d2 if d2 is not None else dummy, gate, u, spikes,
            v_seq if v_seq is not None else dummy, h_last, part_ctx, part_hsum, drop8,
            h0c if h0c is not None else dummy,
            ctx2_out if ctx2_out is not None else dummy, hsum_out if hsum_out is not None else dummy,
            g2.key_weight, g2.key_bias, g2.query_weight, g2.query_bias, g2.norm_weight, g2.norm_bias,
            g2.value_weight, g2.value_bias, s4.fc1_weight, s4.fc1_bias, s4.fc2_weight, s4.fc2_bias,
            T, B, C, P, tc.NP, chg, chs, float(alpha), *scal,
            HAS_H0=h0c is not None, HAS_POS=posc is not None, **flags, STATS=keep_stats, HARD=v_reset is not None,
            STORE_V=store_v_seq, BLOCK_C=tc.BLOCK_C, BLOCK_P=tc.BLOCK_P, BLOCK_CC=block_cc, BLOCK_HG=block_hg,
            BLOCK_HS=block_hs, CD=CD, num_warps=persistent_warps(tc),
        )
        return (spikes, h_last, v_seq, u, gate) + ((stats,) if keep_stats else ())
    for t in range(T):
        if gch is not None or sa is not None:
            _run(staa_fwd_mlp_kernel, (B,),
                part_ctx, part_hsum,
                d1 if d1 is not None else dummy, xmean if xmean is not None else dummy,
                d2 if d2 is not None else dummy, gate, drop8,
                ctx2_out if ctx2_out is not None else dummy, hsum_out if hsum_out is not None else dummy,
                g2.query_weight, g2.query_bias, g2.norm_weight, g2.norm_bias, g2.value_weight, g2.value_bias,
                s4.fc1_weight, s4.fc1_bias, s4.fc2_weight, s4.fc2_bias,
                t, B, C, P, tc.NP, chg, chs, float(alpha),
                **flags, STATS=keep_stats, BLOCK_CC=block_cc, BLOCK_HG=block_hg, BLOCK_HS=block_hs, CD=CD,
                num_warps=mlp_warps,
            )
        _run(staa_fwd_elem_kernel, (B, tc.NP),
            x, posc if posc is not None else dummy, d1 if d1 is not None else dummy,
            d2 if d2 is not None else dummy, gate, u, spikes,
            v_seq if v_seq is not None else dummy, h_last, part_ctx, part_hsum,
            g2.key_weight, g2.key_bias, drop8, h0c if h0c is not None and t == 0 else dummy,
            t, B, C, P, tc.NP, *scal,
            FIRST=t == 0, LAST=t == T - 1, HAS_H0=h0c is not None and t == 0, HAS_POS=posc is not None, **flags,
            HARD=v_reset is not None, STORE_V=store_v_seq,
            BLOCK_C=tc.BLOCK_C, BLOCK_P=tc.BLOCK_P, CD=CD, num_warps=tc.num_warps,
        )
    return (spikes, h_last, v_seq, u, gate) + ((stats,) if keep_stats else ())


def gc_mlp_weight_grads(gsum: Tensor, acts, gc: GCParams) -> tuple:
    """Gradients of GC's query/LayerNorm/value weights given dL/d(delta) for every (t, b), by the
    torch implementation's backward of the MLP: ``(query_weight, query_bias, norm_weight, norm_bias,
    value_weight, value_bias)``.

    ``gsum [T, B, C]`` (zero at dropped steps), ``acts = (ctx, qhat, n, rstd)`` from ``gc_mlp``.
    """
    ctx, qhat, n, rstd = acts
    gd = gsum.reshape(ctx.shape)
    w = _cast(gc, ctx.dtype)
    _, g_n, g_q = torch_impl.gc_mlp_backward(gd, qhat, n, rstd[:, None], w, want_ctx=False)
    return tuple(torch_impl.gc_mlp_weight_grads(ctx, qhat, n, gd, g_n, g_q))


def _like(grads, blk):
    """``grads`` (in field order) as ``blk``'s named tuple, each in its parameter's dtype."""
    return type(blk)(*(g.to(p.dtype) for g, p in zip(grads, blk)))


def _zero_grads(blk):
    return None if blk is None else type(blk)(*(torch.zeros_like(p) for p in blk))


def _mlp_activations(x, u, gate, posc, h0c, gcx, gch, sa, stats, alpha, red) -> dict:
    """The channel MLPs' activations for every (t, b), from the forward's kept reductions ``stats``
    (or, without them, from two plane reductions over x and u: H_{t-1} = reset(u_{t-1} * gate_{t-1})
    needs no recurrence). ``{"gcx"/"gch": (ctx, qhat, n, rstd), "sa": (pooled, hidden)}``."""
    T, B, C, P = x.shape
    cd = u.dtype
    acts = {}
    rows = stat_rows(gcx is not None, gch is not None, sa is not None)
    if stats is not None and tuple(stats.shape) != (len(rows), T, B, C):
        raise ValueError(f"stats must be the forward's kept reductions [K, T, B, C] = [{len(rows)}, {T}, {B}, {C}] "
                         f"({', '.join(rows) or 'none'} for these blocks), got {tuple(stats.shape)}")
    if stats is not None:
        kept = {n: stats[k].detach().to(cd).reshape(T * B, C) for n, k in rows.items()}
        ctx1, xsum, ctx2, hsum = (kept.get(n) for n in ("ctx1", "xsum", "ctx2", "hsum"))
    else:
        if gcx is not None or sa is not None:
            ctx1, xsum = plane_reductions(x, posc, None, gcx, from_u=False, want_sum=sa is not None, h0=None, **red)
        if gch is not None or sa is not None:
            ctx2, hsum = plane_reductions(u, None, gate, gch, from_u=True, want_sum=sa is not None, h0=h0c, **red)
    if sa is not None:
        xmean, hmean = xsum / P, hsum / P
    pooled_x = xmean if sa is not None else None
    pooled_h = hmean if sa is not None else None
    if gcx is not None:
        d1, qh1, n1, rstd1 = gc_mlp(ctx1, gcx)
        acts["gcx"] = (ctx1, qh1.contiguous(), n1.contiguous(), rstd1.contiguous())
        if sa is not None:
            pooled_x = pooled_x + d1
    if gch is not None:
        d2, qh2, n2, rstd2 = gc_mlp(ctx2, gch)
        acts["gch"] = (ctx2, qh2.contiguous(), n2.contiguous(), rstd2.contiguous())
        if sa is not None:
            pooled_h = pooled_h + d2
    if sa is not None:
        pooled = float(alpha) * (pooled_x + pooled_h)
        hid = torch.relu(torch.nn.functional.linear(pooled, sa.fc1_weight.to(cd), sa.fc1_bias.to(cd)))
        acts["sa"] = (pooled, hid.contiguous())
    return acts


def _weight_grads(acts, acc, gz, gsum, gpos_part, pos, gcx, gch, sa, T):
    """Parameter gradients from the kernels' per-program partials and per-step vectors: one
    fixed-order reduction over all (t, b) per parameter. ``(grad_pos, grad_gcx, grad_gch, grad_sa)``."""
    grad_pos = None
    if pos is not None:
        grad_pos = torch.zeros_like(pos)
        grad_pos[:T] = gpos_part.sum((1, 2)).to(pos.dtype)
    grad_gcx = grad_gch = grad_sa = None
    if gcx is not None:
        key = (acc[0].sum((0, 1))[None, :], acc[1].sum().reshape(1))
        grad_gcx = _like(key + gc_mlp_weight_grads(gsum, acts["gcx"], gcx), gcx)
    if gch is not None:
        key = (acc[2].sum((0, 1))[None, :], acc[3].sum().reshape(1))
        grad_gch = _like(key + gc_mlp_weight_grads(gsum, acts["gch"], gch), gch)
    if sa is not None:
        pooled, hid = acts["sa"]
        cd = pooled.dtype
        gzf = gz.reshape(-1, gz.shape[-1])
        ghid = (gzf @ sa.fc2_weight.to(cd)) * (hid > 0)
        grad_sa = _like((ghid.T @ pooled, ghid.sum(0), gzf.T @ hid, gzf.sum(0)), sa)
    return grad_pos, grad_gcx, grad_gch, grad_sa


@_on_device
def staa_lif_backward(
    grad_spikes: Tensor,
    grad_h_last: Optional[Tensor],
    x: Tensor,
    drop: Optional[Tensor],
    h0: Optional[Tensor],
    pos: Optional[Tensor],
    gcx: Optional[GCParams],
    gch: Optional[GCParams],
    sa: Optional[SAParams],
    u: Tensor,
    gate: Tensor,
    *,
    alpha: float,
    v_threshold: float,
    v_reset: Optional[float],
    detach_reset: bool,
    surrogate: str,
    surrogate_param: float,
    path: Optional[str] = None,
    stats: Optional[Tensor] = None,
):
    """Backward of ``staa_lif_forward`` in reverse time, through the ``surrogate`` kind's dS/dV
    (``staa.surrogate``) with parameter ``surrogate_param``.

    Args:
        grad_spikes: dL/dspikes ``[T, B, C, P]``.
        grad_h_last: dL/dH_{T-1} ``[B, C, P]`` or ``None`` (the last state is not used).
        x, drop, h0, pos, gcx, gch, sa: the forward's inputs.
        u, gate: the tensors saved by the forward (``[T, B, C, P]``, ``[T, B, C]``).
        path: ``"per_step"``, ``"persistent"`` or ``"auto"``/``None`` (see ``loop_path``);
            both give the same gradients, whichever path the forward took.
        stats: the forward's kept reductions (``keep_stats=True``), or ``None``: then two
            plane reductions re-read x and u to rebuild them.

    Returns:
        ``(grad_x [T, B, C, P] x.dtype, grad_h0 [B, C, P] h0.dtype or None, grad_pos (pos's
        shape) or None, grad_gcx GCParams or None, grad_gch GCParams or None, grad_sa SAParams
        or None)``; parameter gradients are in the parameters' dtypes, rows ``>= T`` of
        grad_pos are zero.
    """
    _check(x, drop, h0, pos, gcx, gch, sa)
    kind = _surrogate_index(surrogate)
    T, B, C, P = x.shape
    if grad_h_last is not None and tuple(grad_h_last.shape) != (B, C, P):
        raise ValueError(f"grad_h_last must be [B, C, P] = [{B}, {C}, {P}] or None, got {tuple(grad_h_last.shape)}")
    cd, CD = _compute_dtype(x.dtype)
    dev = x.device
    if x.numel() == 0:  # H_{T-1} is H_{-1}: grad_h0 is grad_h_last
        grad_h0 = None
        if h0 is not None:
            grad_h0 = (grad_h_last.detach().to(h0.dtype, copy=True) if grad_h_last is not None
                       else torch.zeros_like(h0))
        return (torch.zeros_like(x), grad_h0, torch.zeros_like(pos) if pos is not None else None,
                _zero_grads(gcx), _zero_grads(gch), _zero_grads(sa))
    x = x.contiguous()
    u = u.detach().to(cd).contiguous()
    gate = gate.detach().to(cd).contiguous()
    grad_spikes = grad_spikes.contiguous()
    drop8 = _drop_i8(drop, T, dev)
    rest = _rest(v_reset)
    h0c = h0.detach().to(cd).contiguous() if h0 is not None else None
    ghl = grad_h_last.detach().to(cd).contiguous() if grad_h_last is not None else None
    posc = pos.detach()[:T].to(cd).contiguous() if pos is not None else None
    gcx = None if gcx is None else _block(gcx, GCParams, None)
    gch = None if gch is None else _block(gch, GCParams, None)
    sa = None if sa is None else _block(sa, SAParams, None)
    has_mlp = gcx is not None or gch is not None or sa is not None
    persistent = loop_path(C, P, path) == "persistent"
    tc = tile_config(C, P)
    red = dict(v_threshold=v_threshold, v_reset=v_reset, CD=CD)

    # Recompute every forward activation of the channel MLPs, batched over all steps.
    with torch.no_grad():
        acts = _mlp_activations(x, u, gate, posc, h0c, gcx, gch, sa, stats, alpha, red)

    grad_x = torch.empty((T, B, C, P), dtype=x.dtype, device=dev)
    grad_h0 = torch.empty((B, C, P), dtype=cd, device=dev) if h0c is not None else None
    gv = torch.empty((2, B, C, P), dtype=cd, device=dev)  # dL/dV of two consecutive steps
    gv_bufs = [gv[0], gv[1]]
    part_a = torch.empty((B, tc.NP, C), dtype=cd, device=dev)
    part_b = torch.empty((B, tc.NP, C), dtype=cd, device=dev)
    vecs = [torch.empty((B, C), dtype=cd, device=dev) for _ in range(3)]  # gm, gctx1, gctx2
    gz = torch.empty((T, B, C), dtype=cd, device=dev) if has_mlp else None
    gsum = torch.empty((T, B, C), dtype=cd, device=dev) if has_mlp else None
    gpos_part = torch.empty((T, B, tc.NP, C), dtype=cd, device=dev) if posc is not None else None
    acc = [torch.zeros((B, tc.NP, C), dtype=cd, device=dev), torch.zeros((B, tc.NP), dtype=cd, device=dev),
           torch.zeros((B, tc.NP, C), dtype=cd, device=dev), torch.zeros((B, tc.NP), dtype=cd, device=dev)]

    dummy = u
    chs = sa.fc1_weight.shape[0] if sa is not None else 1
    chg1 = gcx.query_weight.shape[0] if gcx is not None else 1
    chg2 = gch.query_weight.shape[0] if gch is not None else 1
    block_cc, (block_hs, block_h1, block_h2), mlp_warps = mlp_config(C, chs, chg1, chg2)
    g1 = _block(gcx, GCParams, dummy)
    g2 = _block(gch, GCParams, dummy)
    s4 = _block(sa, SAParams, dummy)
    a1 = acts["gcx"][1:] if gcx is not None else (dummy,) * 3
    a2 = acts["gch"][1:] if gch is not None else (dummy,) * 3
    hid_t = acts["sa"][1] if sa is not None else dummy
    flags = dict(HAS_GCX=gcx is not None, HAS_GCH=gch is not None, HAS_SA=sa is not None)
    scal = (float(v_threshold), rest, rest, float(surrogate_param))  # v_th, v_reset, constant H_{-1}, p
    states = (h0c if h0c is not None else dummy, grad_h0 if grad_h0 is not None else dummy,
              ghl if ghl is not None else dummy)

    def elem(t, finish, start, gv_in, gv_out):
        # Specialise only where it matters: the surrogate where a step starts, h0 at t = 0,
        # grad_h_last at t = T.
        _run(staa_bwd_elem_kernel, (B, tc.NP),
            grad_spikes, x, posc if posc is not None else dummy, u, gate, drop8,
            gv_in, gv_out, vecs[0], vecs[1], vecs[2], grad_x,
            g1.key_weight, g1.key_bias, g2.key_weight, g2.key_bias, acc[0], acc[1], acc[2], acc[3],
            gpos_part if gpos_part is not None else dummy, part_a, part_b, *states,
            t, B, C, P, tc.NP, *scal,
            FINISH=finish, START=start, SURROGATE=kind if start else 0,
            HAS_H0=h0c is not None and finish and not start, HAS_GHL=ghl is not None and not finish,
            HAS_POS=posc is not None, **flags, HARD=v_reset is not None, DETACH=bool(detach_reset),
            BLOCK_C=tc.BLOCK_C, BLOCK_P=tc.BLOCK_P, CD=CD, num_warps=tc.num_warps,
        )

    if persistent:
        _run(staa_bwd_persistent_kernel, (B,),
            grad_spikes, x, posc if posc is not None else dummy, u, gate, drop8, gv,
            vecs[0], vecs[1], vecs[2], grad_x, g1.key_weight, g1.key_bias, g2.key_weight, g2.key_bias,
            acc[0], acc[1], acc[2], acc[3], gpos_part if gpos_part is not None else dummy, part_a, part_b,
            hid_t, s4.fc1_weight, s4.fc2_weight,
            a1[1], a1[0], a1[2], g1.norm_weight, g1.query_weight, g1.value_weight,
            a2[1], a2[0], a2[2], g2.norm_weight, g2.query_weight, g2.value_weight,
            gz if gz is not None else dummy, gsum if gsum is not None else dummy, *states,
            T, B, C, P, tc.NP, chs, chg1, chg2, float(alpha), *scal,
            SURROGATE=kind, HAS_H0=h0c is not None, HAS_GHL=ghl is not None,
            HAS_POS=posc is not None, **flags, HARD=v_reset is not None, DETACH=bool(detach_reset),
            BLOCK_C=tc.BLOCK_C, BLOCK_P=tc.BLOCK_P,
            BLOCK_CC=block_cc, BLOCK_HS=block_hs, BLOCK_HG1=block_h1, BLOCK_HG2=block_h2,
            CD=CD, num_warps=persistent_warps(tc),
        )
    else:
        elem(T, False, True, gv_bufs[1], gv_bufs[0])  # dL/dV_{T-1} (dL/dH_{T-1} = grad_h_last or 0)
        for t in range(T - 1, -1, -1):
            k = (T - 1 - t) % 2
            if has_mlp:
                _run(staa_bwd_mlp_kernel, (B,),
                    part_a, part_b, gate, drop8,
                    hid_t, s4.fc1_weight, s4.fc2_weight,
                    a1[1], a1[0], a1[2], g1.norm_weight, g1.query_weight, g1.value_weight,
                    a2[1], a2[0], a2[2], g2.norm_weight, g2.query_weight, g2.value_weight,
                    vecs[0], vecs[1], vecs[2], gz, gsum,
                    t, B, C, tc.NP, chs, chg1, chg2, float(alpha),
                    **flags, BLOCK_CC=block_cc, BLOCK_HS=block_hs, BLOCK_HG1=block_h1, BLOCK_HG2=block_h2,
                    CD=CD, num_warps=mlp_warps,
                )
            elem(t, True, t > 0, gv_bufs[k], gv_bufs[1 - k])

    with torch.no_grad():
        grad_pos, grad_gcx, grad_gch, grad_sa = _weight_grads(acts, acc, gz, gsum, gpos_part, pos, gcx, gch, sa, T)
    if grad_h0 is not None:
        grad_h0 = grad_h0.to(h0.dtype)
    return grad_x, grad_h0, grad_pos, grad_gcx, grad_gch, grad_sa
