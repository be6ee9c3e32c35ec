"""The reference neuron against the paper's equations, written out a second time here."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import staa
from staa.reference import GCParams, SAParams, STAAParams, global_context, rect_spike, staa_lif_reference, step_attention

from helpers import make_neuron


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _gc_loop(z, p: GCParams):
    """GC block, one sample and one channel at a time (eqs. 7-10)."""
    B, C, P = z.shape
    out = z.clone()
    for b in range(B):
        ctx = torch.zeros(C, dtype=z.dtype)
        for q in range(P):
            logit = float((p.key_weight[0] * z[b, :, q]).sum() + p.key_bias[0])
            ctx += _sigmoid(logit) * z[b, :, q]
        hq = p.query_weight @ ctx + p.query_bias
        mu, var = hq.mean(), hq.var(unbiased=False)
        hq = (hq - mu) / torch.sqrt(var + 1e-5) * p.norm_weight + p.norm_bias
        out[b] += (p.value_weight @ hq.clamp(min=0) + p.value_bias)[:, None]
    return out


def _sa_loop(u, p: SAParams, alpha):
    B, C, P = u.shape
    out = u.clone()
    for b in range(B):
        pooled = alpha * u[b].sum(dim=1) / P
        hidden = (p.fc1_weight @ pooled + p.fc1_bias).clamp(min=0)
        gate = 1.0 / (1.0 + torch.exp(-(p.fc2_weight @ hidden + p.fc2_bias)))
        out[b] = u[b] * gate[:, None]
    return out


def _straight_loop(x, prm: STAAParams, drop, alpha, v_th, v_reset):
    T = x.shape[0]
    h = torch.full_like(x[0], 0.0 if v_reset is None else v_reset)
    out = []
    for t in range(T):
        if bool(drop[t]):
            v = x[t] + h
        else:
            xt = x[t] + (prm.pos[t][None, :, None] if prm.pos is not None else 0)
            u = (_gc_loop(xt, prm.gc_x) if prm.gc_x else xt) + (_gc_loop(h, prm.gc_h) if prm.gc_h else h)
            v = _sa_loop(u, prm.sa, alpha) if prm.sa else u
        s = (v >= v_th).to(x.dtype)
        h = v - v_th * s if v_reset is None else v_reset * s + v * (1 - s)
        out.append(s)
    return torch.stack(out)


@settings(max_examples=12, deadline=None)
@given(
    T=st.integers(1, 4), B=st.integers(1, 2), C=st.integers(1, 7), P=st.integers(1, 5),
    gc=st.booleans(), pe=st.booleans(), sa=st.booleans(), soft=st.booleans(), seed=st.integers(0, 50),
)
def test_reference_matches_straight_loop(T, B, C, P, gc, pe, sa, soft, seed):
    m = make_neuron(C, T, seed, gc=gc, pe=pe, sa=sa, v_reset=None if soft else 0.0).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, C, P, generator=g, dtype=torch.float64) * 1.5
    drop = torch.rand(T, generator=g) < 0.3
    drop[0] = False
    with torch.no_grad():
        got = staa_lif_reference(x, m.params(), drop, alpha=2.0, v_reset=None if soft else 0.0)
    with torch.no_grad():
        want = _straight_loop(x, m.params(), drop, 2.0, 1.0, None if soft else 0.0)
    assert torch.equal(got, want)


def test_module_matches_reference_5d_and_3d():
    m = make_neuron(5, 3, seed=1, tsrd=0.0)
    x = torch.randn(3, 2, 5, 4, 3) * 2
    want = staa_lif_reference(x.reshape(3, 2, 5, 12), m.params())
    assert torch.equal(m(x), want.reshape(x.shape))
    x3 = torch.randn(3, 2, 5) * 2
    assert torch.equal(m(x3), staa_lif_reference(x3[..., None], m.params())[..., 0])
    assert m(x3).shape == x3.shape


def _if_loop(x, v_th=1.0, v_reset=0.0):
    h = torch.full_like(x[0], v_reset)
    out = []
    for t in range(x.shape[0]):
        v = h + x[t]
        s = (v >= v_th).to(x.dtype)
        h = torch.where(s.bool(), torch.full_like(v, v_reset), v)
        out.append(s)
    return torch.stack(out)


@settings(max_examples=10, deadline=None)
@given(T=st.integers(1, 6), C=st.integers(1, 5), seed=st.integers(0, 100))
def test_all_blocks_off_is_if_neuron(T, C, seed):
    m = staa.STAALIF(C, T, gc=False, pe=False, sa=False, tsrd=0.0, backend="torch")
    assert len(list(m.parameters())) == 0
    x = torch.randn(T, 3, C, 2, 2, generator=torch.Generator().manual_seed(seed)) * 1.2
    assert torch.equal(m(x), _if_loop(x))


def test_if_equivalence_with_spikingjelly():
    pytest.importorskip("spikingjelly.activation_based.neuron")
    from spikingjelly.activation_based import neuron, surrogate

    torch.manual_seed(0)
    x = torch.randn(6, 4, 3, 5, 5) * 1.3
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    sj = neuron.IFNode(v_reset=0.0, surrogate_function=surrogate.Rect(alpha=1.0), step_mode="m")
    ours = staa.STAALIF(3, 6, gc=False, pe=False, sa=False, tsrd=0.0, backend="torch")
    s1, s2 = sj(x1), ours(x2)
    assert torch.equal(s1, s2)
    w = torch.randn_like(s1)
    (s1 * w).sum().backward()
    (s2 * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("width", [1.0, 0.5, 2.0])
def test_surrogate_window_is_strict(width):
    vth = 1.0
    h = width / 2
    v = torch.tensor([vth - h - 1e-3, vth - h, vth - h + 1e-3, vth, vth + h - 1e-3, vth + h, vth + h + 1e-3], dtype=torch.float64)
    v.requires_grad_()
    s = rect_spike(v, vth, width)
    assert s.tolist() == [0, 0, 0, 1, 1, 1, 1]
    s.sum().backward()
    expected = [0, 0, 1 / width, 1 / width, 1 / width, 0, 0]
    assert v.grad.tolist() == pytest.approx(expected)


def test_hard_soft_reset_and_detach_reset():
    x = torch.tensor([[1.5], [0.2], [0.9]], dtype=torch.float64).reshape(3, 1, 1, 1)
    prm = STAAParams(None, None, None, None)
    # hard reset to 0: V=1.5 fires -> H=0; V=0.2; V=1.1 fires
    hard, hh = staa_lif_reference(x, prm, v_reset=0.0, return_states=True)
    assert hard.flatten().tolist() == [1, 0, 1]
    assert hh.flatten().tolist() == pytest.approx([0.0, 0.2, 0.0])
    # hard reset to a non-zero value starts at v_reset too
    _, hr = staa_lif_reference(x, prm, v_reset=-0.5, return_states=True)
    assert hr.flatten().tolist() == pytest.approx([-0.5, -0.3, 0.6])
    # soft reset: H = V - v_th S, H_{-1} = 0
    soft, hs = staa_lif_reference(x, prm, v_reset=None, return_states=True)
    assert soft.flatten().tolist() == [1, 0, 1]
    assert hs.flatten().tolist() == pytest.approx([0.5, 0.7, 0.6])
    # detach_reset: gradient through the reset's S is stopped
    xs = torch.tensor([1.2, 0.6], dtype=torch.float64).reshape(2, 1, 1, 1)
    grads = []
    for detach in (False, True):
        xg = xs.clone().requires_grad_()
        out = staa_lif_reference(xg, prm, v_reset=0.0, detach_reset=detach)
        out[1].sum().backward()
        grads.append(xg.grad.flatten().tolist())
    # V0=1.2 (in window), S0=1, H0 = V0 (1 - S0); V1 = x1 + H0.
    # dS1/dV1 = 1 (V1=0.6 in window). dH0/dV0 = (1 - S0) - V0 dS0/dV0 = -1.2 with the reset's gradient, 0 without.
    assert grads[0] == pytest.approx([-1.2, 1.0])
    assert grads[1] == pytest.approx([0.0, 1.0])


def test_tsrd_mask():
    m = staa.STAALIF(4, 8, tsrd=0.3)
    m.eval()
    assert not m._draw_drop(8, 0, torch.device("cpu")).any()
    m.train()
    masks = torch.stack([m._draw_drop(8, 0, torch.device("cpu")) for _ in range(4000)])
    assert not masks[:, 0].any()
    freq = masks[:, 1:].float().mean().item()
    n = masks[:, 1:].numel()
    assert abs(freq - 0.3) < 5 * math.sqrt(0.3 * 0.7 / n)
    torch.manual_seed(7)
    a = m._draw_drop(8, 0, torch.device("cpu"))
    torch.manual_seed(7)
    b = m._draw_drop(8, 0, torch.device("cpu"))
    assert torch.equal(a, b)
    m0 = staa.STAALIF(4, 8, tsrd=0.0).train()
    assert not m0._draw_drop(8, 0, torch.device("cpu")).any()


def test_tsrd_forward_uses_the_drawn_mask():
    m = make_neuron(4, 6, seed=3, tsrd=0.5).train()
    x = torch.randn(6, 2, 4, 3, 3) * 2
    torch.manual_seed(11)
    got = m(x)
    torch.manual_seed(11)
    drop = torch.rand(6) < 0.5
    drop[0] = False
    assert drop.any(), "seed chosen so that some step is dropped"
    want = staa_lif_reference(x.reshape(6, 2, 4, 9), m.params(), drop).reshape(x.shape)
    assert torch.equal(got, want)
    no_drop = staa_lif_reference(x.reshape(6, 2, 4, 9), m.params()).reshape(x.shape)
    assert not torch.equal(got, no_drop)


def test_pe_zero_init_and_gets_gradient():
    m = staa.STAALIF(5, 3, backend="torch")
    assert torch.count_nonzero(m.pos) == 0
    x = (torch.randn(3, 2, 5, 4, 4) + 0.8).requires_grad_()
    m(x).sum().backward()
    assert m.pos.grad is not None and torch.count_nonzero(m.pos.grad) > 0


def test_fresh_gc_is_identity():
    m = staa.STAALIF(8, 2)
    z = torch.randn(3, 8, 10)
    for gc in (m.gc_x, m.gc_h):
        assert torch.equal(gc(z), z)


def test_gradients_reach_every_parameter():
    m = make_neuron(6, 4, seed=2, tsrd=0.0)
    x = (torch.randn(4, 3, 6, 3, 3) * 1.5).requires_grad_()
    m(x).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
    assert torch.count_nonzero(x.grad) > 0


def test_gradcheck_gc_and_sa():
    torch.manual_seed(0)
    C, Ch, B, P = 5, 4, 2, 3
    gp = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in [(1, C), (1,), (Ch, C), (Ch,), (Ch,), (Ch,), (C, Ch), (C,)]]
    z = torch.randn(B, C, P, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z, *w: global_context(z, GCParams(*w)), (z, *gp))
    sp = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in [(Ch, C), (Ch,), (C, Ch), (C,)]]
    assert torch.autograd.gradcheck(lambda u, *w: step_attention(u, SAParams(*w), 2.0), (z, *sp))


def test_parameter_names_and_shapes():
    C, T = 12, 4
    Ch = 4  # max(12 // 4, 4)
    m = staa.STAALIF(C, T)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    gc = lambda pre: {  # noqa: E731
        f"{pre}.key.weight": (1, C), f"{pre}.key.bias": (1,), f"{pre}.query.weight": (Ch, C), f"{pre}.query.bias": (Ch,),
        f"{pre}.norm.weight": (Ch,), f"{pre}.norm.bias": (Ch,), f"{pre}.value.weight": (C, Ch), f"{pre}.value.bias": (C,),
    }
    want = {"pos": (T, C), **gc("gc_x"), **gc("gc_h"), "sa.fc1.weight": (Ch, C), "sa.fc1.bias": (Ch,),
            "sa.fc2.weight": (C, Ch), "sa.fc2.bias": (C,)}
    assert shapes == want
    assert staa.STAALIF(64, 4).hidden == 16 and staa.STAALIF(3, 4).hidden == 4
    assert set(staa.STAALIF(C, T, gc=False).state_dict()) == {"pos", "sa.fc1.weight", "sa.fc1.bias", "sa.fc2.weight", "sa.fc2.bias"}
    assert set(staa.STAALIF(C, T, pe=False, sa=False).state_dict()) == set(gc("gc_x")) | set(gc("gc_h"))


def test_half_precision_input_keeps_fp32_state():
    m = make_neuron(4, 3, seed=5, tsrd=0.0)
    x = torch.randn(3, 2, 4, 2, 2) * 2
    out = m(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert m.v.dtype == torch.float32
    want = staa_lif_reference(x.to(torch.bfloat16).reshape(3, 2, 4, 4), m.params())
    assert torch.equal(out.reshape(3, 2, 4, 4), want)


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, staa; print('triton' in sys.modules, 'spikingjelly' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
