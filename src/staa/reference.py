"""Plain PyTorch reference of the STAA-LIF neuron, written straight from the paper.

This module is the specification and the test oracle for every fast path. It is
written for clarity, not speed: one time step at a time, every block a direct
transcription of its equation in "STAA-SNN: Spatial-Temporal Attention Aggregator
for Spiking Neural Networks" (CVPR 2025), section 3.

Layout convention: a layer's input is ``[T, B, C, P]`` where ``P = H * W`` (``P = 1``
for ``[T, B, C]`` inputs). All attention arithmetic runs in float32 (float64 when the
input is float64); spikes come back in the input dtype.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F

from .surrogate import Surrogate, spike, surrogate_spec

Tensor = torch.Tensor

__all__ = [
    "GCParams",
    "SAParams",
    "STAAParams",
    "compute_dtype",
    "rect_spike",
    "global_context",
    "step_attention",
    "staa_lif_reference",
]


class GCParams(NamedTuple):
    """Weights of one global-context block (eqs. 7-10), shapes for C channels, Ch hidden."""

    key_weight: Tensor  # [1, C]
    key_bias: Tensor  # [1]
    query_weight: Tensor  # [Ch, C]
    query_bias: Tensor  # [Ch]
    norm_weight: Tensor  # [Ch]
    norm_bias: Tensor  # [Ch]
    value_weight: Tensor  # [C, Ch]
    value_bias: Tensor  # [C]


class SAParams(NamedTuple):
    """Weights of the step-attention block (eq. 12)."""

    fc1_weight: Tensor  # [Ch, C]
    fc1_bias: Tensor  # [Ch]
    fc2_weight: Tensor  # [C, Ch]
    fc2_bias: Tensor  # [C]


class STAAParams(NamedTuple):
    """All learnable tensors of one STAA-LIF layer; a disabled block is ``None``."""

    pos: Optional[Tensor]  # [T, C]
    gc_x: Optional[GCParams]
    gc_h: Optional[GCParams]
    sa: Optional[SAParams]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype state and reductions are kept in: float64 for float64 input, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rect_spike(v: Tensor, v_threshold: float = 1.0, width: float = 1.0) -> Tensor:
    """S = [v >= v_threshold]; dS/dv = 1/width where |v - v_threshold| < width/2 (strict), else 0
    (eq. 5). NaN where v is not finite. See :func:`staa.surrogate.spike` for the other kinds."""
    return spike(v, v_threshold, surrogate_spec("rect", width=width))


def global_context(z: Tensor, p: GCParams) -> Tensor:
    """Global-context block GC(Z) of eqs. 7-10 on ``z`` of shape ``[B, C, P]``.

    w_p = sigmoid(key(Z_p)) per position (eq. 7), context = sum_p w_p Z_p (a C-vector
    that grows with the number of positions, as in the paper), then
    out = Z + value(relu(LN(query(context)))) broadcast over positions (eqs. 8-10).
    """
    cd = compute_dtype(z.dtype)
    z = z.to(cd)
    logits = torch.einsum("bcp,c->bp", z, p.key_weight[0].to(cd)) + p.key_bias.to(cd)
    weights = torch.sigmoid(logits)  # [B, P]
    context = torch.einsum("bcp,bp->bc", z, weights)  # [B, C]
    q = F.linear(context, p.query_weight.to(cd), p.query_bias.to(cd))
    q = F.layer_norm(q, q.shape[-1:], p.norm_weight.to(cd), p.norm_bias.to(cd), eps=1e-5)
    delta = F.linear(F.relu(q), p.value_weight.to(cd), p.value_bias.to(cd))  # [B, C]
    return z + delta[:, :, None]


def step_attention(u: Tensor, p: SAParams, alpha: float = 2.0) -> Tensor:
    """Step attention SA(U) of eq. 12 on ``u`` of shape ``[B, C, P]``.

    V = U * sigmoid(fc2(relu(fc1(alpha * mean_p U)))), a per-sample channel gate.
    """
    cd = compute_dtype(u.dtype)
    u = u.to(cd)
    pooled = alpha * u.mean(dim=2)  # [B, C]
    hidden = F.relu(F.linear(pooled, p.fc1_weight.to(cd), p.fc1_bias.to(cd)))
    gate = torch.sigmoid(F.linear(hidden, p.fc2_weight.to(cd), p.fc2_bias.to(cd)))
    return u * gate[:, :, None]


def staa_lif_reference(
    x: Tensor,
    params: STAAParams,
    drop: Optional[Tensor] = None,
    *,
    alpha: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: Optional[float] = 0.0,
    detach_reset: bool = False,
    surrogate: Union[str, Surrogate] = "rect",
    surrogate_width: Optional[float] = None,
    surrogate_alpha: Optional[float] = None,
    h0: Optional[Tensor] = None,
    t0: int = 0,
    return_states: bool = False,
    return_potentials: bool = False,
):
    """Multi-step STAA-LIF on ``x`` of shape ``[T, B, C, P]``; returns spikes ``[T, B, C, P]``.

    Per step t (section 3): X_t = I_t + PE_t (eq. 11); U_t = GC1(X_t) + GC2(H_{t-1})
    (eq. 13); V_t = SA(U_t) (eq. 12/14); S_t = [V_t >= v_th] (eq. 2); hard reset
    H_t = v_reset S_t + V_t (1 - S_t) (eq. 3) or, with ``v_reset=None``, soft reset
    H_t = V_t - v_th S_t. Where ``drop[t]`` is true (TSRD, sec. 3.2) the aggregator is
    skipped and V_t = I_t + H_{t-1}. S_t is NaN where V_t is not finite.

    Args:
        x: input currents ``[T, B, C, P]``.
        params: the layer's weights; ``None`` entries are disabled blocks.
        drop: bool ``[T]`` TSRD mask, or ``None`` for no drops.
        surrogate: the surrogate kind (``"rect"``, ``"atan"``, ``"sigmoid"``, ``"fast_sigmoid"``,
            see :mod:`staa.surrogate`) or a :class:`~staa.surrogate.Surrogate`; ``surrogate_width``
            sets the rectangle's width, ``surrogate_alpha`` the other kinds' sharpness.
        h0: membrane state H_{-1} ``[B, C, P]``; default ``v_reset`` (hard) or 0 (soft).
            Differentiable: its gradient flows back through the returned states.
        t0: index of x[0] into the position encoding (single-step use).
        return_states: also return H for every step, ``[T, B, C, P]`` in the compute dtype.
        return_potentials: also return V for every step (before firing and reset), ``[T, B, C, P]``
            in the compute dtype, after the states when both are asked for.
    """
    T = x.shape[0]
    if isinstance(surrogate, Surrogate):
        if surrogate_width is not None or surrogate_alpha is not None:
            raise ValueError("pass either a Surrogate or surrogate_width/surrogate_alpha, not both")
        sg = surrogate
    else:
        sg = surrogate_spec(surrogate, surrogate_width, surrogate_alpha)
    cd = compute_dtype(x.dtype)
    xc = x.to(cd)
    if drop is None:
        drop = torch.zeros(T, dtype=torch.bool, device=x.device)
    if h0 is None:
        h = torch.full_like(xc[0], 0.0 if v_reset is None else float(v_reset))
    else:
        h = h0.to(cd)
    spikes, states, potentials = [], [], []
    for t in range(T):
        i_t = xc[t]
        x_t = i_t + params.pos[t0 + t].to(cd)[None, :, None] if params.pos is not None else i_t
        gx = global_context(x_t, params.gc_x) if params.gc_x is not None else x_t
        gh = global_context(h, params.gc_h) if params.gc_h is not None else h
        u_t = gx + gh
        v_att = step_attention(u_t, params.sa, alpha) if params.sa is not None else u_t
        v_t = torch.where(drop[t], i_t + h, v_att)
        s_t = spike(v_t, v_threshold, sg)
        s_r = s_t.detach() if detach_reset else s_t
        if v_reset is None:
            h = v_t - v_threshold * s_r
        else:
            h = v_reset * s_r + v_t * (1.0 - s_r)
        spikes.append(s_t)
        states.append(h)
        potentials.append(v_t)
    out = torch.stack(spikes).to(x.dtype)
    extra = ((torch.stack(states),) if return_states else ()) + ((torch.stack(potentials),) if return_potentials else ())
    return (out, *extra) if extra else out
