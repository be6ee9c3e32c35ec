"""Functional entry points of the STAA-LIF neuron, one call per multi-step forward."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ._backend import resolve_backend
from .reference import STAAParams, staa_lif_reference

Tensor = torch.Tensor


class NeuronConfig(NamedTuple):
    """Scalar settings of one STAA-LIF layer."""

    alpha: float = 2.0
    v_threshold: float = 1.0
    v_reset: Optional[float] = 0.0
    detach_reset: bool = False
    surrogate_width: float = 1.0


def staa_lif_multistep(
    x: Tensor,
    params: STAAParams,
    drop: Tensor,
    cfg: NeuronConfig,
    backend: str = "auto",
    store_v_seq: bool = False,
):
    """Run STAA-LIF over a whole sequence ``x`` of shape ``[T, B, C, P]``.

    ``drop`` is the bool TSRD mask ``[T]``. Returns ``(spikes, v_last, v_seq)``: spikes
    ``[T, B, C, P]`` in x's dtype, the final membrane state H_{T-1} ``[B, C, P]`` and,
    with ``store_v_seq``, every H ``[T, B, C, P]`` (both detached, float32).
    """
    which = resolve_backend(backend, x.device)
    if which == "triton":  # pragma: no cover - wired up with the kernels
        raise RuntimeError("backend='triton' is not implemented yet")
    spikes, h = staa_lif_reference(x, params, drop, **cfg._asdict(), return_states=True)
    h = h.detach()
    return spikes, h[-1], (h if store_v_seq else None)
