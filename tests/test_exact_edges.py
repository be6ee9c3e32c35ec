"""Exact edges on the torch route: an IF neuron (every block off) fed float64 inputs that put V
exactly on v_threshold and on v_threshold +- width/2 must fire and pass gradient exactly as the
reference does (V >= v_th fires; the rectangle's window |V - v_th| < a/2 is strict)."""
import pytest
import torch

from staa.functional import NeuronConfig, staa_lif
from staa.reference import STAAParams
from staa.surrogate import Surrogate

from edge_cases import (EDGE_CASES, EXPECTED_FIRST_STEP, if_edge_input, reference_if_neuron, run_if_neuron,
                        upstream_gradient)


@pytest.mark.parametrize("v_th, width, v_reset", EDGE_CASES)
@pytest.mark.parametrize("mode", ["multi", "single"])
def test_if_neuron_on_the_threshold_and_the_window_edges(v_th, width, v_reset, mode):
    x = if_edge_input(v_th, width, v_reset).requires_grad_()
    spikes, h_last = run_if_neuron(x, v_th, width, v_reset, mode, backend="torch")
    ref, ref_h_last = reference_if_neuron(x, v_th, width, v_reset)
    assert torch.equal(spikes, ref)
    assert torch.equal(h_last, ref_h_last)  # the reset potential (hard, non-zero, soft) is the spec's
    assert spikes[0].tolist() == [EXPECTED_FIRST_STEP]
    gy = upstream_gradient()
    (g,) = torch.autograd.grad((spikes * gy).sum() + h_last.sum(), x)
    (g_ref,) = torch.autograd.grad((ref * gy).sum() + ref_h_last.sum(), x)
    assert torch.equal(g, g_ref)


@pytest.mark.parametrize("v_th, width", [c[:2] for c in EDGE_CASES])
def test_one_step_surrogate_is_exactly_the_strict_window(v_th, width):
    """T = 1 from rest: dL/dI = dL/dS * dS/dV, with dS/dV = 1/a inside |V - v_th| < a/2 and 0 on the edges."""
    targets = torch.tensor([v_th, v_th - width / 2, v_th + width / 2, v_th - width / 4, v_th + width / 4],
                           dtype=torch.float64)
    x = targets.reshape(1, 1, 5).clone().requires_grad_()
    cfg = NeuronConfig(v_threshold=v_th, v_reset=0.0, detach_reset=True, surrogate=Surrogate("rect", width))
    spikes, _, _ = staa_lif(x, STAAParams(None, None, None, None), cfg, backend="torch")
    (g,) = torch.autograd.grad(spikes.sum(), x)
    inside = 1.0 / width
    assert g.flatten().tolist() == [inside, 0.0, 0.0, inside, inside]
    assert spikes.flatten().tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
