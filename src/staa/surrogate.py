"""Surrogate gradients of the spike S = [V >= v_threshold].

The forward is always the Heaviside step; only the backward depends on the kind. With
``x = V - v_threshold`` and ``p`` the kind's one parameter:

============== ============================================ ======================= ========
kind           dS/dV                                        p                        default
============== ============================================ ======================= ========
``rect``       ``1/p`` where ``|x| < p/2`` (strict), else 0 width a (eq. 5)          1.0
``atan``       ``p / (2 (1 + (pi/2 p x)^2))``               alpha (spikingjelly)     2.0
``sigmoid``    ``p sg(p x) (1 - sg(p x))``                  alpha (spikingjelly)     4.0
``fast_sigmoid`` ``1 / (p |x| + 1)^2``                      slope (snnTorch)         25.0
============== ============================================ ======================= ========

``rect`` is the paper's rectangle (spikingjelly's ``Rect(alpha)`` is width ``1/alpha``);
``atan`` and ``sigmoid`` are spikingjelly 2.0's ``ATan`` and ``Sigmoid``; ``fast_sigmoid``
is snnTorch's ``surrogate.fast_sigmoid(slope)``.

The surrogate's ``p`` is not STAALIF's ``alpha`` (the step-attention pooling scale of
eq. 12): STAALIF takes it as ``surrogate_width`` (rect) or ``surrogate_alpha`` (the others).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

Tensor = torch.Tensor

__all__ = ["SURROGATE_KINDS", "DEFAULT_PARAM", "Surrogate", "surrogate_spec", "check_surrogate", "surrogate_grad",
           "spike"]

#: The kinds, in the order the Triton kernels number them.
SURROGATE_KINDS = ("rect", "atan", "sigmoid", "fast_sigmoid")
#: Each kind's parameter when none is given.
DEFAULT_PARAM = {"rect": 1.0, "atan": 2.0, "sigmoid": 4.0, "fast_sigmoid": 25.0}


class Surrogate(NamedTuple):
    """A validated surrogate: ``kind`` (one of :data:`SURROGATE_KINDS`) and its parameter ``param``
    (the width for ``rect``, the sharpness alpha or slope for the others)."""

    kind: str = "rect"
    param: float = 1.0

    @property
    def index(self) -> int:
        """The kind's number in the Triton kernels."""
        return SURROGATE_KINDS.index(self.kind)

    def describe(self) -> str:
        name = "surrogate_width" if self.kind == "rect" else "surrogate_alpha"
        return f"surrogate={self.kind!r}, {name}={self.param:g}"


def _positive_finite(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_real_scalar(value):
        raise TypeError(f"{name} must be a positive finite number, got {value!r}")
    f = float(value)
    if not (math.isfinite(f) and f > 0.0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return f


def _is_real_scalar(value) -> bool:
    # numpy scalars and 0-d tensors without importing numpy
    return hasattr(value, "__float__") and not isinstance(value, (str, bytes, complex))


def surrogate_spec(kind: str = "rect", width: Optional[float] = None, alpha: Optional[float] = None) -> Surrogate:
    """Validate STAALIF's surrogate arguments and return a :class:`Surrogate`.

    ``width`` is the rectangle's width (``surrogate_width``); ``alpha`` the sharpness of the
    smooth kinds (``surrogate_alpha``). Giving the one that does not belong to ``kind`` is an
    error naming both.
    """
    if not isinstance(kind, str) or kind not in SURROGATE_KINDS:
        raise ValueError(f"surrogate must be one of {', '.join(map(repr, SURROGATE_KINDS))}, got {kind!r}")
    if kind == "rect":
        if alpha is not None:
            raise ValueError(
                f"surrogate_alpha={alpha!r} was given with surrogate='rect': the rectangle is set by "
                "surrogate_width (its width a); surrogate_alpha is the sharpness of the 'atan', 'sigmoid' and "
                "'fast_sigmoid' surrogates (not STAALIF's alpha, the step-attention pooling scale)"
            )
        param = DEFAULT_PARAM[kind] if width is None else _positive_finite(width, "surrogate_width")
    else:
        if width is not None:
            raise ValueError(
                f"surrogate_width={width!r} was given with surrogate={kind!r}: surrogate_width is the "
                f"rectangle's width; set the {kind!r} surrogate's sharpness with surrogate_alpha"
            )
        param = DEFAULT_PARAM[kind] if alpha is None else _positive_finite(alpha, "surrogate_alpha")
    return Surrogate(kind, param)


def check_surrogate(surrogate, where: str = "surrogate") -> Surrogate:
    """A valid :class:`Surrogate` from a ``Surrogate`` or a kind name (``"atan"``: its default
    parameter); raises naming ``where`` for an unknown kind or a parameter that is not a positive
    finite number. The functional API (:class:`staa.functional.NeuronConfig`) goes through this."""
    if isinstance(surrogate, str):
        surrogate = Surrogate(surrogate, DEFAULT_PARAM.get(surrogate, math.nan))
    if not isinstance(surrogate, Surrogate):
        raise TypeError(
            f"{where} must be a staa.surrogate.Surrogate(kind, param) or a kind name "
            f"({', '.join(map(repr, SURROGATE_KINDS))}), got {type(surrogate).__name__}"
        )
    kind, param = surrogate
    if not isinstance(kind, str) or kind not in SURROGATE_KINDS:
        raise ValueError(f"{where}: the kind must be one of {', '.join(map(repr, SURROGATE_KINDS))}, got {kind!r}")
    what = "width a" if kind == "rect" else ("slope" if kind == "fast_sigmoid" else "sharpness alpha")
    return Surrogate(kind, _positive_finite(param, f"{where}: the {kind!r} surrogate's {what}"))


def surrogate_grad(x: Tensor, kind: str, param: float) -> Tensor:
    """dS/dV at ``x = V - v_threshold`` (elementwise, in ``x``'s dtype)."""
    p = float(param)
    if kind == "rect":
        return (x.abs() < p / 2).to(x.dtype) / p
    if kind == "atan":
        return p / (2.0 * (1.0 + (math.pi / 2 * p * x) ** 2))
    if kind == "sigmoid":
        sg = torch.sigmoid(p * x)
        return p * sg * (1.0 - sg)
    if kind == "fast_sigmoid":
        return 1.0 / (p * x.abs() + 1.0) ** 2
    raise ValueError(f"unknown surrogate kind {kind!r}; expected one of {SURROGATE_KINDS}")


def heaviside_nan(v: Tensor, v_threshold: float) -> Tensor:
    """``[v >= v_threshold]`` as 0/1 in ``v``'s dtype, NaN where ``v`` is not finite.

    A non-finite membrane potential gives a NaN spike, so a NaN or Inf that enters a layer
    shows in the loss instead of silencing the neurons it reaches (no host synchronisation).
    """
    return (v >= v_threshold).to(v.dtype) + (v - v)


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: Tensor, v_threshold: float, kind: str, param: float) -> Tensor:
        ctx.save_for_backward(v)
        ctx.v_threshold, ctx.kind, ctx.param = v_threshold, kind, param
        return heaviside_nan(v, v_threshold)

    @staticmethod
    def backward(ctx, grad_s: Tensor):
        (v,) = ctx.saved_tensors
        return grad_s * surrogate_grad(v - ctx.v_threshold, ctx.kind, ctx.param).to(grad_s.dtype), None, None, None


def spike(v: Tensor, v_threshold: float = 1.0, surrogate: Surrogate = Surrogate()) -> Tensor:
    """S = [v >= v_threshold] (NaN where v is not finite) with ``surrogate``'s gradient."""
    return _Spike.apply(v, float(v_threshold), surrogate.kind, float(surrogate.param))
