"""Fast STAA-LIF: one ``torch.library`` op with a hand-written backward.

``staa_lif_op`` is the entry point the module uses; the torch implementation lives in
:mod:`staa.ops.torch_impl` and the Triton one in ``staa.kernels.launch`` (same contract).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ..reference import STAAParams
from . import _op

Tensor = torch.Tensor

__all__ = ["staa_lif_op", "flatten_params"]


def flatten_params(params: STAAParams) -> Tuple[List[Tensor], List[bool]]:
    """The present weights of ``[pos, *gc_x, *gc_h, *sa]`` and 21 flags saying which are there."""
    full: List[Optional[Tensor]] = [params.pos]
    for block, n in ((params.gc_x, 8), (params.gc_h, 8), (params.sa, 4)):
        full.extend([None] * n if block is None else list(block))
    return [p for p in full if p is not None], [p is not None for p in full]


def staa_lif_op(x4: Tensor, params: STAAParams, drop: Optional[Tensor], cfg, store_v_seq: bool = False,
                use_triton: bool = False):
    """Multi-step STAA-LIF on ``x4`` ``[T, B, C, P]`` through the custom op.

    Args:
        x4: input currents ``[T, B, C, P]`` (any strides; made contiguous here).
        params: the layer's weights (:class:`staa.reference.STAAParams`).
        drop: bool TSRD mask ``[T]`` (True = aggregator skipped), or ``None``.
        cfg: a :class:`staa.functional.NeuronConfig`.
        store_v_seq: also return every H.
        use_triton: run the Triton kernels (``staa.kernels.launch``) instead of torch.

    Returns:
        ``(spikes [T, B, C, P] in x4.dtype, v_last [B, C, P], v_seq [T, B, C, P] or None)``;
        the states are detached and in float32 (float64 for float64 input).
    """
    if x4.dim() != 4:
        raise ValueError(f"staa_lif_op expects x4 of shape [T, B, C, P], got shape {list(x4.shape)}")
    T, _, C, _ = x4.shape
    if drop is None:
        drop = torch.zeros(T, dtype=torch.bool, device=x4.device)
    elif drop.shape != (T,) or drop.dtype != torch.bool:
        raise ValueError(f"drop must be a bool tensor of shape [{T}], got {drop.dtype} of shape {list(drop.shape)}")
    if params.pos is not None and (params.pos.dim() != 2 or params.pos.shape[0] < T or params.pos.shape[1] != C):
        raise ValueError(
            f"pos must have shape [T_pos >= {T}, {C}] for this input, got {list(params.pos.shape)}"
        )
    spikes, v_last, v_seq, _, _ = _op.lif_forward(
        x4.contiguous(), drop, *flatten_params(params),
        float(cfg.alpha), float(cfg.v_threshold), None if cfg.v_reset is None else float(cfg.v_reset),
        bool(cfg.detach_reset), float(cfg.surrogate_width), bool(store_v_seq), bool(use_triton),
    )
    return spikes, v_last, (v_seq if store_v_seq else None)
