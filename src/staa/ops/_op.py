"""The ``staa::lif_forward`` / ``staa::lif_backward`` custom ops and their autograd.

One ``torch.library`` op runs the whole multi-step recurrence; its backward is a second
op, so ``torch.compile`` sees two opaque nodes (with fake implementations for shape
propagation) and never traces into the time loops.

Parameters travel as a list of the present tensors plus a list of 21 flags saying which
of ``[pos, gc_x (8), gc_h (8), sa (4)]`` are there (a disabled block has its flags off).
Autograd of custom ops does not round-trip lists holding ``None``, hence the flags.

Autocast: the ops are autocast-neutral. They run on their inputs as given (spikes come
back in ``x``'s dtype) and switch autocast off inside, so the attention MLPs and the
state are always float32 (float64 for float64 input), with or without autocast.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from ..reference import compute_dtype
from . import torch_impl

Tensor = torch.Tensor

N_PARAMS = 21  # pos + 8 + 8 + 4
_GCX = slice(1, 9)
_GCH = slice(9, 17)
_SA = slice(17, 21)


def _expand(params: Sequence[Tensor], present: Sequence[bool]) -> List[Optional[Tensor]]:
    it = iter(params)
    return [next(it) if here else None for here in present]


def _split(params: Sequence[Optional[Tensor]]):
    def block(sl):
        ws = params[sl]
        return None if ws[0] is None else tuple(ws)

    return params[0], block(_GCX), block(_GCH), block(_SA)


def _backend(use_triton: bool):
    if use_triton:
        from staa.kernels import launch  # imports triton; only on this path

        return launch
    return torch_impl


@torch.library.custom_op("staa::lif_forward", mutates_args=())
def lif_forward(
    x: Tensor,
    drop: Tensor,
    params: List[Tensor],
    present: List[bool],
    alpha: float,
    v_threshold: float,
    v_reset: Optional[float],
    detach_reset: bool,
    surrogate_width: float,
    store_v_seq: bool,
    use_triton: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns ``(spikes, h_last, v_seq, u, gate)``; ``v_seq`` is empty unless ``store_v_seq``."""
    pos, gcx, gch, sa = _split(_expand(params, present))
    with torch.autocast(x.device.type, enabled=False):
        spikes, h_last, v_seq, u, gate = _backend(use_triton).staa_lif_forward(
            x, drop, pos, gcx, gch, sa,
            alpha=alpha, v_threshold=v_threshold, v_reset=v_reset, detach_reset=detach_reset,
            surrogate_width=surrogate_width, store_v_seq=store_v_seq,
        )
    if v_seq is None:
        v_seq = x.new_empty((0,), dtype=compute_dtype(x.dtype))
    return spikes, h_last, v_seq, u, gate


@lif_forward.register_fake
def _(x, drop, params, present, alpha, v_threshold, v_reset, detach_reset, surrogate_width, store_v_seq, use_triton):
    T, B, C, P = x.shape
    cd = compute_dtype(x.dtype)
    return (
        torch.empty_like(x),
        x.new_empty((B, C, P), dtype=cd),
        x.new_empty((T, B, C, P) if store_v_seq else (0,), dtype=cd),
        x.new_empty((T, B, C, P), dtype=cd),
        x.new_empty((T, B, C), dtype=cd),
    )


@torch.library.custom_op("staa::lif_backward", mutates_args=())
def lif_backward(
    grad_spikes: Tensor,
    x: Tensor,
    drop: Tensor,
    params: List[Tensor],
    present: List[bool],
    u: Tensor,
    gate: Tensor,
    alpha: float,
    v_threshold: float,
    v_reset: Optional[float],
    detach_reset: bool,
    surrogate_width: float,
    use_triton: bool,
) -> List[Tensor]:
    """Returns ``[grad_x, *grads of params in list order]``."""
    pos, gcx, gch, sa = _split(_expand(params, present))
    with torch.autocast(x.device.type, enabled=False):
        gx, gpos, ggcx, ggch, gsa = _backend(use_triton).staa_lif_backward(
            grad_spikes.contiguous() if use_triton else grad_spikes, x, drop, pos, gcx, gch, sa, u, gate,
            alpha=alpha, v_threshold=v_threshold, v_reset=v_reset, detach_reset=detach_reset,
            surrogate_width=surrogate_width,
        )
    out = [gx]
    if gpos is not None:
        out.append(gpos)
    for g in (ggcx, ggch, gsa):
        if g is not None:
            out.extend(g)
    return out


@lif_backward.register_fake
def _(grad_spikes, x, drop, params, present, u, gate, *scalars):
    return [torch.empty_like(x)] + [torch.empty_like(p) for p in params]


def _setup_context(ctx, inputs, output):
    x, drop, params, present, alpha, v_threshold, v_reset, detach_reset, surrogate_width, _, use_triton = inputs
    _, h_last, v_seq, u, gate = output
    ctx.present = list(present)
    ctx.scalars = (alpha, v_threshold, v_reset, detach_reset, surrogate_width, use_triton)
    ctx.mark_non_differentiable(h_last, v_seq, u, gate)
    ctx.save_for_backward(x, drop, u, gate, *params)


def _backward(ctx, grad_spikes, *_unused):
    x, drop, u, gate, *params = ctx.saved_tensors
    alpha, v_threshold, v_reset, detach_reset, surrogate_width, use_triton = ctx.scalars
    grads = lif_backward(
        grad_spikes, x, drop, params, ctx.present, u, gate,
        alpha, v_threshold, v_reset, detach_reset, surrogate_width, use_triton,
    )
    return grads[0], None, list(grads[1:]), None, None, None, None, None, None, None, None


torch.library.register_autograd("staa::lif_forward", _backward, setup_context=_setup_context)
