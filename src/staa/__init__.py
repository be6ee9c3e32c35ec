"""staa: the STAA-LIF spiking neuron (STAA-SNN, CVPR 2025) as a drop-in PyTorch layer.

>>> import torch, staa
>>> lif = staa.STAALIF(16, T=4)
>>> spikes = lif(torch.randn(4, 2, 16, 8, 8))   # [T, B, C, H, W]

``import staa`` imports torch only: triton and spikingjelly are imported on first use.
"""
from ._backend import backend_for
from .neuron import STAALIF

__version__ = "0.1.0"

__all__ = ["STAALIF", "backend_for", "convert", "profile", "__version__"]


def __getattr__(name):
    # convert and profile live in private modules and load on first use.
    if name == "convert":
        from ._convert import convert

        return convert
    if name == "profile":
        from ._profile import profile

        return profile
    raise AttributeError(f"module 'staa' has no attribute {name!r}")
