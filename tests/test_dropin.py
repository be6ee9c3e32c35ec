"""STAALIF as a drop-in LIF replacement: single-step mode, lazy sizing, state handling."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import staa
from staa.reference import staa_lif_reference

from conftest import requires_spikingjelly
from helpers import make_neuron


def _run_single_steps(m, x):
    m.reset()
    return torch.stack([m(x[t]) for t in range(x.shape[0])])


@settings(max_examples=15, deadline=None)
@given(
    T=st.integers(1, 4), B=st.integers(1, 3), C=st.integers(1, 6), hw=st.sampled_from([None, (1, 1), (2, 3)]),
    gc=st.booleans(), pe=st.booleans(), sa=st.booleans(), soft=st.booleans(), seed=st.integers(0, 1000),
)
def test_multi_step_equals_repeated_single_step(T, B, C, hw, gc, pe, sa, soft, seed):
    m = make_neuron(C, T, seed, gc=gc, pe=pe, sa=sa, v_reset=None if soft else 0.0).double().eval()
    shape = (T, B, C) + (hw or ())
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 1.5
    m.step_mode = "m"
    multi = m(x)
    v_multi = m.v.clone()
    m.step_mode = "s"
    single = _run_single_steps(m, x)
    assert torch.equal(multi, single)
    # The multi-step op reorders sums (work hoisted out of the time loop): states agree to rounding.
    torch.testing.assert_close(v_multi, m.v, rtol=0, atol=1e-12)
    assert m.t == T


def test_single_step_training_gradient_flows_through_state():
    m = make_neuron(4, 3, seed=1, tsrd=0.0, step_mode="s")
    x = (torch.randn(3, 2, 4, 2, 2) * 1.5).requires_grad_()
    out = torch.stack([m(x[t]) for t in range(3)])
    ref = staa_lif_reference(x.reshape(3, 2, 4, 4), m.params()).reshape(x.shape)
    assert torch.equal(out, ref)
    out.sum().backward()
    g1 = x.grad.clone()
    x.grad = None
    ref.sum().backward()
    torch.testing.assert_close(g1, x.grad)


def test_single_step_tsrd_draws_per_call_never_at_t0():
    m = make_neuron(3, 5, seed=2, tsrd=0.5, step_mode="s").train()
    x = torch.randn(5, 2, 3) * 2
    torch.manual_seed(3)
    out = _run_single_steps(m, x)
    torch.manual_seed(3)
    drops = [False] + [bool(torch.rand(1) < 0.5) for _ in range(4)]
    want = staa_lif_reference(x[..., None], m.params(), torch.tensor(drops))[..., 0]
    assert torch.equal(out, want)


def test_single_step_needs_T_with_pe_and_stops_at_T():
    m = staa.STAALIF(4, step_mode="s")
    with pytest.raises(ValueError, match="needs T"):
        m(torch.randn(2, 4))
    m = staa.STAALIF(4, T=2, step_mode="s")
    m(torch.randn(2, 4))
    m(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"t=2 .*T=2"):
        m(torch.randn(2, 4))
    m.reset()
    m(torch.randn(2, 4))  # fine after reset
    # without PE no T is needed
    m = staa.STAALIF(4, pe=False, step_mode="s")
    for _ in range(6):
        m(torch.randn(2, 4))


def test_step_mode_is_validated():
    m = staa.STAALIF(4, 2)
    m.step_mode = "s"
    assert m.step_mode == "s"
    with pytest.raises(ValueError, match="step_mode"):
        m.step_mode = "x"
    with pytest.raises(ValueError, match="step_mode"):
        staa.STAALIF(4, 2, step_mode="multi")


# ---------------------------------------------------------------- lazy sizing
def test_lazy_module_materialises_and_trains_with_early_optimizer():
    m = staa.STAALIF()
    assert m.has_uninitialized_params()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x = torch.randn(3, 2, 5, 4, 4) + 0.7
    m(x).sum().backward()  # materialises C=5, T=3
    assert (m.channels, m.T) == (5, 3)
    assert m.pos.shape == (3, 5) and m.gc_x.query.weight.shape == (4, 5)
    assert torch.count_nonzero(m.pos) == 0 and torch.count_nonzero(m.gc_x.value.weight) == 0
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    opt.step()
    changed = [k for k, v in m.named_parameters() if not torch.equal(v, before[k])]
    # value layers start at zero, so only they, PE and SA get gradient on the first step
    assert {"pos", "gc_x.value.weight", "gc_h.value.weight", "sa.fc2.bias"} <= set(changed)


def test_lazy_T_only():
    m = staa.STAALIF(6)
    m(torch.randn(4, 1, 6))
    assert m.T == 4 and m.pos.shape == (4, 6)


@settings(max_examples=8, deadline=None)
@given(C=st.integers(1, 9), T=st.integers(1, 4), seed=st.integers(0, 100))
def test_lazy_equals_eager_with_same_weights(C, T, seed):
    eager = make_neuron(C, T, seed, tsrd=0.0)
    lazy = staa.STAALIF(tsrd=0.0, backend="torch")
    lazy.load_state_dict(eager.state_dict())
    assert not lazy.has_uninitialized_params() and (lazy.channels, lazy.T) == (C, T)
    x = torch.randn(T, 2, C, 3, 3, generator=torch.Generator().manual_seed(seed)) * 2
    assert torch.equal(lazy(x), eager(x))


def test_state_dict_round_trip_eager_and_lazy():
    a = make_neuron(7, 3, seed=4)
    b = staa.STAALIF(7, 3)
    b.load_state_dict(a.state_dict())
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v)
    lazy = staa.STAALIF(sa=False)
    lazy(torch.randn(3, 1, 7, 2, 2))
    lazy2 = staa.STAALIF(sa=False)
    lazy2.load_state_dict(lazy.state_dict())
    assert lazy2.state_dict().keys() == lazy.state_dict().keys()
    for k, v in lazy.state_dict().items():
        assert torch.equal(lazy2.state_dict()[k], v), k
    x = torch.randn(3, 2, 7, 2, 2) * 2
    lazy.eval(), lazy2.eval()
    assert torch.equal(lazy2(x), lazy(x))


def test_shorter_sequences_use_a_prefix_of_pe_and_longer_ones_fail():
    m = make_neuron(3, 4, seed=5, tsrd=0.0)
    x = torch.randn(2, 2, 3, 2, 2) * 2
    assert torch.equal(m(x), staa_lif_reference(x.reshape(2, 2, 3, 4), m.params()).reshape(x.shape))
    with pytest.raises(ValueError, match=r"T=5 .*T=4"):
        m(torch.randn(5, 2, 3, 2, 2))


# ---------------------------------------------------------------- state
def test_state_is_not_in_state_dict_and_is_read_only():
    m = make_neuron(3, 2, seed=0)
    m(torch.randn(2, 2, 3, 2, 2))
    assert m.v is not None and m.v.shape == (2, 3, 2, 2)
    assert all(not k.startswith("_h") and k != "v" for k in m.state_dict())
    assert all(b is not m.v for b in m.buffers())
    with pytest.raises(AttributeError):
        m.v = torch.zeros(1)
    m.reset()
    assert m.v is None and m.t == 0


def test_store_v_seq():
    m = make_neuron(3, 4, seed=1, tsrd=0.0, store_v_seq=True)
    x = torch.randn(4, 2, 3, 2, 2) * 2
    m(x)
    _, h = staa_lif_reference(x.reshape(4, 2, 3, 4), m.params(), return_states=True)
    assert m.v_seq.shape == x.shape
    torch.testing.assert_close(m.v_seq, h.reshape(x.shape))
    assert torch.equal(m.v, m.v_seq[-1])


def test_batch_change_mid_sequence_asks_for_reset_and_state_follows_dtype():
    m = make_neuron(3, 4, seed=1, step_mode="s").eval()
    m(torch.randn(5, 3, 2, 2))
    m(torch.randn(5, 3, 2, 2))
    assert m.t == 2
    with pytest.raises(ValueError, match=r"shape \[2, 3, 2, 2\] does not match the stored state of shape \[5, 3, 2, 2\].*reset\(\)"):
        m(torch.randn(2, 3, 2, 2))  # as in spikingjelly, a new batch needs reset()
    assert m.t == 2 and m.v.shape == (5, 3, 2, 2)  # the failed call changed nothing
    m.reset()
    out = m(torch.randn(2, 3, 2, 2))
    assert out.shape == (2, 3, 2, 2) and m.t == 1 and m.v.shape == (2, 3, 2, 2)
    m.reset()
    m.double()
    m(torch.randn(2, 3, 2, 2, dtype=torch.float64))
    assert m.v.dtype == torch.float64
    m.reset()
    m.float()
    m(torch.randn(2, 3, 2, 2, dtype=torch.float16))
    assert m.v.dtype == torch.float32


@settings(max_examples=6, deadline=None)
@given(dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]), seed=st.integers(0, 50))
def test_to_dtype_keeps_working(dtype, seed):
    m = make_neuron(4, 2, seed, tsrd=0.0).to(dtype)
    assert all(p.dtype == dtype for p in m.parameters())
    x = (torch.randn(2, 3, 4, 2, 2, generator=torch.Generator().manual_seed(seed)) * 2).to(dtype)
    out = m(x)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, staa_lif_reference(x.reshape(2, 3, 4, 4), m.params()).reshape(x.shape))


@settings(max_examples=6, deadline=None)
@given(b1=st.integers(1, 4), b2=st.integers(1, 4), seed=st.integers(0, 50))
def test_reset_between_batches_of_different_size(b1, b2, seed):
    m = make_neuron(3, 3, seed, tsrd=0.0, step_mode="s").eval()
    g = torch.Generator().manual_seed(seed)
    for b in (b1, b2, b1):
        x = torch.randn(3, b, 3, generator=g) * 2
        m.reset()
        got = torch.stack([m(x[t]) for t in range(3)])
        assert torch.equal(got, staa_lif_reference(x[..., None], m.params())[..., 0])


# ---------------------------------------------------------------- spikingjelly utilities
@requires_spikingjelly
def test_spikingjelly_utilities_without_warnings():
    from spikingjelly.activation_based import functional, layer
    from spikingjelly.logger import logger

    messages = []
    sink = logger.add(lambda msg: messages.append(str(msg)), level="WARNING")
    try:
        net = torch.nn.Sequential(layer.Conv2d(2, 4, 3, padding=1), staa.STAALIF(4, 3), layer.Flatten(), layer.Linear(64, 3))
        functional.set_step_mode(net, "m")
        x = torch.randn(3, 2, 2, 4, 4)
        y1 = net(x)
        assert net[1].v is not None
        functional.reset_net(net)
        assert net[1].v is None
        functional.detach_net(net)
        net.eval()
        functional.reset_net(net)
        a = net(x)
        functional.reset_net(net)
        b = net(x)
        assert torch.equal(a, b) and y1.shape == (3, 2, 3)
        functional.set_step_mode(net, "s")
        assert net[1].step_mode == "s"
    finally:
        logger.remove(sink)
    assert messages == []


@requires_spikingjelly
def test_compat_instance_is_still_a_staalif_and_pickles():
    import io

    import spikingjelly.activation_based.base as base

    m = make_neuron(3, 2, seed=0)
    assert isinstance(m, staa.STAALIF) and isinstance(m, base.MemoryModule)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    m2 = torch.load(buf, weights_only=False)
    x = torch.randn(2, 1, 3, 2, 2) * 2
    m.eval(), m2.eval()
    assert torch.equal(m(x), m2(x))
