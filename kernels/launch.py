"""Launchers of the STAA-LIF Triton kernels: the ``backend="triton"`` side of the op contract.

``staa_lif_forward`` / ``staa_lif_backward`` take and return exactly what the torch
implementation of the custom op does (see ``staa.ops``): inputs ``x [T, B, C, P]``, the bool
TSRD mask ``drop [T]``, the position encoding and the GC/SA weight tuples; saved tensors
``u [T, B, C, P]`` and ``gate [T, B, C]`` in the compute dtype.

Work that does not depend on the membrane state (position encoding, GC1 on every step,
X's share of SA's spatial mean, and in backward every forward activation, since H_t is a
pure function of the saved ``u_t`` and ``gate_t``) runs batched over all steps with torch
ops. The time loop launches two kernels per step; see docs/triton.md for the layout.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import triton
import triton.language as tl

# from .staa_bwd import staa_bwd_elem_kernel, staa_bwd_mlp_kernel
from .staa_fwd import staa_fwd_elem_kernel, staa_fwd_mlp_kernel

Tensor = torch.Tensor

__all__ = ["TileConfig", "tile_config", "mlp_config", "staa_lif_forward", "staa_lif_backward"]

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


def _compute_dtype(dtype: torch.dtype):
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def _check(x: Tensor, drop: Optional[Tensor], pos, gcx, gch, sa):
    if x.dim() != 4:
        raise ValueError(f"x must be [T, B, C, P], got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"x must be float16/bfloat16/float32/float64, got {x.dtype}")
    T, B, C, P = x.shape
    if drop is not None and tuple(drop.shape) != (T,):
        raise ValueError(f"drop must be a bool mask of shape [{T}], got {tuple(drop.shape)}")
    if pos is not None and (pos.dim() != 2 or pos.shape[0] < T or pos.shape[1] != C):
        raise ValueError(f"pos must be [T_pos >= {T}, {C}], got {tuple(pos.shape)}")
    for name, blk, n in (("gcx", gcx, 8), ("gch", gch, 8), ("sa", sa, 4)):
        if blk is not None and len(blk) != n:
            raise ValueError(f"{name} must be a tuple of {n} tensors or None, got {len(blk)}")


def _drop_i8(drop: Optional[Tensor], T: int, device) -> Tensor:
    if drop is None:
        return torch.zeros(T, dtype=torch.int8, device=device)
    return drop.to(device=device, dtype=torch.int8).contiguous()


def _vec(p: Tensor) -> Tensor:
    return p.detach().contiguous()


def gc_context(z: Tensor, key_w: Tensor, key_b: Tensor) -> Tensor:
    """GC's attention-weighted context ``sum_p sigmoid(key(z_p)) z_p``: ``[N, C, P] -> [N, C]``."""
    cd = z.dtype
    logits = torch.einsum("ncp,c->np", z, key_w[0].to(cd)) + key_b.to(cd)
    return torch.einsum("ncp,np->nc", z, torch.sigmoid(logits))


def gc_mlp(ctx: Tensor, gc: Sequence[Tensor], eps: float = 1e-5):
    """GC's channel MLP ``value(relu(LN(query(ctx))))`` on ``[N, C]``.

    Returns ``(delta, qhat, n, rstd)``: the output ``[N, C]``, the normalised query
    ``[N, Ch]``, the LayerNorm output before the relu ``[N, Ch]`` and ``1/std`` ``[N]``.
    """
    cd = ctx.dtype
    _, _, qw, qb, nw, nb, vw, vb = (p.to(cd) for p in gc)
    q = torch.nn.functional.linear(ctx, qw, qb)
    mu = q.mean(-1, keepdim=True)
    var = (q - mu).square().mean(-1, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    qhat = (q - mu) * rstd
    n = qhat * nw + nb
    delta = torch.nn.functional.linear(torch.relu(n), vw, vb)
    return delta, qhat, n, rstd[..., 0]


def _initial_parts(h0: float, C: int, P: int, NP: int, B: int, gch, cd, device):
    """Partial reductions of the constant initial state H_{-1} = h0, as the kernels lay them out."""
    part_ctx = torch.zeros(B, NP, C, dtype=cd, device=device)
    part_hsum = torch.zeros(B, NP, C, dtype=cd, device=device)
    if h0 != 0.0:
        plane = torch.full((1, C, P), h0, dtype=cd, device=device)
        if gch is not None:
            part_ctx[:, 0, :] = gc_context(plane, gch[0], gch[1])[0]
        part_hsum[:, 0, :] = plane.sum(-1)[0]
    return part_ctx, part_hsum


def staa_lif_forward(
    x: Tensor,
    drop: Optional[Tensor],
    pos: Optional[Tensor],
    gcx: Optional[Sequence[Tensor]],
    gch: Optional[Sequence[Tensor]],
    sa: Optional[Sequence[Tensor]],
    *,
    alpha: float,
    v_threshold: float,
    v_reset: Optional[float],
    detach_reset: bool,
    surrogate_width: float,
    store_v_seq: bool,
):
    """Multi-step STAA-LIF forward with the Triton kernels.

    Args:
        x: input currents ``[T, B, C, P]`` (fp16/bf16/fp32/fp64), on CUDA or on the CPU
            under ``TRITON_INTERPRET=1``.
        drop: bool TSRD mask ``[T]`` (True: aggregator skipped, V_t = I_t + H_{t-1}).
        pos: position encoding ``[T_pos >= T, C]`` or ``None``.
        gcx, gch: GC1 / GC2 weight 8-tuples or ``None``; sa: SA weight 4-tuple or ``None``.

    Returns:
        ``(spikes [T, B, C, P] x.dtype, h_last [B, C, P], v_seq [T, B, C, P] or None,
        u [T, B, C, P], gate [T, B, C])``, all but spikes in the compute dtype.
    """
    _check(x, drop, pos, gcx, gch, sa)
    T, B, C, P = x.shape
    cd, CD = _compute_dtype(x.dtype)
    dev = x.device
    x = x.contiguous()
    drop8 = _drop_i8(drop, T, dev)
    h0 = 0.0 if v_reset is None else float(v_reset)
    vr = 0.0 if v_reset is None else float(v_reset)
    gcx = None if gcx is None else [_vec(p) for p in gcx]
    gch = None if gch is None else [_vec(p) for p in gch]
    sa = None if sa is None else [_vec(p) for p in sa]
    posc = pos.detach()[:T].to(cd).contiguous() if pos is not None else None

    # H-independent work for all steps at once.
    d1 = xmean = None
    if gcx is not None or sa is not None:
        X = x.to(cd)
        if posc is not None:
            X = X + posc[:, None, :, None]
        Xf = X.reshape(T * B, C, P)
        if gcx is not None:
            d1 = gc_mlp(gc_context(Xf, gcx[0], gcx[1]), gcx)[0].reshape(T, B, C).contiguous()
        if sa is not None:
            xmean = X.mean(-1).contiguous()
        del X, Xf

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
    part_ctx, part_hsum = _initial_parts(h0, C, P, tc.NP, B, gch, cd, dev)

    chg = gch[2].shape[0] if gch is not None else 1
    chs = sa[0].shape[0] if sa is not None else 1
    block_cc, (block_hg, block_hs), mlp_warps = mlp_config(C, chg, chs)
    dummy = u  # stands in for pointers of disabled blocks; never dereferenced
    g2 = gch if gch is not None else [dummy] * 8
    s4 = sa if sa is not None else [dummy] * 4
    flags = dict(HAS_GCX=gcx is not None, HAS_GCH=gch is not None, HAS_SA=sa is not None)
    for t in range(T):
        if gch is not None or sa is not None:
            staa_fwd_mlp_kernel[(B,)](
                part_ctx, part_hsum,
                d1 if d1 is not None else dummy, xmean if xmean is not None else dummy,
                d2 if d2 is not None else dummy, gate, drop8,
                g2[2], g2[3], g2[4], g2[5], g2[6], g2[7],
                s4[0], s4[1], s4[2], s4[3],
                t, B, C, P, tc.NP, chg, chs, float(alpha),
                **flags, BLOCK_CC=block_cc, BLOCK_HG=block_hg, BLOCK_HS=block_hs, CD=CD,
                num_warps=mlp_warps,
            )
        staa_fwd_elem_kernel[(B, tc.NP)](
            x, posc if posc is not None else dummy, d1 if d1 is not None else dummy,
            d2 if d2 is not None else dummy, gate, u, spikes,
            v_seq if v_seq is not None else dummy, h_last, part_ctx, part_hsum,
            g2[0], g2[1], drop8,
            t, B, C, P, tc.NP, float(v_threshold), vr, h0,
            FIRST=t == 0, LAST=t == T - 1, HAS_POS=posc is not None, **flags,
            HARD=v_reset is not None, STORE_V=store_v_seq,
            BLOCK_C=tc.BLOCK_C, BLOCK_P=tc.BLOCK_P, CD=CD, num_warps=tc.num_warps,
        )
    return spikes, h_last, v_seq, u, gate


def staa_lif_backward(*args, **kwargs):  # replaced below once the backward kernels exist
    raise NotImplementedError
