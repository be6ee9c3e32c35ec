"""Home of the spikingjelly-aware STAALIF class (``staa._sjcompat.STAALIF``), so that modules pickled
with it load again. The class is built by :func:`staa._spikingjelly.compat_class`.

It cannot fold into :mod:`staa._spikingjelly`: pickles name the class by module path, and models saved
since the class exists say ``staa._sjcompat``; a module of that name must keep answering for them."""
from __future__ import annotations


def __getattr__(name):
    if name == "STAALIF":
        from ._spikingjelly import compat_class
        from .neuron import STAALIF

        return compat_class(STAALIF)
    raise AttributeError(name)
