"""A STAALIF subclass that is also a spikingjelly ``MemoryModule``.

Built only when spikingjelly is already imported, so ``import staa`` never imports it.
spikingjelly's ``reset_net``, ``detach_net`` and ``set_step_mode`` log a warning for
modules that are not its own ``MemoryModule``/``StepModule``; instances of this class
pass those checks while keeping STAALIF's own behaviour (state, reset, step mode).
The class is reachable as ``staa._sjcompat.STAALIF`` so pickled modules load again.
"""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def compat_class():
    from spikingjelly.activation_based import base

    from .neuron import STAALIF

    ns = {
        "__module__": __name__,
        "__qualname__": "STAALIF",
        "__doc__": STAALIF.__doc__,
        # STAALIF keeps its state in plain attributes: use nn.Module's attribute handling.
        "__getattr__": base.nn.Module.__getattr__,
        "__setattr__": base.nn.Module.__setattr__,
        "__delattr__": base.nn.Module.__delattr__,
        "__dir__": base.nn.Module.__dir__,
        "_apply": STAALIF._apply,
        "_replicate_for_data_parallel": base.nn.Module._replicate_for_data_parallel,
        "extra_repr": STAALIF.extra_repr,
        "forward": STAALIF.forward,
        "reset": STAALIF.reset,
        "detach": STAALIF.detach,
        "step_mode": STAALIF.step_mode,
        "supported_step_mode": STAALIF.supported_step_mode,
        # spikingjelly 0.0.0.0.14's MemoryModule.backend property accepts only 'torch'; STAALIF
        # keeps its own `backend` as a plain attribute.
        "backend": None,
    }
    return type("STAALIF", (STAALIF, base.MemoryModule), ns)


def __getattr__(name):
    if name == "STAALIF":
        return compat_class()
    raise AttributeError(name)
