"""The Triton route is capture-safe, checked on the CPU: the launchers and the glue around the
kernels read no device value on the host, and run the same operations and launches into the same
sizes whatever the input values and the TSRD mask (tests/capture_checks.py).

The kernel launches are intercepted (``staa.kernels.launch.launch_hook``) and recorded with
their grids and the sizes of their tensor arguments instead of running, so the interpreter's own
host copies of the arguments stay out of the trace; what the kernels would write is left as
allocated (the values are meaningless, which is the point: nothing may depend on them).
"""
from __future__ import annotations

import pytest
import torch

import staa
from staa.kernels import launch

from capture_checks import traced
from helpers import make_neuron


def _run(monkeypatch, seed, single):
    """Forward and backward of one sequence with launches recorded, not run: (ops, launches, reads, mask)."""
    launches, masks = [], []

    def hook(kernel, grid, args, kwargs):
        sizes = tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else a for a in args)
        launches.append((getattr(kernel, "__name__", str(kernel)), tuple(grid) if not callable(grid) else grid,
                         sizes, tuple(sorted((k, v) for k, v in kwargs.items() if not isinstance(v, torch.Tensor)))))

    monkeypatch.setattr(launch, "launch_hook", hook)
    T = 5
    m = make_neuron(6, T, 1, tsrd=0.5, backend="triton", step_mode="s" if single else "m").train()
    draw = m._draw_drop
    m._draw_drop = lambda *a: masks.append(draw(*a)) or masks[-1]
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(T, 2, 6, 3, 3, generator=g) * 0.8 + 0.4).requires_grad_(True)
    gy = torch.randn(T, 2, 6, 3, 3, generator=g)
    torch.manual_seed(seed)
    with traced() as trace:
        y = torch.stack([m(x[t]) for t in range(T)]) if single else m(x)
        torch.autograd.grad(y, [x, *m.parameters()], gy)
    return trace.ops, launches, trace.reads, torch.cat(masks)


@pytest.mark.parametrize("single", [False, True], ids=["multi-step", "single-step"])
def test_triton_route_reads_nothing_and_runs_the_same_work_whatever_the_values(monkeypatch, single):
    ops1, launches1, reads1, mask1 = _run(monkeypatch, 3, single)
    ops2, launches2, reads2, mask2 = _run(monkeypatch, 11, single)
    assert launches1, "no launch was recorded"
    assert reads1 == [] and reads2 == []
    assert not torch.equal(mask1, mask2), "the two runs drew the same TSRD mask; pick other seeds"
    assert launches1 == launches2
    assert ops1 == ops2
