"""What a CUDA graph needs of a route, checked on the CPU: no host reads of device values, and
the same operations into the same sizes whatever the values.

``traced()`` runs code under a dispatch mode (:class:`Trace`) that records every aten op with
the sizes and dtypes it returns, and flags host reads: aten ops that read a value on the host or
size their output from values, and calls of the Tensor methods that read values (patched while
the trace runs). Used by tests/test_cuda_graphs.py and tests/interpret/test_capture_safety.py.
"""
from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten

# aten ops that read a device value on the host, or whose output size depends on values
VALUE_OPS = {aten._local_scalar_dense, aten.item, aten.is_nonzero, aten.equal, aten.allclose, aten.nonzero,
             aten.nonzero_static, aten.masked_select, aten._unique2, aten.unique_dim, aten.unique_consecutive,
             aten.argwhere}
# Tensor methods that read values on the host (patched while a trace runs)
HOST_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "__array__")


class Trace(TorchDispatchMode):
    """Every aten op run while it is on, with the sizes and dtypes of what it returns; and the
    host reads (value ops, boolean-mask indexing, ``repeat_interleave`` without its size)."""

    def __init__(self):
        super().__init__()
        self.ops: list = []
        self.reads: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in VALUE_OPS:
            self.reads.append(str(func))
        elif packet in (aten.index, aten.index_put, aten.index_put_, aten._unsafe_index):
            idx = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (idx or ())):
                self.reads.append(f"{func} with a boolean mask")
        elif packet is aten.repeat_interleave and kwargs.get("output_size") is None:
            self.reads.append(f"{func} without output_size")
        out = func(*args, **kwargs)
        sizes = tuple((tuple(t.shape), t.dtype) for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        self.ops.append((str(func), sizes))
        return out


@contextlib.contextmanager
def traced():
    """A :class:`Trace` that also records calls of the Tensor methods that read values on the host."""
    trace = Trace()
    saved = {name: getattr(torch.Tensor, name) for name in HOST_METHODS if hasattr(torch.Tensor, name)}

    def flagged(name, fn):
        def wrapper(self, *args, **kwargs):
            trace.reads.append(f"Tensor.{name}")
            return fn(self, *args, **kwargs)
        return wrapper

    try:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, flagged(name, fn))
        with trace:
            yield trace
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
