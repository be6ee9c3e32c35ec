"""Torch implementation of the STAA-LIF recurrence: forward and hand-written backward.

Both functions follow the backend contract shared with the Triton kernels
(``staa.kernels.launch``): the forward keeps only ``u`` (the aggregated input
U_t, ``[T, B, C, P]``) and the SA ``gate`` (``[T, B, C]``); the backward recomputes
V_t = u_t * gate_t (the forward's exact op, so the surrogate mask agrees with the
spikes already emitted), S_t and H_t from them, and every attention intermediate
from ``x``, H and the weights.

In the forward, work that does not depend on the membrane state is done for all steps
at once (the position encoding, GC1 on every step and GC1's share of SA's spatial mean);
only GC2, the SA MLP and one elementwise pass (aggregate, gate, fire, reset) stay in the
time loop. The backward recomputes step by step in reverse time so that its working set
stays in cache (see ``staa_lif_backward``); weight gradients are summed over all steps
with one matmul each at the end.

Layout: ``x`` is ``[T, B, C, P]`` with ``P = H * W``. All arithmetic runs in the
compute dtype ``cd`` (float64 for float64 input, else float32).
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from ..reference import GCParams, SAParams, compute_dtype
from ._global_context import _gc_and_mean, _gc_grads_from_steps, _gc_input_grad, _gc_mlp_backward, _keep_gc_step

Tensor = torch.Tensor

__all__ = ["staa_lif_forward", "staa_lif_backward"]


def _cast(ws, cd: torch.dtype):
    """The block's weights (a GCParams / SAParams) in the compute dtype, same named tuple."""
    if ws is None or all(w.dtype == cd for w in ws):  # the usual case: no dispatch at all
        return ws
    return type(ws)(*(w.to(cd) for w in ws))


# Devices whose TSRD mask is read on the host, so that dropped steps skip the aggregator. On
# any other device (CUDA, ...) a host read would stall until the device catches up and cannot
# be captured in a CUDA graph: there every step runs the aggregator and the mask selects the
# result on the device (the same values; see ``_dropped_on_host``).
HOST_MASK_DEVICES = ("cpu",)


def _dropped_on_host(drop: Tensor) -> Optional[List[bool]]:
    """The TSRD mask as host flags when it lives on a host device, else ``None``: the caller then
    runs every step whole and selects with ``drop[t]`` on the device (no host synchronisation,
    the same operations and allocations whatever the mask holds)."""
    return drop.tolist() if drop.device.type in HOST_MASK_DEVICES else None


# --------------------------------------------------------------------- SA block
def _sa_hidden(m: Tensor, p, alpha: float) -> Tuple[Tensor, Tensor]:
    """fc1's output and the gate sigmoid(fc2(relu(fc1(alpha * m)))) for ``m`` ``[N, C]``."""
    y1 = F.linear(alpha * m, p.fc1_weight, p.fc1_bias)
    return y1, torch.sigmoid(F.linear(torch.relu(y1), p.fc2_weight, p.fc2_bias))


# --------------------------------------------------------------------- shared
def _fire_and_reset(v: Tensor, v_threshold: float, v_reset: Optional[float], spike_out: Tensor,
                    mask_buf: Optional[Tensor], h_out: Tensor) -> Tensor:
    """S = [v >= v_th] (NaN where v is not finite) into ``spike_out`` and H = reset(v, S) into ``h_out``.

    With ``mask_buf`` (the backward, which keeps 1 - S for later) 1 - S is written there;
    without it (the forward) H = v - v S in one pass, the same values for S in {0, 1}.
    Masks are kept as 0/1 floats: on CPU comparisons and products with float operands
    are several times faster than with bool tensors, and the values are the same as
    the reference's v_reset * S + v * (1 - S) and v - v_th * S.
    """
    # S = [v >= v_th] + 0 * v: 0/1 for a finite v, NaN where v is NaN or infinite, so a
    # non-finite value shows in the spikes (and the loss) instead of silencing the neuron.
    torch.ge(v, v_threshold, out=spike_out).add_(v, alpha=0.0)
    if v_reset is None:
        return torch.add(v, spike_out, alpha=-v_threshold, out=h_out)
    if mask_buf is None:
        torch.addcmul(v, v, spike_out, value=-1.0, out=h_out)
    else:
        torch.lt(v, v_threshold, out=mask_buf)  # 1 - S
        torch.mul(v, mask_buf, out=h_out)
    if v_reset != 0.0:
        h_out.add_(spike_out, alpha=v_reset)
    return h_out


def _surrogate_grad_into(v: Tensor, v_threshold: float, kind: str, p: float, out: Tensor) -> Tensor:
    """dS/dV at ``v`` for the surrogate ``kind`` with parameter ``p``, into ``out`` (in place,
    no temporaries). Same formulas as :func:`staa.surrogate.surrogate_grad`."""
    x = torch.sub(v, v_threshold, out=out)
    if kind == "rect":  # 1/p inside the strict window |x| < p/2
        x.abs_().lt_(p / 2)
        return x if p == 1.0 else x.mul_(1.0 / p)
    if kind == "atan":  # p / (2 (1 + (pi/2 p x)^2))
        return x.mul_(math.pi / 2 * p).square_().add_(1.0).reciprocal_().mul_(p / 2)
    if kind == "sigmoid":  # p sg (1 - sg), sg = sigmoid(p x)
        x.mul_(p).sigmoid_()
        return x.addcmul_(x, x, value=-1.0).mul_(p)
    if kind == "fast_sigmoid":  # 1 / (p |x| + 1)^2
        return x.abs_().mul_(p).add_(1.0).square_().reciprocal_()
    raise ValueError(f"unknown surrogate kind {kind!r}")


def _gc1_all_steps(x: Tensor, pos: Optional[Tensor], gcx, T: int, with_mean: bool):
    """X = I + PE for all steps (``[T, B, C, P]`` cd, a fresh tensor unless it is ``x``
    itself), GC1's cache over all ``T * B`` samples and, with ``with_mean``, mean_p X."""
    _, B, C, P = x.shape
    cd = compute_dtype(x.dtype)
    if pos is not None:
        xx = x.to(cd) + pos[:T].to(cd)[:, None, :, None]
    else:
        xx = x.to(cd)
    if gcx is None:  # no reshape (a copy for a non-contiguous x) when no GC block needs [T*B, C, P]
        return xx, None, xx.mean(-1) if with_mean else None
    c1, xmean = _gc_and_mean(xx.reshape(T * B, C, P), gcx, with_mean)
    return xx, c1, None if xmean is None else xmean.reshape(T, B, C)


# --------------------------------------------------------------------- forward
def staa_lif_forward(
    x: Tensor,
    drop: Tensor,
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
) -> Tuple[Tensor, Tensor, Optional[Tensor], Tensor, Tensor]:
    """STAA-LIF over ``x`` ``[T, B, C, P]`` (backend contract, see module docstring).

    ``h0`` is the initial state H_{-1} ``[B, C, P]`` (compute dtype) or ``None`` for the resting
    state; ``pos`` holds the position-encoding rows of these steps (row t for step t).

    Returns ``(spikes [T, B, C, P] x.dtype, h_last [B, C, P] cd, v_seq [T, B, C, P] cd or None,
    u [T, B, C, P] cd, gate [T, B, C] cd)``; ``h_last`` is always a fresh tensor.
    """
    del detach_reset, surrogate, surrogate_param  # backward-only settings
    T, B, C, P = x.shape
    cd = compute_dtype(x.dtype)
    dev = x.device
    gcx, gch, sa = _cast(gcx, cd), _cast(gch, cd), _cast(sa, cd)
    dropped = _dropped_on_host(drop)  # None: select on the device
    xc = x.to(cd)

    # H-independent work for all steps at once: X = I + PE, GC1(X) and its spatial mean.
    g1, c1, m1 = _gc1_all_steps(x, pos, gcx, T, with_mean=sa is not None)  # m1: mean_p X [T, B, C]
    if c1 is not None:
        d1 = c1.delta.reshape(T, B, C)
        if g1.data_ptr() == x.data_ptr():
            g1 = g1 + d1[..., None]
        else:
            g1.add_(d1[..., None])  # X is a fresh buffer here: reuse it for GC1(X)
        if m1 is not None:
            m1 = m1 + d1

    u = torch.empty((T, B, C, P), dtype=cd, device=dev)
    gate = torch.ones((T, B, C), dtype=cd, device=dev)
    spikes = torch.empty_like(x)
    v_seq = torch.empty((T, B, C, P), dtype=cd, device=dev) if store_v_seq else None
    # H_t is written into h_out (overwritten in place step by step); h0, possibly the
    # caller's tensor, is only read.
    if h0 is None:
        h = h_out = torch.full((B, C, P), 0.0 if v_reset is None else float(v_reset), dtype=cd, device=dev)
    else:
        h, h_out = h0.to(cd), torch.empty((B, C, P), dtype=cd, device=dev)
    v_buf = torch.empty((B, C, P), dtype=cd, device=dev)
    spike_buf = None if x.dtype == cd else torch.empty_like(v_buf)
    for t in range(T):
        u_t = u[t]
        if dropped is not None and dropped[t]:
            torch.add(xc[t], h, out=u_t)
            v = u_t  # the gate is exactly 1
        else:
            c2, hmean = _gc_and_mean(h, gch, sa is not None)
            if c2 is not None:
                d2 = c2.delta
                torch.add(h, d2.unsqueeze(2), out=u_t)
                u_t.add_(g1[t])  # GC1(X_t) + GC2(H_{t-1})
                if hmean is not None:
                    hmean = hmean + d2
            else:
                torch.add(g1[t], h, out=u_t)
            g = _sa_hidden(m1[t] + hmean, sa, alpha)[1] if sa is not None else None
            if dropped is None:  # a dropped step's U = I + H and gate 1, chosen on the device
                d_t = drop[t]
                torch.where(d_t, xc[t] + h, u_t, out=u_t)
                if g is not None:
                    g = torch.where(d_t, 1.0, g)
            if g is not None:
                gate[t] = g
                v = torch.mul(u_t, g.unsqueeze(2), out=v_buf)  # exactly U where the gate is 1
            else:
                v = u_t
        s_out = spikes[t] if spike_buf is None else spike_buf
        # u_t already holds H_{t-1}'s contribution, so H_t may overwrite it.
        h = _fire_and_reset(v, v_threshold, v_reset, s_out, None, h_out if v_seq is None else v_seq[t])
        if spike_buf is not None:
            spikes[t].copy_(spike_buf)
    h_last = h if h is h_out and v_seq is None else h.clone()  # never an alias of h0 or v_seq
    return spikes, h_last, v_seq, u, gate


# --------------------------------------------------------------------- backward
# --------------------------------------------------------------------- backward, one step
class _SARows(NamedTuple):
    """Step attention's per-step rows ``[T, B, *]`` kept for its weight gradients."""

    z1: Tensor  # fc1's input alpha * (mean_p X + mean_p H terms)  [T, B, C]
    r1: Tensor  # relu(fc1(z1))                                   [T, B, Ch]
    g_y1: Tensor  # dL/d fc1's output                              [T, B, Ch]
    g_o: Tensor  # dL/d fc2's output (before the sigmoid)          [T, B, C]


def _grad_v(win: Tensor, gs_t: Tensor, g_h: Optional[Tensor], v: Tensor, ns: Tensor, v_threshold: float,
            v_reset: Optional[float], detach_reset: bool, out: Tensor) -> Tensor:
    """dL/dV_t = dS/dV (dL/dS_t + dL/dH_t dH/dS) + dL/dH_t dH/dV, with ``win`` = dS/dV (the
    surrogate), ``ns`` = 1 - S_t and ``g_h`` = dL/dH_t (None: no gradient yet). Written to ``out``."""
    if g_h is None:
        return torch.mul(win, gs_t, out=out)
    if v_reset is None:  # H = V - v_th S
        if detach_reset:
            return torch.mul(win, gs_t, out=out).add_(g_h)
        return torch.add(gs_t, g_h, alpha=-v_threshold, out=out).mul_(win).add_(g_h)
    # H = v_reset S + V (1 - S)
    h_rest = float(v_reset)
    if detach_reset:
        g_v = torch.mul(win, gs_t, out=out)
    else:  # ((v_reset - V) dL/dH + dL/dS) dS/dV
        g_v = torch.addcmul(gs_t, v, g_h, value=-1.0, out=out)
        if h_rest != 0.0:
            g_v.add_(g_h, alpha=h_rest)
        g_v.mul_(win)
    return g_v.addcmul_(g_h, ns)


def _recompute_step(xx_t: Optional[Tensor], h_prev: Tensor, wx, wh, ws):
    """One step's attention inputs, recomputed: GC1(X_t)'s and GC2(H_{t-1})'s caches (or None) and
    SA's pooled input before the scale alpha, mean_p GC1(X_t) + mean_p GC2(H_{t-1}) (or None)."""
    c1, m = _gc_and_mean(xx_t, wx, ws is not None)  # xx_t is None only when neither block reads it
    c2, hmean = _gc_and_mean(h_prev, wh, ws is not None)
    pooled = None
    if ws is not None:
        if c1 is not None:
            m = m + c1.delta
        if c2 is not None:
            hmean = hmean + c2.delta
        pooled = m + hmean
    return c1, c2, pooled


def _sa_backward_step(t: int, pooled: Tensor, g_v: Tensor, u_t: Tensor, gate_t: Tensor, ws, alpha: float,
                      rows: _SARows, out: Tensor) -> None:
    """Backward of V_t = U_t * SA(U_t) for step ``t``: dL/dU_t into ``out``; the step's rows for the
    weight gradients into ``rows``."""
    P = u_t.shape[-1]
    z1 = alpha * pooled
    y1 = F.linear(z1, ws.fc1_weight, ws.fc1_bias)
    g_gate = torch.linalg.vecdot(g_v, u_t)  # V = u * gate
    go = rows.g_o[t]
    torch.mul(g_gate, gate_t * (1.0 - gate_t), out=go)
    torch.mul(go @ ws.fc2_weight, y1 > 0, out=rows.g_y1[t])
    rows.z1[t] = z1
    rows.r1[t] = torch.relu(y1)
    g_m = (rows.g_y1[t] @ ws.fc1_weight).mul_(alpha / P)  # d mean_p / d u = 1/P
    torch.addcmul(g_m.unsqueeze(2), g_v, gate_t.unsqueeze(2), out=out)


def _sa_weight_grads(rows: _SARows) -> List[Tensor]:
    """fc1 and fc2 weight and bias gradients, one matmul or sum over all T*B rows each."""
    flat = lambda g: g.reshape(-1, g.shape[-1])  # noqa: E731
    gy, go = flat(rows.g_y1), flat(rows.g_o)
    return [gy.t() @ flat(rows.z1), gy.sum(0), go.t() @ flat(rows.r1), go.sum(0)]


def _aggregator_step_backward(t: int, g_v: Tensor, xx_t: Optional[Tensor], h_prev: Tensor, u_t: Tensor,
                              gate_t: Tensor, blocks, alpha: float, sa_rows: Optional[_SARows], gc_steps,
                              g_u: Tensor, g_hprev: Optional[Tensor], dropped: Optional[Tensor] = None) -> None:
    """Backward of one step that ran the aggregator, from dL/dV_t ``g_v``: dL/dX_t into ``g_u``
    (dL/dU_t plus GC1's context path), dL/dH_{t-1} into ``g_hprev`` (None when nobody wants it),
    the step's rows for the weight gradients into ``sa_rows`` and ``gc_steps``.

    ``xx_t`` is X_t = I_t + PE_t (None when neither GC1 nor SA reads it), ``h_prev`` H_{t-1},
    ``blocks`` the compute-dtype ``(gc_x, gc_h, sa)`` (None where off), ``dropped`` the step's
    device TSRD flag when the caller selects on the device (the GC rows kept are then zeros)."""
    wx, wh, ws = blocks
    c1, c2, pooled = _recompute_step(xx_t, h_prev, wx, wh, ws)
    if ws is not None:
        _sa_backward_step(t, pooled, g_v, u_t, gate_t, ws, alpha, sa_rows, out=g_u)
    else:
        g_u.copy_(g_v)
    # U_t = GC1(X_t) + GC2(H_{t-1}): both blocks see dL/dU_t, and the C-vector each
    # adds to every position sees its spatial sum.
    g_d = g_u.sum(-1) if (c1 is not None or c2 is not None) else None
    if c2 is not None:  # dL/dH_{t-1} (at t = 0 without h0 only the weights' share is used)
        g_ctx, g_n, g_q = _gc_mlp_backward(g_d, c2, wh)
        g_l = _gc_input_grad(g_u, h_prev, g_ctx, c2, wh, out=g_hprev)
        _keep_gc_step(gc_steps["h"], t, h_prev, c2, g_d, g_n, g_q, g_l, dropped)
    elif g_hprev is not None:
        g_hprev.copy_(g_u)
    if c1 is not None:  # dL/dX_t, in place
        g_ctx, g_n, g_q = _gc_mlp_backward(g_d, c1, wx)
        g_l = _gc_input_grad(g_u, xx_t, g_ctx, c1, wx, out=g_u)
        _keep_gc_step(gc_steps["x"], t, xx_t, c1, g_d, g_n, g_q, g_l, dropped)


def _grad_h0(h0: Tensor, from_step0: Optional[Tensor], grad_h_last: Optional[Tensor]) -> Tensor:
    """dL/dH_{-1}: what step 0 sent back, else (T = 0) the incoming gradient of the last state."""
    if from_step0 is not None:
        return from_step0.to(h0.dtype)
    if grad_h_last is not None:
        return grad_h_last.to(h0.dtype, copy=True)
    return torch.zeros_like(h0)


def staa_lif_backward(
    grad_spikes: Tensor,
    grad_h_last: Optional[Tensor],
    x: Tensor,
    drop: Tensor,
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
):
    """Gradients w.r.t. ``x``, ``h0``, ``pos`` and the block weights, in reverse time.

    ``grad_h_last`` (dL/dH_{T-1}, or ``None`` when the loss does not use the last state) is
    added to the gradient flowing back from the last step.

    Returns ``(grad_x [T, B, C, P] x.dtype, grad_h0 [B, C, P] or None (None when h0 is None),
    grad_pos [T_pos, C] or None, grad_gcx or None, grad_gch or None, grad_sa or None)``; the
    block gradients are tuples in the fields' order, every gradient in its input's dtype.

    Everything is recomputed one step at a time inside the reverse loop: V_t = u_t * gate_t
    and S_t, H_{t-1} from u_{t-1}, X_t and GC1(X_t), GC2(H_{t-1}) and SA's input. The working
    set stays a few ``[B, C, P]`` buffers that fit in cache, and ``x`` and ``u`` are read
    once; on CPUs this beats recomputing GC1 for all steps at once, which streams
    ``[T, B, C, P]`` temporaries through memory several times. Weight gradients are
    summed over all steps with one matmul each after the loop.
    """
    T, B, C, P = x.shape
    cd = compute_dtype(x.dtype)
    dev = x.device
    dropped = _dropped_on_host(drop)  # None: select on the device
    wx, wh, ws = _cast(gcx, cd), _cast(gch, cd), _cast(sa, cd)
    h_rest = 0.0 if v_reset is None else float(v_reset)
    want_h0 = h0 is not None

    xc = x.to(cd)
    pos_c = None if pos is None else pos.to(cd)
    # dL/dU_t goes straight into grad_x[t]; GC1's context path is then added in place.
    grad_x = torch.empty((T, B, C, P), dtype=cd, device=dev)
    buf = lambda: torch.empty((B, C, P), dtype=cd, device=dev)  # noqa: E731
    v_cur, ns_cur, win, tmp, gh_buf = buf(), buf(), buf(), buf(), buf()
    # H_{t-1} recomputed from step t-1, only when there is one (its spikes are scratch: never read)
    v_prev, s_scratch, ns_prev, h_prev = (buf() for _ in range(4)) if T > 1 else (None,) * 4
    xx_buf = buf() if pos is not None else None
    # dL/dH_t, flowing backwards in time (None: no gradient yet)
    g_h = None if grad_h_last is None else grad_h_last.to(cd)
    sa_rows = None
    if ws is not None:
        hidden = ws.fc1_weight.shape[0]
        # per step: fc1's input alpha * mean, its relu output, and the gradients of fc1's and
        # fc2's outputs (zero at dropped steps)
        sa_rows = _SARows(*(torch.zeros(T, B, n, dtype=cd, device=dev) for n in (C, hidden, hidden, C)))
    grad_pos = None if pos is None else torch.zeros(pos.shape, dtype=cd, device=dev)
    # per GC block: {t: cache}, {t: small grads}, running key-weight gradient
    gc_steps = {k: ({}, {}, torch.zeros(C, dtype=cd, device=dev)) for k in ("x", "h")}

    if T > 0:
        torch.mul(u[T - 1], gate[T - 1].unsqueeze(2), out=v_cur)
        torch.lt(v_cur, v_threshold, out=ns_cur)
    for t in reversed(range(T)):
        # H_{t-1}: the initial state (read in place, only read below), or reset(V_{t-1})
        # recomputed from u and gate.
        if t > 0:
            torch.mul(u[t - 1], gate[t - 1].unsqueeze(2), out=v_prev)
            _fire_and_reset(v_prev, v_threshold, v_reset, s_scratch, ns_prev, h_prev)
        elif want_h0:
            h_prev = h0.to(cd)
        elif h_prev is not None:
            h_prev.fill_(h_rest)
        else:
            h_prev = torch.full((B, C, P), h_rest, dtype=cd, device=dev)
        need_gh = t > 0 or want_h0  # dL/dH_{t-1} is wanted

        _surrogate_grad_into(v_cur, v_threshold, surrogate, surrogate_param, out=win)
        g_v = _grad_v(win, grad_spikes[t], g_h, v_cur, ns_cur, v_threshold, v_reset, detach_reset, out=tmp)
        g_u = grad_x[t]

        if dropped is not None and dropped[t]:  # V_t = I_t + H_{t-1}: dL/dI_t = dL/dH_{t-1} = dL/dV_t
            g_u.copy_(g_v)
            if need_gh:
                gh_buf.copy_(g_v)
        else:
            d_t = None if dropped is not None else drop[t]
            xx_t = None
            if wx is not None or ws is not None:
                xx_t = torch.add(xc[t], pos_c[t].unsqueeze(1), out=xx_buf) if pos is not None else xc[t]
            _aggregator_step_backward(t, g_v, xx_t, h_prev, u[t], gate[t], (wx, wh, ws), alpha, sa_rows,
                                      gc_steps, g_u, gh_buf if need_gh or wh is not None else None, d_t)
            if grad_pos is not None:
                torch.sum(g_u, dim=(0, 2), out=grad_pos[t])
            if d_t is not None:  # a dropped step, chosen on the device: as the branch above
                # (step attention's rows need nothing: the forward stored a gate of exactly 1 there,
                # so their gradients, gate * (1 - gate) times the rest, are exactly 0)
                if grad_pos is not None:
                    grad_pos[t].masked_fill_(d_t, 0.0)
                torch.where(d_t, g_v, g_u, out=g_u)
                if need_gh:
                    torch.where(d_t, g_v, gh_buf, out=gh_buf)
        g_h = gh_buf
        v_cur, v_prev = v_prev, v_cur
        ns_cur, ns_prev = ns_prev, ns_cur

    grads_gcx = None if wx is None else _gc_grads_from_steps(gc_steps["x"], wx)
    grads_gch = None if wh is None else _gc_grads_from_steps(gc_steps["h"], wh)

    grads_sa = None if ws is None else _sa_weight_grads(sa_rows)

    def back(grads, ref):
        return None if grads is None else tuple(g.to(r.dtype) for g, r in zip(grads, ref))

    grad_h0 = None
    if want_h0:  # dL/dH_{-1}: what step 0 sent back, or the incoming gradient when T = 0
        grad_h0 = _grad_h0(h0, gh_buf if T > 0 else None, grad_h_last)
    if pos is not None:
        grad_pos = grad_pos.to(pos.dtype)
    return (grad_x.to(x.dtype), grad_h0, grad_pos, back(grads_gcx, gcx), back(grads_gch, gch),
            back(grads_sa, sa))
