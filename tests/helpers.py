"""Small helpers shared by the test modules."""
from __future__ import annotations

import torch

import staa


def randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.5) -> torch.nn.Module:
    """Give every parameter (PE and the zero-initialised value layers too) random values,
    so that tests exercise all blocks rather than their identity initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).mul_(scale).to(p.dtype))
    return module


def make_neuron(C=6, T=3, seed=0, **kw) -> staa.STAALIF:
    kw.setdefault("backend", "torch")
    return randomize(staa.STAALIF(C, T, **kw), seed)
