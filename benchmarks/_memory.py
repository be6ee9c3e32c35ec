"""Measuring what autograd saves for backward (used by benchmarks/bench_neuron.py and tests/test_ops.py;
no library code needs it)."""
from __future__ import annotations

import torch


def saved_tensor_bytes(fn, *inputs, exclude=()):
    """Run ``fn(*inputs)`` and count the bytes autograd saves for backward meanwhile.

    Each storage is counted once (views of one buffer are not double-counted) and storages of the
    tensors in ``exclude`` (typically the parameters, which exist anyway) are skipped.
    Returns ``(fn's output, bytes)``.
    """
    seen, total = set(), 0
    skip = {t.untyped_storage().data_ptr() for t in exclude}

    def pack(t):
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen and ptr not in skip:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    return out, total
