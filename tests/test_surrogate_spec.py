"""Each surrogate kind's dS/dV against an oracle that does not share its formula.

The smooth kinds are derivatives of known primitives: atan's of 1/pi * atan(pi/2 p x) + 1/2
(spikingjelly's ATan), sigmoid's of sigmoid(p x) (spikingjelly's Sigmoid), fast_sigmoid's of
x / (1 + p |x|) (snnTorch's fast_sigmoid). Autograd differentiates the primitive; the
library's closed form must agree. Where the frameworks are installed, their own backward
is compared too (the kinds are named after them)."""
import math

import pytest
import torch

from staa.surrogate import DEFAULT_PARAM, Surrogate, spike, surrogate_grad

from conftest import requires_snntorch, requires_spikingjelly

X = torch.linspace(-1.5, 1.5, 61, dtype=torch.float64)
PRIMITIVES = {
    "atan": lambda x, p: torch.atan(math.pi / 2 * p * x) / math.pi + 0.5,
    "sigmoid": lambda x, p: torch.sigmoid(p * x),
    "fast_sigmoid": lambda x, p: x / (1.0 + p * x.abs()),
}


def _autograd_derivative(fn, x, p):
    x = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(fn(x, p).sum(), x)
    return g


@pytest.mark.parametrize("kind", sorted(PRIMITIVES))
@pytest.mark.parametrize("p", [None, 0.5, 3.0])
def test_smooth_kinds_are_derivatives_of_their_primitives(kind, p):
    p = DEFAULT_PARAM[kind] if p is None else p
    want = _autograd_derivative(PRIMITIVES[kind], X, p)
    torch.testing.assert_close(surrogate_grad(X, kind, p), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("width", [0.5, 1.0, 2.0])
def test_rect_is_one_over_a_inside_the_strict_window(width):
    g = surrogate_grad(X, "rect", width)
    inside = X.abs() < width / 2
    assert torch.equal(g, torch.where(inside, 1.0 / width, 0.0).to(g.dtype))
    # its integral over the window is 1, as for the step it stands in for
    assert g.sum().item() * (X[1] - X[0]).item() == pytest.approx(1.0, abs=2 * (X[1] - X[0]).item() / width)


@pytest.mark.parametrize("kind", ["atan", "sigmoid", "fast_sigmoid"])
def test_spike_backward_is_the_kind_at_v_minus_threshold(kind):
    v = (X + 0.75).requires_grad_()
    s = spike(v, 0.75, Surrogate(kind, 2.5))
    (g,) = torch.autograd.grad(s.sum(), v)
    torch.testing.assert_close(g, _autograd_derivative(PRIMITIVES[kind], X, 2.5), rtol=1e-12, atol=1e-14)
    assert torch.equal(s, (v >= 0.75).double())


@requires_spikingjelly
@pytest.mark.parametrize("kind, cls", [("atan", "ATan"), ("sigmoid", "Sigmoid")])
def test_matches_spikingjelly(kind, cls):
    from spikingjelly.activation_based import surrogate as sj_surrogate

    fn = getattr(sj_surrogate, cls)(alpha=3.0)
    x = X.clone().requires_grad_()
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    torch.testing.assert_close(surrogate_grad(X, kind, 3.0), g, rtol=1e-6, atol=1e-7)


@requires_snntorch
def test_fast_sigmoid_matches_snntorch():
    from snntorch import surrogate as snn_surrogate

    fn = snn_surrogate.fast_sigmoid(slope=7.0)
    x = X.clone().requires_grad_()
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    torch.testing.assert_close(surrogate_grad(X, "fast_sigmoid", 7.0), g, rtol=1e-6, atol=1e-7)
