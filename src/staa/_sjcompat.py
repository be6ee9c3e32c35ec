"""Home of the spikingjelly-aware STAALIF class (``staa._sjcompat.STAALIF``), so that modules pickled
with it load again. The class is built by :func:`staa._spikingjelly.compat_class`."""
from __future__ import annotations


def __getattr__(name):
    if name == "STAALIF":
        from ._spikingjelly import compat_class
        from .neuron import STAALIF

        return compat_class(STAALIF)
    raise AttributeError(name)
