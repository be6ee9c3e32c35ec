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


class _Linear(nn.Linear):
    """``nn.Linear`` (and shown as one) whose ``reset_parameters`` gives the block's documented
    initialisation: ``nn.Linear``'s, then zero weights (``zero_init``, GC's ``value``) or a fixed
    bias (``init_bias``, SA's ``fc2``). So ``reset_parameters`` on any module, in any order
    (``model.apply``, FSDP's meta-device initialisation), restores what the constructor made."""

    def __init__(self, in_features, out_features, *, zero_init=False, init_bias=None, device=None, dtype=None):
        # set before nn.Linear.__init__, which calls reset_parameters (one initialisation, one RNG draw)
        self.zero_init, self.init_bias = zero_init, init_bias
        super().__init__(in_features, out_features, device=device, dtype=dtype)

    def _get_name(self) -> str:
        return "Linear"

    def reset_parameters(self) -> None:
        if is_uninitialized(self.weight):
            return  # a lazy layer is initialised when it is sized
        super().reset_parameters()
        with torch.no_grad():
            if self.zero_init:
                self.weight.zero_()
                self.bias.zero_()
            elif self.init_bias is not None:
                self.bias.fill_(self.init_bias)

    def extra_repr(self) -> str:
        if is_uninitialized(self.weight):
            return "in_features and out_features set at the first call (lazy)"
        return super().extra_repr()


class _LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (and shown as one) that stays uninitialised until sized."""

    def _get_name(self) -> str:
        return "LayerNorm"

    def reset_parameters(self) -> None:
        if self.weight is not None and is_uninitialized(self.weight):
            return
        super().reset_parameters()

    def extra_repr(self) -> str:
        if self.weight is not None and is_uninitialized(self.weight):
            return "normalized_shape set at the first call (lazy), eps={eps}".format(**self.__dict__)
        return super().extra_repr()


def _linear(in_f, out_f, lazy, factory, zero_init=False, init_bias=None):
    lin = _Linear(1 if lazy else in_f, 1 if lazy else out_f, zero_init=zero_init, init_bias=init_bias, **factory)
    if lazy:
        lin.in_features = lin.out_features = 0
        lin.weight = UninitializedParameter(**factory)
        lin.bias = UninitializedParameter(**factory)
    return lin


def _layer_norm(f, lazy, factory):
    if not lazy:
        return _LayerNorm(f, eps=1e-5, **factory)
    ln = _LayerNorm(1, eps=1e-5, **factory)
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
        self.value = _linear(hidden, channels, lazy, factory, zero_init=True)

    def reset_parameters(self) -> None:
        """The documented initialisation: ``nn.Linear``'s and ``nn.LayerNorm``'s, ``value`` zero."""
        for m in (self.key, self.query, self.norm, self.value):
            m.reset_parameters()

    def materialize(self, channels: int, hidden: int) -> None:
        _materialize_linear(self.key, channels, 1)
        _materialize_linear(self.query, channels, hidden)
        _materialize_norm(self.norm, hidden)
        _materialize_linear(self.value, hidden, channels)

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
        self.fc2 = _linear(hidden, channels, lazy, factory, init_bias=self.init_bias)

    def reset_parameters(self) -> None:
        """The documented initialisation: ``nn.Linear``'s, ``fc2.bias`` at ``init_bias`` when set."""
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def materialize(self, channels: int, hidden: int) -> None:
        _materialize_linear(self.fc1, channels, hidden)
        _materialize_linear(self.fc2, hidden, channels)

    def params(self) -> SAParams:
        return SAParams(self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """SA(U) for ``u`` of shape ``[B, C, P]`` (reference arithmetic, float32)."""
        return step_attention(u, self.params(), self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
