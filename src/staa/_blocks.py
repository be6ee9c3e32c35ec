"""Parameter containers for the global-context (GC) and step-attention (SA) blocks.

They hold weights under the public state-dict names (``key``, ``query``, ``norm``,
``value``; ``fc1``, ``fc2``) and support lazy sizing; the arithmetic lives in
:mod:`staa.reference` and the fast paths.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter, UninitializedTensorMixin

from .reference import GCParams, SAParams, global_context, step_attention


def is_uninitialized(p: torch.Tensor) -> bool:
    """True for a lazy parameter not yet sized. An isinstance check rather than
    ``torch.nn.parameter.is_lazy``, because ``torch.compile`` traces it without a graph break."""
    return isinstance(p, UninitializedTensorMixin)


def hidden_features(channels: int, r: int) -> int:
    """Hidden width Ch = max(C // r, 4) of the GC and SA channel MLPs.

    The floor of 4 keeps LayerNorm over Ch features meaningful for tiny C.
    """
    return max(channels // r, 4)


def _linear(in_f, out_f, lazy, factory):
    if not lazy:
        return nn.Linear(in_f, out_f, **factory)
    lin = nn.Linear(1, 1, **factory)
    lin.in_features = lin.out_features = 0
    lin.weight = UninitializedParameter(**factory)
    lin.bias = UninitializedParameter(**factory)
    return lin


def _layer_norm(f, lazy, factory):
    if not lazy:
        return nn.LayerNorm(f, eps=1e-5, **factory)
    ln = nn.LayerNorm(1, eps=1e-5, **factory)
    ln.normalized_shape = (0,)
    ln.weight = UninitializedParameter(**factory)
    ln.bias = UninitializedParameter(**factory)
    return ln


@torch.no_grad()
def _materialize_linear(lin: nn.Linear, in_f: int, out_f: int) -> None:
    lin.in_features, lin.out_features = in_f, out_f
    lin.weight.materialize((out_f, in_f))
    lin.bias.materialize((out_f,))
    lin.reset_parameters()


@torch.no_grad()
def _materialize_norm(ln: nn.LayerNorm, f: int) -> None:
    ln.normalized_shape = (f,)
    ln.weight.materialize((f,))
    ln.bias.materialize((f,))
    ln.reset_parameters()


class GlobalContext(nn.Module):
    """Global-context block GC (eqs. 7-10): ``key`` C->1, ``query`` C->Ch, ``norm``
    LayerNorm(Ch), ``value`` Ch->C. ``value`` starts at zero, so a fresh block is the
    identity (as in GCNet)."""

    def __init__(self, channels, hidden, *, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        lazy = channels is None
        self.key = _linear(channels, 1, lazy, factory)
        self.query = _linear(channels, hidden, lazy, factory)
        self.norm = _layer_norm(hidden, lazy, factory)
        self.value = _linear(hidden, channels, lazy, factory)
        if not lazy:
            self._zero_value()

    @torch.no_grad()
    def _zero_value(self):
        self.value.weight.zero_()
        self.value.bias.zero_()

    def materialize(self, channels: int, hidden: int) -> None:
        _materialize_linear(self.key, channels, 1)
        _materialize_linear(self.query, channels, hidden)
        _materialize_norm(self.norm, hidden)
        _materialize_linear(self.value, hidden, channels)
        self._zero_value()

    def params(self) -> GCParams:
        return GCParams(
            self.key.weight, self.key.bias, self.query.weight, self.query.bias,
            self.norm.weight, self.norm.bias, self.value.weight, self.value.bias,
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """GC(Z) for ``z`` of shape ``[B, C, P]`` (reference arithmetic, float32)."""
        return global_context(z, self.params())


class StepAttention(nn.Module):
    """Step-attention block SA (eq. 12): ``fc1`` C->Ch, ``fc2`` Ch->C, fixed ``alpha``.

    ``init_bias``: the value ``fc2.bias`` starts at (``None``: ``nn.Linear``'s default). The
    gate is σ(fc2(...)), about 0.5 with the default, which halves V at initialisation; a bias
    of 3 starts it at about 0.95, close to the identity."""

    def __init__(self, channels, hidden, alpha: float = 2.0, *, init_bias=None, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        lazy = channels is None
        self.alpha = float(alpha)
        self.init_bias = None if init_bias is None else float(init_bias)
        self.fc1 = _linear(channels, hidden, lazy, factory)
        self.fc2 = _linear(hidden, channels, lazy, factory)
        if not lazy:
            self._init_bias()

    @torch.no_grad()
    def _init_bias(self):
        if self.init_bias is not None:
            self.fc2.bias.fill_(self.init_bias)

    def materialize(self, channels: int, hidden: int) -> None:
        _materialize_linear(self.fc1, channels, hidden)
        _materialize_linear(self.fc2, hidden, channels)
        self._init_bias()

    def params(self) -> SAParams:
        return SAParams(self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """SA(U) for ``u`` of shape ``[B, C, P]`` (reference arithmetic, float32)."""
        return step_attention(u, self.params(), self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
