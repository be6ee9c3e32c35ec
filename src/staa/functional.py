"""Functional entry points of the STAA-LIF neuron, one call per multi-step forward."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ._backend import resolve_backend
from .ops import staa_lif_op
from .reference import STAAParams

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
    with ``store_v_seq``, every H ``[T, B, C, P]`` (both detached, float32; float64 for
    float64 input). Both backends run through one custom op (:mod:`staa.ops`): ``torch``
    uses :mod:`staa.ops.torch_impl`, ``triton`` the kernels in ``staa.kernels.launch``.
    """
    which = resolve_backend(backend, x.device)
    return staa_lif_op(x, params, drop, cfg, store_v_seq=store_v_seq, use_triton=which == "triton")
