"""staa: the STAA-LIF spiking neuron (STAA-SNN, CVPR 2025) as a drop-in PyTorch layer.

>>> import torch, staa
>>> lif = staa.STAALIF(16, T=4)
>>> spikes = lif(torch.randn(4, 2, 16, 8, 8))   # [T, B, C, H, W]

Public names: ``STAALIF``, ``backend_for`` with its ``BackendChoice`` (``reason=True``) and
the ``BackendHint`` warning; ``convert`` with its ``ConvertReport``, ``ReplacedNode`` and
``SkippedNode``; ``profile`` with its ``ProfileReport`` and ``LayerStats`` and the per-step
cost formula ``staa_step_macs``; ``MultiStepLIF``, the plain LIF baseline of
``python -m staa``; ``selftest`` with its ``SelftestReport``, which checks the Triton kernels
against the torch path on this machine (``python -m staa selftest``).

``import staa`` imports torch only: triton and spikingjelly are imported on first use,
and the names above that live in their own modules load when first looked up.
"""
from ._backend import BackendChoice, BackendHint, backend_for
from .neuron import STAALIF

__version__ = "0.1.0"

# name -> module that defines it; loaded on first attribute access.
_LAZY = {
    "convert": "._convert",
    "ConvertReport": "._convert",
    "ReplacedNode": "._convert",
    "SkippedNode": "._convert",
    "profile": "._profile",
    "ProfileReport": "._profile",
    "LayerStats": "._profile",
    "staa_step_macs": "._profile",
    "MultiStepLIF": "._demo",
    "selftest": "._selftest",
    "SelftestReport": "._selftest",
}

__all__ = ["STAALIF", "backend_for", "BackendChoice", "BackendHint", *_LAZY, "__version__"]


def __getattr__(name):
    """Load the lazily exported names (``convert``, ``profile``, their report classes, ...)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'staa' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    """Every public name, loaded or not, plus the module's own attributes."""
    return sorted(set(globals()) | set(__all__))
