"""Home of the converted snnTorch neuron class, ``staa._snntorch.STAALeaky``, so that models pickled
with it load again. The class and everything else staa knows about snnTorch live in
:mod:`staa._convert.snntorch` (the snnTorch adapter); this module only names them here."""
from __future__ import annotations

from ._convert.snntorch import leaky_class

__all__ = ["leaky_class"]


def __getattr__(name):
    # Lets pickled / torch.save'd converted models load again.
    if name == "STAALeaky":
        return leaky_class()
    raise AttributeError(name)
