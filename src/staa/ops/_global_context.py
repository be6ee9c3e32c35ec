"""The global-context block GC (eqs. 7-10 of the paper) of the torch implementation: forward, the
per-step caches the backward reuses, and its hand-written backward.

GC(Z) = Z + W_v(ReLU(LN(W_q ctx))) with the context ctx = sum_p sigmoid(W_k Z_p) Z_p, one context per
sample and channel; :mod:`staa.ops.torch_impl` runs GC1 on X_t and GC2 on H_{t-1}.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

_LN_EPS = 1e-5


def _zero_if(dropped: Tensor, t: Tensor) -> Tensor:
    """``t``, or zeros at a dropped step (``dropped`` a 0-d bool device tensor); exact zeros even
    where ``t`` is not finite."""
    return torch.where(dropped, 0.0, t)


class _GCCache(NamedTuple):
    """Intermediates of GC's channel path for ``N`` samples (N = T*B or B)."""

    w: Tensor  # [N, P]   sigmoid(key(z_p))
    ctx: Tensor  # [N, C]  sum_p w_p z_p
    qhat: Tensor  # [N, Ch] query(ctx), normalised (LayerNorm before its affine transform)
    rstd: Tensor  # [N, 1]  1 / std of query(ctx)
    n: Tensor  # [N, Ch]   LayerNorm(query(ctx))
    delta: Tensor  # [N, C] value(relu(n)), added to every position


def _weighted_sum(z: Tensor, w: Tensor) -> Tensor:
    """sum_p w[n, p] z[n, :, p] for ``z`` ``[N, C, P]`` and ``w`` ``[N, P]`` -> ``[N, C]``.

    Written as ``w @ z^T`` on a transposed view: a row-vector times matrix batched matmul,
    which CPU BLAS runs several times faster than ``z @ w`` or a multiply-and-sum. With one
    position (``P = 1``, a layer after ``nn.Linear``) the sum is a product: CPU BLAS runs a
    batch of 1 x 1 by 1 x C products one by one, about 20x slower.
    """
    if z.shape[2] == 1:
        return z[:, :, 0] * w
    return torch.bmm(w.unsqueeze(1), z.transpose(1, 2)).squeeze(1)


def gc_key_weights(z: Tensor, key_weight: Tensor, key_bias: Tensor) -> Tensor:
    """GC's attention over positions, sigmoid(key(z_p)) ``[N, P]``, for ``z`` ``[N, C, P]`` (eq. 7)."""
    N, C, P = z.shape
    if P == 1:  # one matmul [N, C] x [C, 1] instead of N row-vector products
        return torch.sigmoid(torch.addmm(key_bias, z.reshape(N, C), key_weight.reshape(C, 1)))
    return torch.sigmoid(torch.bmm(key_weight.expand(N, 1, C), z).squeeze(1) + key_bias)


def gc_context(z: Tensor, key_weight: Tensor, key_bias: Tensor) -> Tensor:
    """GC's attention-weighted context ``sum_p sigmoid(key(z_p)) z_p``: ``[N, C, P] -> [N, C]``. Also the
    Triton launchers' (for a constant initial state)."""
    return _weighted_sum(z, gc_key_weights(z, key_weight, key_bias))


def gc_mlp(ctx: Tensor, p) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """GC's channel MLP ``value(relu(LayerNorm(query(ctx))))`` on ``ctx [N, C]`` (eqs. 8-9), with the
    block's weights ``p`` in ``ctx``'s dtype. Also the Triton launchers' (``staa.kernels.launch``).

    Returns ``(delta [N, C], qhat [N, Ch], n [N, Ch], rstd [N, 1])``: the output, the normalised
    query, the LayerNorm output before the relu and 1 / std of the query.
    """
    q = F.linear(ctx, p.query_weight, p.query_bias)
    n, mean, rstd = torch.native_layer_norm(q, q.shape[-1:], p.norm_weight, p.norm_bias, _LN_EPS)
    delta = F.linear(torch.relu(n), p.value_weight, p.value_bias)
    return delta, (q - mean) * rstd, n, rstd


def gc_mlp_backward(g_delta: Tensor, qhat: Tensor, n: Tensor, rstd: Tensor, p, want_ctx: bool = True):
    """Backward of :func:`gc_mlp` for ``g_delta [N, C]``.

    Returns ``(g_ctx [N, C] or None, g_n [N, Ch] (relu mask applied), g_q [N, Ch])``.
    """
    g_n = torch.matmul(g_delta, p.value_weight) * (n > 0)
    g_xhat = g_n * p.norm_weight
    g_q = rstd * (g_xhat - g_xhat.mean(-1, keepdim=True) - qhat * (g_xhat * qhat).mean(-1, keepdim=True))
    return (torch.matmul(g_q, p.query_weight) if want_ctx else None), g_n, g_q


def gc_mlp_weight_grads(ctx: Tensor, qhat: Tensor, n: Tensor, g_delta: Tensor, g_n: Tensor, g_q: Tensor) -> List[Tensor]:
    """Gradients of the MLP's 6 weights (query weight and bias, LayerNorm weight and bias, value weight
    and bias, in GCParams order) from per-sample rows stacked over all steps: one fixed-order
    reduction over the rows each."""
    return [
        g_q.t() @ ctx,  # query_w [Ch, C]
        g_q.sum(0),  # query_b
        (g_n * qhat).sum(0),  # norm_w
        g_n.sum(0),  # norm_b
        g_delta.t() @ torch.relu(n),  # value_w [C, Ch]
        g_delta.sum(0),  # value_b
    ]


def _gc_forward(z: Tensor, p, with_mean: bool = False):
    """GC's context path on ``z`` ``[N, C, P]`` (eqs. 7-10 without the final add).

    Returns the cache and, with ``with_mean``, also mean_p z ``[N, C]`` (SA's pooling), taken
    in the same pass over ``z`` as the attention-weighted sum.
    """
    P = z.shape[-1]
    w = gc_key_weights(z, p.key_weight, p.key_bias)  # [N, P]
    if with_mean and P == 1:  # no batched matmul for one position (see _weighted_sum)
        ctx, zmean = _weighted_sum(z, w), z.mean(-1)
    elif with_mean:
        rows = torch.stack((w, torch.full_like(w, 1.0 / P)), dim=1)  # [N, 2, P]
        red = torch.bmm(rows, z.transpose(1, 2))  # [N, 2, C]
        ctx, zmean = red[:, 0], red[:, 1]
    else:
        ctx, zmean = _weighted_sum(z, w), None
    delta, qhat, n, rstd = gc_mlp(ctx, p)
    cache = _GCCache(w, ctx, qhat, rstd, n, delta)
    return (cache, zmean) if with_mean else cache


def _gc_and_mean(z: Tensor, p, want_mean: bool):
    """GC's cache on ``z`` ``[N, C, P]`` (None without a block ``p``) and mean_p z ``[N, C]`` (None
    unless ``want_mean``, i.e. step attention is on), both in one pass over ``z`` when both are wanted."""
    if p is not None:
        return _gc_forward(z, p, with_mean=True) if want_mean else (_gc_forward(z, p), None)
    return None, (z.mean(-1) if want_mean else None)


def _gc_mlp_backward(g_delta: Tensor, c: _GCCache, p):
    """:func:`gc_mlp_backward` on a cache: ``(g_ctx, g_n, g_q)``."""
    return gc_mlp_backward(g_delta, c.qhat, c.n, c.rstd, p)


def _gc_input_grad(g_out: Tensor, z: Tensor, g_ctx: Tensor, c: _GCCache, p, out: Tensor):
    """dL/dz for GC(z) = z + delta(ctx(z)): ``g_out`` (the identity path) plus the
    context path, written to ``out``. Returns the key-logit gradient ``[N, P]``."""
    N, C, P = z.shape
    if P == 1:  # the same sums as below without batches of tiny matmuls (see _weighted_sum)
        g_logit = torch.linalg.vecdot(g_ctx, z[:, :, 0]).unsqueeze(1).mul_(c.w * (1.0 - c.w))
        out0 = out[:, :, 0]
        torch.addcmul(g_out[:, :, 0], g_ctx, c.w, out=out0)
        out0.addcmul_(p.key_weight.reshape(1, C), g_logit)
        return g_logit
    g_w = torch.bmm(g_ctx.unsqueeze(1), z).squeeze(1)  # d ctx / d w_p = z_p
    g_logit = g_w.mul_(c.w * (1.0 - c.w))
    left = torch.cat((g_ctx.unsqueeze(2), p.key_weight.reshape(1, C, 1).expand(N, C, 1)), dim=2)  # [N, C, 2]
    right = torch.stack((c.w, g_logit), dim=1)  # [N, 2, P]
    if out is g_out:
        out.baddbmm_(left, right)
    else:
        torch.baddbmm(g_out, left, right, out=out)
    return g_logit


def _gc_weight_grads(c: _GCCache, g_delta, g_n, g_q, g_key_w, g_logit) -> List[Tensor]:
    """Gradients of the 8 GC weights from per-sample gradients stacked over all steps."""
    key = [g_key_w.reshape(1, -1), g_logit.sum().reshape(1)]  # key_w [1, C], key_b [1]
    return key + gc_mlp_weight_grads(c.ctx, c.qhat, c.n, g_delta, g_n, g_q)


def _keep_gc_step(store, t, z, c: _GCCache, g_delta, g_n, g_q, g_logit, dropped: Optional[Tensor] = None) -> None:
    """Keep one step's small GC intermediates for the weight gradients; add its key gradient.
    With ``dropped`` (a device flag, see ``torch_impl._dropped_on_host``) a dropped step keeps zero rows."""
    caches, grads, g_key = store
    g_key_t = _weighted_sum(z, g_logit).sum(0)
    if dropped is not None:
        c = _GCCache(*(_zero_if(dropped, f) for f in c))
        g_delta, g_n, g_q, g_logit = (_zero_if(dropped, f) for f in (g_delta, g_n, g_q, g_logit))
        g_key_t = _zero_if(dropped, g_key_t)
    caches[t], grads[t] = c, (g_delta, g_n, g_q, g_logit)
    g_key += g_key_t


def _gc_grads_from_steps(store, p) -> List[Tensor]:
    caches, grads, g_key = store
    steps = sorted(caches)
    if not steps:  # every step dropped
        return [torch.zeros_like(w) for w in p]
    if len(steps) == 1:  # a single-step call: nothing to stack
        c, (g_delta, g_n, g_q, g_logit) = caches[steps[0]], grads[steps[0]]
    else:
        c = _GCCache(*(torch.cat(fields) for fields in zip(*(caches[t] for t in steps))))
        g_delta, g_n, g_q, g_logit = (torch.cat(f) for f in zip(*(grads[t] for t in steps)))
    return _gc_weight_grads(c, g_delta, g_n, g_q, g_key, g_logit)
