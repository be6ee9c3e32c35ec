"""The functional STAA-LIF: one entry point for multi-step and single-step use.

:func:`staa_lif` runs the neuron over ``T >= 0`` steps from an initial state and returns the
spikes and the last state. A multi-step call is ``staa_lif(x)`` from rest; single-step use
is a chain of ``T = 1`` calls, each fed the previous call's state and its own step index
``t0`` (the position-encoding row). Gradients flow through the returned state, so a chain
of single-step calls backpropagates exactly like one multi-step call on the same input.
:class:`staa.STAALIF` calls only this function.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

from ._backend import resolve_backend
from .ops import staa_lif_op
from .reference import STAAParams, compute_dtype
from .surrogate import Surrogate

Tensor = torch.Tensor

__all__ = ["NeuronConfig", "staa_lif", "staa_lif_multistep"]


class NeuronConfig(NamedTuple):
    """Scalar settings of one STAA-LIF layer.

    ``alpha`` is step attention's pooling scale (eq. 12); the surrogate's own parameter lives
    in ``surrogate`` (a :class:`staa.surrogate.Surrogate`: kind and width or alpha).
    """

    alpha: float = 2.0
    v_threshold: float = 1.0
    v_reset: Optional[float] = 0.0
    detach_reset: bool = False
    surrogate: Surrogate = Surrogate()


def _pos_rows(pos: Optional[Tensor], t0: Union[int, Tensor], T: int) -> Optional[Tensor]:
    """The position-encoding rows of steps ``t0 .. t0 + T - 1``."""
    if pos is None:
        return None
    if isinstance(t0, Tensor):
        # A tensor step index (single-step under torch.compile): no Python int to specialise on.
        return pos.index_select(0, t0.reshape(1).to(device=pos.device, dtype=torch.long)
                                + torch.arange(T, device=pos.device))
    if t0 < 0 or t0 + T > pos.shape[0]:
        raise ValueError(
            f"steps {t0}..{t0 + T - 1} need position-encoding rows that pos (shape {list(pos.shape)}) does not "
            f"have; the layer was built for T={pos.shape[0]} steps: call reset() between sequences, or build "
            f"it with a larger T"
        )
    return pos[t0:t0 + T]


def staa_lif(
    x: Tensor,
    params: STAAParams,
    cfg: NeuronConfig = NeuronConfig(),
    *,
    drop: Optional[Tensor] = None,
    h0: Optional[Tensor] = None,
    t0: Union[int, Tensor] = 0,
    backend: str = "auto",
    store_v_seq: bool = False,
):
    """STAA-LIF over ``x`` of shape ``[T, B, C, ...]`` (``[T, B, C, H, W]``, ``[T, B, C]``, ...).

    Args:
        x: input currents ``[T, B, C, *spatial]``, floating point; ``T`` may be 1 (one step).
        params: the layer's weights (:class:`staa.reference.STAAParams`, e.g. ``STAALIF.params()``);
            ``params.pos`` is the whole position encoding ``[T_pos, C]``.
        cfg: the scalar settings (:class:`NeuronConfig`).
        drop: bool TSRD mask ``[T]`` (True: the aggregator is skipped at that step), or ``None``.
        h0: initial state H_{t0-1} ``[B, C, *spatial]``, or ``None`` for rest (``v_reset``; 0 for
            soft reset). Its gradient is returned by autograd.
        t0: index of ``x[0]`` in the sequence (selects the position-encoding rows
            ``pos[t0 : t0 + T]``): a Python int, or a 0-d integer tensor (no recompilation per
            step under ``torch.compile``; then the row range is not checked on the host).
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (``auto`` honours ``STAA_BACKEND``).
        store_v_seq: also return every state H ``[T, B, C, *spatial]`` (detached).

    Returns:
        ``(spikes, h_last, v_seq)``: spikes shaped and typed like ``x`` (NaN where the membrane
        potential is not finite); the last state H_{t0+T-1} ``[B, C, *spatial]`` in float32
        (float64 for float64 input), differentiable; ``v_seq`` or ``None``.
    """
    if x.dim() < 3:
        raise ValueError(f"staa_lif expects x of shape [T, B, C, ...], got shape {list(x.shape)}")
    _check_not_transformed(x)
    T, B, C = x.shape[:3]
    x4 = x.reshape(T, B, C, -1) if x.numel() else x.new_empty((T, B, C, _plane(x.shape[3:])))
    P = x4.shape[3]
    which = resolve_backend(backend, x.device)
    if drop is None:
        drop = torch.zeros(T, dtype=torch.bool, device=x.device)
    elif not isinstance(drop, Tensor) or drop.dtype != torch.bool or tuple(drop.shape) != (T,):
        got = f"{drop.dtype} of shape {list(drop.shape)}" if isinstance(drop, Tensor) else type(drop).__name__
        raise ValueError(f"drop must be a bool tensor of shape [{T}] (one flag per step), got {got}")
    if params.pos is not None and (params.pos.dim() != 2 or params.pos.shape[1] != C):
        raise ValueError(f"pos must have shape [T_pos, {C}] for {C} input channels, got {list(params.pos.shape)}")
    h0_4 = None
    if h0 is not None:
        if tuple(h0.shape) != tuple(x.shape[1:]):
            raise ValueError(
                f"h0 must have the shape of one step of x, {list(x.shape[1:])}, got {list(h0.shape)}"
            )
        h0_4 = h0.reshape(B, C, P).to(compute_dtype(x.dtype))
    rows = STAAParams(_pos_rows(params.pos, t0, T), params.gc_x, params.gc_h, params.sa)
    if x.numel() == 0:  # an empty batch or plane: empty spikes, the state unchanged (as torch layers do)
        return _empty_result(x, h0, store_v_seq)
    spikes, h_last, v_seq = staa_lif_op(x4, rows, drop, cfg, h0=h0_4, store_v_seq=store_v_seq,
                                        use_triton=which == "triton")
    return (
        spikes.reshape(x.shape),
        h_last.reshape(x.shape[1:]),
        None if v_seq is None else v_seq.reshape(x.shape),
    )


def _empty_result(x: Tensor, h0: Optional[Tensor], store_v_seq: bool):
    cd = compute_dtype(x.dtype)
    h_last = x.new_zeros(x.shape[1:], dtype=cd) if h0 is None else h0.to(cd).clone()
    spikes = x * 0  # empty, and connected to x's graph
    return spikes, h_last, (x.new_zeros(x.shape, dtype=cd) if store_v_seq else None)


def _check_not_transformed(x: Tensor) -> None:
    """torch.func transforms (grad, vmap, jacrev, ...) cannot run the op: say so plainly."""
    if torch.compiler.is_compiling():  # dynamo cannot trace the check (and compiled code has no wrappers here)
        return
    if torch._C._functorch.is_functorch_wrapped_tensor(x):
        raise RuntimeError(
            "STAA-LIF does not support torch.func transforms (grad, vmap, jacrev, functional_call under grad, ...): "
            "its fast path has a hand-written backward and a random TSRD draw. Use "
            "torch.autograd.grad / loss.backward() for gradients, and a loop over the batch instead of vmap"
        )


def _plane(spatial) -> int:
    n = 1
    for s in spatial:
        n *= int(s)
    return n


def staa_lif_multistep(x: Tensor, params: STAAParams, drop: Optional[Tensor], cfg: NeuronConfig,
                       backend: str = "auto", store_v_seq: bool = False):
    """Multi-step STAA-LIF from rest on ``x`` ``[T, B, C, P]``: ``staa_lif`` with ``h0=None, t0=0``,
    the states detached. Kept for callers of the earlier API."""
    spikes, h_last, v_seq = staa_lif(x, params, cfg, drop=drop, backend=backend, store_v_seq=store_v_seq)
    return spikes, h_last.detach(), v_seq
