"""The functional STAA-LIF: one entry point for multi-step and single-step use.

:func:`staa_lif` runs the neuron over ``T >= 0`` steps from an initial state and returns the
spikes and the last state. A multi-step call is ``staa_lif(x)`` from rest; single-step use
is a chain of ``T = 1`` calls, each fed the previous call's state and its own step index
``t0`` (the position-encoding row). Gradients flow through the returned state, so a chain
of single-step calls backpropagates exactly like one multi-step call on the same input.
:class:`staa.STAALIF` calls only this function.
"""
from __future__ import annotations

import operator
from typing import NamedTuple, Optional, Union

import torch

from . import _checks
from ._checks import past_T_message
from ._backend import resolve_backend
from .ops import _op, staa_lif_op
from .reference import STAAParams, compute_dtype
from .surrogate import Surrogate, check_surrogate

Tensor = torch.Tensor

__all__ = ["NeuronConfig", "staa_lif", "staa_lif_multistep"]


class NeuronConfig(NamedTuple):
    """Scalar settings of one STAA-LIF layer.

    ``alpha`` is step attention's pooling scale (eq. 12); the surrogate's own parameter lives
    in ``surrogate`` (a :class:`staa.surrogate.Surrogate`: kind and width or alpha, or a kind name
    such as ``"atan"`` for that kind with its default parameter).

    :func:`staa_lif` validates the settings at every call (an unknown surrogate kind, a width or
    alpha that is not a positive finite number, a non-finite threshold or reset, ``alpha <= 0``:
    ``ValueError`` or ``TypeError`` naming the field and the value).
    """

    alpha: float = 2.0
    v_threshold: float = 1.0
    v_reset: Optional[float] = 0.0
    detach_reset: bool = False
    surrogate: Surrogate = Surrogate()


def _step_index(t0) -> Union[int, Tensor]:
    """``t0`` checked: a Python or numpy int, or a one-element integer tensor."""
    if isinstance(t0, Tensor):
        if t0.dtype.is_floating_point or t0.dtype.is_complex or t0.dtype == torch.bool or t0.numel() != 1:
            raise TypeError(f"t0 must be an int or a 0-d integer tensor (the index of x[0] in the sequence), got a "
                            f"{t0.dtype} tensor of shape {list(t0.shape)}")
        return t0
    if isinstance(t0, bool):
        raise TypeError(f"t0 must be an int (the index of x[0] in the sequence), got {t0!r}")
    try:
        return operator.index(t0)
    except TypeError:
        raise TypeError(
            f"t0 must be an int or a 0-d integer tensor (the index of x[0] in the sequence), got {t0!r} "
            f"({type(t0).__name__}); pass int(t0)"
        ) from None


def _pos_rows(pos: Optional[Tensor], t0: Union[int, Tensor], T: int) -> Optional[Tensor]:
    """The position-encoding rows of steps ``t0 .. t0 + T - 1``."""
    if pos is None:
        return None
    if isinstance(t0, Tensor):
        # A tensor step index (single-step under torch.compile): no Python int to specialise on.
        if torch.compiler.is_compiling():  # the range check must run at run time: in the op's body
            return _op.pos_rows(pos, t0, T)
        return _op.rows_at(pos, t0, T)
    if t0 < 0 or t0 + T > pos.shape[0]:
        raise ValueError(past_T_message(t0, T, pos.shape[0]))
    return pos[t0:t0 + T]


_CHECKED_CONFIGS: dict = {}  # id(cfg) -> (cfg, checked): STAALIF passes the same cfg at every call


def check_config(cfg) -> NeuronConfig:
    """``cfg`` validated, with a surrogate given by name replaced by its :class:`Surrogate`."""
    if not torch.compiler.is_compiling():
        hit = _CHECKED_CONFIGS.get(id(cfg))
        if hit is not None and hit[0] is cfg:
            return hit[1]
    if not isinstance(cfg, NeuronConfig):
        raise TypeError(f"cfg must be a staa.functional.NeuronConfig, got {type(cfg).__name__}")
    checked = NeuronConfig(
        alpha=_checks.real(cfg.alpha, "NeuronConfig.alpha", low=0.0, low_open=True,
                           what="a finite number > 0 (step attention's pooling scale, eq. 12)"),
        v_threshold=_checks.real(cfg.v_threshold, "NeuronConfig.v_threshold"),
        v_reset=_checks.real(cfg.v_reset, "NeuronConfig.v_reset", allow_none=True,
                             what="a finite number (None: soft reset)"),
        detach_reset=_checks.flag(cfg.detach_reset, "NeuronConfig.detach_reset"),
        surrogate=check_surrogate(cfg.surrogate, "NeuronConfig.surrogate"),
    )
    if not torch.compiler.is_compiling():
        if len(_CHECKED_CONFIGS) > 64:
            _CHECKED_CONFIGS.clear()
        _CHECKED_CONFIGS[id(cfg)] = (cfg, checked)
    return checked


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
        cfg: the scalar settings (:class:`NeuronConfig`), validated here.
        drop: bool TSRD mask ``[T]`` (True: the aggregator is skipped at that step), or ``None``.
        h0: initial state H_{t0-1} ``[B, C, *spatial]``, or ``None`` for rest (``v_reset``; 0 for
            soft reset). Its gradient is returned by autograd.
        t0: index of ``x[0]`` in the sequence (selects the position-encoding rows
            ``pos[t0 : t0 + T]``): a Python int, or a 0-d integer tensor (no recompilation per
            step under ``torch.compile``). Rows past the end of ``pos`` raise ``ValueError``; for a
            tensor ``t0`` on a GPU the check would synchronise with the host, so there the rows past
            the end are NaN instead (the spikes of those steps are NaN and the loss shows it).
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (``auto`` honours ``STAA_BACKEND``).
        store_v_seq: also return every state H ``[T, B, C, *spatial]`` (detached).

    Returns:
        ``(spikes, h_last, v_seq)``: spikes shaped and typed like ``x`` (NaN where the membrane
        potential is not finite); the last state H_{t0+T-1} ``[B, C, *spatial]`` in float32
        (float64 for float64 input), differentiable; ``v_seq`` or ``None``.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = f"dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"staa_lif expects a floating-point tensor x, got {got}")
    if x.dim() < 3:
        raise ValueError(f"staa_lif expects x of shape [T, B, C, ...], got shape {list(x.shape)}")
    _check_not_transformed(x)
    cfg = check_config(cfg)
    t0 = _step_index(t0)
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
    if x.numel() == 0 or x.is_meta:
        # An empty batch or plane: empty spikes, the state unchanged (as torch layers do). On the meta
        # device only the shapes exist: the result's shapes and dtypes, as the op's fake gives them.
        return _empty_result(x, h0, cfg, store_v_seq)
    spikes, h_last, v_seq = staa_lif_op(x4, rows, drop, cfg, h0=h0_4, store_v_seq=store_v_seq,
                                        use_triton=which == "triton")
    return (
        spikes.reshape(x.shape),
        h_last.reshape(x.shape[1:]),
        None if v_seq is None else v_seq.reshape(x.shape),
    )


def _empty_result(x: Tensor, h0: Optional[Tensor], cfg: NeuronConfig, store_v_seq: bool):
    cd = compute_dtype(x.dtype)
    rest = 0.0 if cfg.v_reset is None else cfg.v_reset
    h_last = x.new_full(x.shape[1:], rest, dtype=cd) if h0 is None else h0.to(cd).clone()
    spikes = x * 0  # empty, and connected to x's graph
    return spikes, h_last, (x.new_zeros(x.shape, dtype=cd) if store_v_seq else None)


def _check_not_transformed(x: Tensor) -> None:
    """torch.func transforms (grad, vmap, jacrev, ...) cannot run the op: say so plainly. Any active
    transform counts, also one that wraps only the weights (``functional_call`` under ``grad``)."""
    if torch.compiler.is_compiling():  # dynamo cannot trace the check (and compiled code has no wrappers here)
        return
    if torch._C._are_functorch_transforms_active() or torch._C._functorch.is_functorch_wrapped_tensor(x):
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
