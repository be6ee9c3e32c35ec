"""What :class:`staa.STAALIF` needs from spikingjelly: a subclass that its utilities accept.

Nothing here imports spikingjelly until a STAALIF is built while spikingjelly is loaded, so
``import staa`` stays light. spikingjelly's neuron and surrogate classes, as convert and profile
see them, are listed in the spikingjelly adapter (:mod:`staa._convert.spikingjelly`).
This module imports no other staa module (``compat_class`` takes the STAALIF class as its argument).
"""
from __future__ import annotations

import functools
import sys

_BASE = "spikingjelly.activation_based.base"


def is_loaded() -> bool:
    """Whether spikingjelly's activation_based API (whose utilities STAALIF must satisfy) is loaded."""
    return _BASE in sys.modules


@functools.lru_cache(maxsize=None)
def compat_class(staalif: type) -> type:
    """A subclass of ``staalif`` that is also a spikingjelly ``MemoryModule``.

    spikingjelly's ``reset_net``, ``detach_net`` and ``set_step_mode`` log a warning for modules that
    are not its own ``MemoryModule``/``StepModule``; instances of this class pass those checks while
    keeping STAALIF's own behaviour (state, reset, step mode). ``STAALIF(...)`` builds it when
    spikingjelly is loaded. Its home is ``staa._sjcompat.STAALIF``, so pickled modules load again.
    """
    from spikingjelly.activation_based import base

    ns = {
        "__module__": "staa._sjcompat",
        "__qualname__": "STAALIF",
        "__doc__": staalif.__doc__,
        # STAALIF keeps its state in plain attributes: use nn.Module's attribute handling.
        "__getattr__": base.nn.Module.__getattr__,
        "__setattr__": base.nn.Module.__setattr__,
        "__delattr__": base.nn.Module.__delattr__,
        "__dir__": base.nn.Module.__dir__,
        "_apply": staalif._apply,
        "_replicate_for_data_parallel": base.nn.Module._replicate_for_data_parallel,
        "extra_repr": staalif.extra_repr,
        "forward": staalif.forward,
        "reset": staalif.reset,
        "detach": staalif.detach,
        "step_mode": staalif.step_mode,
        "supported_step_mode": staalif.supported_step_mode,
        # spikingjelly 0.0.0.0.14's MemoryModule.backend property accepts only 'torch'; STAALIF
        # keeps its own `backend` as a plain attribute.
        "backend": None,
    }
    return type("STAALIF", (staalif, base.MemoryModule), ns)
