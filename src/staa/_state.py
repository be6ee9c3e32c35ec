"""Run something on a model and leave the model exactly as it was.

``staa.convert`` (its sizing forward), ``staa.profile`` (its counting forward) and
``python -m staa`` (its timed forwards and training steps) all run a model only to look at it.
:func:`kept_state` is the one rule for putting it back afterwards.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, List

import torch
from torch import nn

# Attributes every nn.Module has (parameters, buffers, hooks, training, ...); everything else in a
# module's __dict__ is its own state (STAALIF's _h, _t, _v_seq; spikingjelly's _memories, v_seq).
_MODULE_INTERNALS = frozenset(vars(nn.Module()))


def _clone(v):
    return v.detach().clone() if isinstance(v, torch.Tensor) else v


class _ModuleState:
    """What a forward or a training step may change in one module (not its children)."""

    def __init__(self, m: nn.Module):
        self.module = m
        self.training = m.training
        own = {k: v for k, v in vars(m).items() if k not in _MODULE_INTERNALS}
        if isinstance(own.get("_memories"), dict):
            # spikingjelly keeps neuron state in this dict and updates it in place.
            own["_memories"] = {k: _clone(v) for k, v in own["_memories"].items()}
        self.attrs = own
        self.buffers = {k: (b, _clone(b)) for k, b in m._buffers.items()}
        self.params = {k: (p, None if p is None else (_clone(p), _clone(p.grad)))
                       for k, p in m._parameters.items()}

    def restore(self) -> None:
        m = self.module
        m.training = self.training
        for k in [k for k in vars(m) if k not in _MODULE_INTERNALS and k not in self.attrs]:
            del m.__dict__[k]
        for k, v in self.attrs.items():
            if k == "_memories" and isinstance(m.__dict__.get(k), dict):
                m.__dict__[k].clear()
                m.__dict__[k].update(v)
            else:
                m.__dict__[k] = v
        with torch.no_grad():
            for k, (b, saved) in self.buffers.items():
                m._buffers[k] = b
                if b is not None:
                    b.copy_(saved)
            for k, (p, saved) in self.params.items():
                if p is None or k not in m._parameters or m._parameters[k] is not p:
                    continue  # a lazy parameter materialised meanwhile is left as it is now
                value, grad = saved
                if p.shape == value.shape:
                    p.copy_(value)
                p.grad = grad
        for k in [k for k in m._buffers if k not in self.buffers]:
            del m._buffers[k]


def _cuda_devices(models: Iterable[nn.Module], tensors: Iterable) -> List[int]:
    devs = set()
    for m in models:
        for t in (*m.parameters(), *m.buffers()):
            if t.device.type == "cuda":
                devs.add(t.device.index if t.device.index is not None else torch.cuda.current_device())
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type == "cuda":
            devs.add(t.device.index if t.device.index is not None else torch.cuda.current_device())
    return sorted(devs)


@contextlib.contextmanager
def kept_state(*models: nn.Module, tensors: Iterable = ()) -> Iterator[None]:
    """Run the body, then put every module of ``models`` back as it was, also when the body fails.

    Restored: training flags; parameter values and their ``.grad``; buffers (BatchNorm's running
    statistics, which training-mode forwards update), by identity and value; each module's own
    attributes (STAALIF's state, spikingjelly's ``_memories`` and plain-attribute state such as
    ``v_seq``), attributes added meanwhile removed; and the CPU and CUDA RNG states of the devices the
    models and ``tensors`` are on (so TSRD or dropout draws in the body do not shift later draws).
    """
    seen, states = set(), []
    for model in models:
        for m in model.modules():
            if id(m) not in seen:
                seen.add(id(m))
                states.append(_ModuleState(m))
    tensors = list(tensors)
    try:
        with torch.random.fork_rng(devices=_cuda_devices(models, tensors)):
            yield
    finally:
        for s in states:
            s.restore()
