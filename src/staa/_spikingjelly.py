"""What staa knows about spikingjelly, in one place.

Nothing here imports spikingjelly: its classes are looked up in ``sys.modules`` only. A model that
holds spikingjelly nodes has imported spikingjelly, and a model that does not needs nothing from it,
so ``import staa`` stays light. ``staa.convert``, ``staa.profile`` and ``STAALIF`` ask this module;
it never imports them (``compat_class`` takes the STAALIF class as its argument).
"""
from __future__ import annotations

import functools
import sys
from typing import List, Optional, Tuple

from torch import nn

#: spikingjelly node classes ``staa.convert`` replaces: (module, class, neuron kind, step mode the
#: class fixes, or None where the node has a ``step_mode`` attribute).
NODE_CLASSES = (
    ("spikingjelly.activation_based.neuron", "LIFNode", "lif", None),
    ("spikingjelly.activation_based.neuron", "ParametricLIFNode", "plif", None),
    ("spikingjelly.activation_based.neuron", "IFNode", "if", None),
    ("spikingjelly.clock_driven.neuron", "LIFNode", "lif", "s"),
    ("spikingjelly.clock_driven.neuron", "MultiStepLIFNode", "lif", "m"),
    ("spikingjelly.clock_driven.neuron", "ParametricLIFNode", "plif", "s"),
    ("spikingjelly.clock_driven.neuron", "MultiStepParametricLIFNode", "plif", "m"),
    ("spikingjelly.clock_driven.neuron", "IFNode", "if", "s"),
    ("spikingjelly.clock_driven.neuron", "MultiStepIFNode", "if", "m"),
)
#: Base classes of other spikingjelly neurons (listed as skipped by ``convert``).
BASE_CLASSES = (
    ("spikingjelly.activation_based.neuron", "BaseNode"),
    ("spikingjelly.clock_driven.neuron", "BaseNode"),
)
#: The surrogate modules: spikingjelly 2.x and 0.0.0.0.14 (activation_based) and the legacy API.
SURROGATE_MODULES = ("spikingjelly.activation_based.surrogate", "spikingjelly.clock_driven.surrogate")

_BASE = "spikingjelly.activation_based.base"


def exported(pairs) -> List[Tuple[str, type]]:
    """``[(qualified name, class)]`` for the ``(module, class)`` pairs whose module is loaded."""
    found = []
    for module_name, class_name in pairs:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type):
            found.append((f"{module_name}.{class_name}", cls))
    return found


def surrogate_class_name(sg) -> Optional[str]:
    """The class name of a spikingjelly surrogate module (``"ATan"``), or None for anything else."""
    cls = type(sg)
    for module_name in SURROGATE_MODULES:
        module = sys.modules.get(module_name)
        if module is not None and getattr(module, cls.__name__, None) is cls:
            return cls.__name__
    return None


def node_base_class() -> Optional[type]:
    """spikingjelly's ``activation_based.neuron.BaseNode``, if loaded."""
    return getattr(sys.modules.get("spikingjelly.activation_based.neuron"), "BaseNode", None)


def memory_module_class() -> Optional[type]:
    """spikingjelly's ``activation_based.base.MemoryModule``, if loaded."""
    return getattr(sys.modules.get(_BASE), "MemoryModule", None)


def is_loaded() -> bool:
    """Whether spikingjelly's activation_based API (whose utilities STAALIF must satisfy) is loaded."""
    return _BASE in sys.modules


def invalidate_reset_cache(model: nn.Module) -> None:
    """Drop ``reset_net``'s per-network cache for ``model`` and its sub-networks (after ``convert``
    changed which modules they hold); nothing when spikingjelly has no such cache."""
    functional = sys.modules.get("spikingjelly.activation_based.functional")
    invalidate = getattr(functional, "invalidate_reset_cache", None)
    if invalidate is not None:
        for m in model.modules():
            invalidate(m)


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
