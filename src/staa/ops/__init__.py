"""Fast STAA-LIF: one ``torch.library`` op with a hand-written backward.

``staa_lif_op`` is the entry point :func:`staa.functional.staa_lif` uses; the torch
implementation lives in :mod:`staa.ops.torch_impl` and the Triton one in
``staa.kernels.launch`` (same contract).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ..reference import STAAParams
from . import _op

Tensor = torch.Tensor

__all__ = ["staa_lif_op", "flatten_params"]


def flatten_params(params: STAAParams) -> Tuple[List[Tensor], List[bool]]:
    """The present weights of ``[pos, *gc_x, *gc_h, *sa]`` and flags saying which are there."""
    full: List[Optional[Tensor]] = [params.pos]
    for (name, cls), block in zip(_op._BLOCKS, (params.gc_x, params.gc_h, params.sa)):
        full.extend([None] * len(cls._fields) if block is None else list(block))
    return [p for p in full if p is not None], [p is not None for p in full]


def staa_lif_op(x4: Tensor, params: STAAParams, drop: Tensor, cfg, h0: Optional[Tensor] = None,
                store_v_seq: bool = False, use_triton: bool = False):
    """STAA-LIF on ``x4`` ``[T, B, C, P]`` through the custom op (inputs already checked by
    :func:`staa.functional.staa_lif`).

    Args:
        x4: input currents ``[T, B, C, P]`` (any strides; made contiguous here).
        params: the layer's weights; ``params.pos`` holds the rows of these T steps (row t for step t).
        drop: bool TSRD mask ``[T]`` (True = aggregator skipped at that step).
        cfg: a :class:`staa.functional.NeuronConfig`.
        h0: initial state H_{-1} ``[B, C, P]`` in the compute dtype, or ``None`` for rest.
        store_v_seq: also return every H.
        use_triton: run the Triton kernels (``staa.kernels.launch``) instead of torch.

    Returns:
        ``(spikes [T, B, C, P] in x4.dtype, h_last [B, C, P], v_seq [T, B, C, P] or None)``;
        the states are float32 (float64 for float64 input); ``h_last`` carries the gradient
        to ``x4``, ``h0`` and the weights, ``v_seq`` is detached.
    """
    x4 = x4.contiguous()
    h0 = None if h0 is None else h0.contiguous()
    flat, present = flatten_params(params)
    scalars = (float(cfg.alpha), float(cfg.v_threshold), None if cfg.v_reset is None else float(cfg.v_reset),
               bool(cfg.detach_reset), cfg.surrogate.kind, float(cfg.surrogate.param), bool(use_triton))
    if torch.compiler.is_compiling():  # one opaque node in the graph
        alpha, v_th, v_reset, detach, kind, param, tri = scalars
        spikes, h_last, v_seq = _op.lif_forward(x4, drop, h0, flat, present, alpha, v_th, v_reset, detach, kind,
                                                param, bool(store_v_seq), tri)[:3]
    else:  # the same bodies without the custom op's per-call wrapper (see _op.EagerLIF)
        spikes, h_last, v_seq = _op.EagerLIF.apply(x4, drop, h0, present, scalars, bool(store_v_seq), *flat)
    return spikes, h_last, (v_seq if store_v_seq else None)
