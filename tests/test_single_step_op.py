"""Single-step mode on the op: a chain of one-step calls is one multi-step call.

Spec (float64): spikes equal, states to 1e-12, every gradient to 1e-10, over shapes, blocks,
reset modes, surrogate kinds and TSRD masks; plus the op's pitfalls with an initial state.
"""
import torch
from hypothesis import given, settings, strategies as st

from staa.functional import staa_lif

from helpers import make_neuron

KINDS = {"rect": dict(surrogate_width=1.5), "atan": dict(surrogate="atan", surrogate_alpha=2.5),
         "sigmoid": dict(surrogate="sigmoid", surrogate_alpha=3.0),
         "fast_sigmoid": dict(surrogate="fast_sigmoid", surrogate_alpha=4.0)}


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True)


@settings(max_examples=25, deadline=None)
@given(
    T=st.integers(1, 4), B=st.integers(1, 3), C=st.integers(1, 5), hw=st.sampled_from([None, (1, 1), (2, 3)]),
    blocks=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    reset=st.sampled_from(["hard0", "hard-0.3", "soft"]), detach=st.booleans(), kind=st.sampled_from(list(KINDS)),
    v_th=st.sampled_from([0.5, 1.0, 1.7]), drop_bits=st.integers(0, 15), seed=st.integers(0, 10_000),
)
def test_single_step_chain_equals_multi_step(T, B, C, hw, blocks, reset, detach, kind, v_th, drop_bits, seed):
    gc, pe, sa = blocks
    v_reset = {"hard0": 0.0, "hard-0.3": -0.3, "soft": None}[reset]
    m = make_neuron(C, T, seed, gc=gc, pe=pe, sa=sa, v_threshold=v_th, v_reset=v_reset, detach_reset=detach,
                    **KINDS[kind]).double()
    params = [p for p in m.parameters()]
    drop = torch.tensor([bool(drop_bits >> t & 1) for t in range(T)])
    x = (torch.randn((T, B, C) + (hw or ()), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
         * 1.5).requires_grad_()
    gy = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))

    multi, h_multi, _ = staa_lif(x, m.params(), m.cfg, drop=drop, backend="torch")
    g_multi = _grads((multi * gy).sum() + h_multi.sum(), [x, *params])

    h, outs = None, []
    for t in range(T):
        s, h, _ = staa_lif(x[t:t + 1], m.params(), m.cfg, drop=drop[t:t + 1], h0=h, t0=t, backend="torch")
        outs.append(s)
    single = torch.cat(outs)
    g_single = _grads((single * gy).sum() + h.sum(), [x, *params])

    assert torch.equal(multi, single)
    torch.testing.assert_close(h, h_multi, rtol=0, atol=1e-12)
    for a, b in zip(g_single, g_multi):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_module_single_step_backprop_matches_multi_step():
    """Through the module: T single-step calls, BPTT through the stored state."""
    torch.manual_seed(0)
    multi = make_neuron(5, 4, 3, tsrd=0.0).double()
    single = make_neuron(5, 4, 3, tsrd=0.0, step_mode="s").double()
    x = (torch.randn(4, 2, 5, 3, 3, dtype=torch.float64) * 1.5).requires_grad_()
    a = multi(x)
    ga = torch.autograd.grad(a.sum(), [x, *multi.parameters()])
    b = torch.stack([single(xt) for xt in x.unbind(0)])
    gb = torch.autograd.grad(b.sum(), [x, *single.parameters()])
    assert torch.equal(a, b)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-10)


def test_zero_step_call_returns_a_copy_of_h0():
    m = make_neuron(3, 2, 0).double()
    h0 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    s, h, _ = staa_lif(torch.zeros(0, 2, 3, 4, dtype=torch.float64), m.params(), m.cfg, h0=h0, backend="torch")
    assert s.shape == (0, 2, 3, 4) and torch.equal(h, h0) and h.data_ptr() != h0.data_ptr()


def test_unused_last_state_and_unused_spikes():
    """The loss may use only the spikes (the state's gradient arrives as None) or only the state."""
    m = make_neuron(3, 3, 1).double()
    x = torch.randn(3, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    s, h, _ = staa_lif(x, m.params(), m.cfg, h0=h0, backend="torch")
    gx, gh0 = torch.autograd.grad(s.sum(), [x, h0])
    assert gx.shape == x.shape and gh0.shape == h0.shape
    s, h, _ = staa_lif(x, m.params(), m.cfg, h0=h0, backend="torch")
    gx, gh0 = torch.autograd.grad(h.sum(), [x, h0])
    assert gx.abs().sum() > 0 and gh0.abs().sum() > 0  # the state is differentiable, not cut


def test_grad_h0_matches_finite_differences():
    """With the reset detached and no V near the threshold, H_last is smooth in h0: its exact
    derivative (no surrogate involved) must match finite differences."""
    m = make_neuron(2, 2, 5, detach_reset=True).double()
    x = torch.randn(2, 1, 2, 3, dtype=torch.float64) * 0.3
    h0 = (torch.randn(1, 2, 3, dtype=torch.float64) * 0.3).requires_grad_()

    def f(h):
        s, h_last, _ = staa_lif(x, m.params(), m.cfg, h0=h, backend="torch")
        return h_last

    torch.autograd.gradcheck(f, (h0,), eps=1e-6, atol=1e-6)


def test_detach_cuts_and_reset_restarts():
    m = make_neuron(3, 4, 2, tsrd=0.0, step_mode="s").double()
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    m(x[0])
    m.detach()
    y = m(x[1])
    (g,) = torch.autograd.grad(y.sum() + m.v.sum(), x)
    assert g[0].abs().sum() == 0 and g[1].abs().sum() > 0  # nothing flows back past detach()
    m.reset()
    assert m.t == 0 and m.v is None


def test_compiled_single_step_loop_does_not_recompile_per_step():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    T = 16
    m = make_neuron(4, T, 0, tsrd=0.1, step_mode="s")
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(m, fullgraph=True, backend=counter)
    x = torch.randn(T, 2, 4, 3, 3)
    for epoch in range(2):
        m.reset()
        m.train()
        outs = [step(x[t]) for t in range(T)]
        torch.stack(outs).sum().backward()
    # one graph for t = 0 (no TSRD draw) and one for the rest at most; never one per step
    assert 1 <= counter.frame_count <= 3, counter.frame_count
