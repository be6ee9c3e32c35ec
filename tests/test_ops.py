"""The fast custom op (staa.ops) against the reference: values, gradients, dtypes, memory, compile."""
import gc
import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import staa
from staa.functional import staa_lif
from staa.ops import _op, flatten_params, staa_lif_op
from staa.reference import STAAParams, global_context, staa_lif_reference, step_attention

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from _memory import saved_tensor_bytes  # noqa: E402  (benchmarks/_memory.py)

from helpers import make_neuron, randomize

SETTINGS = dict(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])


def _case(T, B, C, P, *, gc=True, pe=True, sa=True, soft=False, v_reset=0.0, detach=False, width=1.0, v_th=1.0,
          dtype=torch.float64, seed=0, scale=1.5, drop=None, surrogate=None):
    kind = dict(surrogate_width=width) if surrogate in (None, "rect") else dict(surrogate=surrogate)
    m = make_neuron(C, T, seed=seed, gc=gc, pe=pe, sa=sa, tsrd=0.0, v_reset=None if soft else v_reset,
                    detach_reset=detach, v_threshold=v_th, dtype=dtype, **kind)
    g = torch.Generator().manual_seed(seed + 1)
    x = (torch.randn(T, B, C, P, generator=g, dtype=torch.float64) * scale + 0.5).to(dtype)
    if drop is None:
        drop = torch.zeros(T, dtype=torch.bool)
    return m, x, torch.as_tensor(drop, dtype=torch.bool)


def _weights(m):
    return [p for p in m.parameters()]


def _run(fn, x, m, gout):
    x = x.detach().requires_grad_()
    spikes = fn(x)
    grads = torch.autograd.grad((spikes * gout).sum(), [x] + _weights(m), allow_unused=True)
    return spikes, grads


def _op_fn(m, drop, store=False):
    return lambda x: staa_lif(x, m.params(), m.cfg, drop=drop, store_v_seq=store)[0]


def _op_args(m, x, drop, store=False, h0=None):
    """Arguments of the raw custom op ``staa::lif_forward`` for module ``m``."""
    c = m.cfg
    return (x, drop, h0, *flatten_params(m.params()), c.alpha, c.v_threshold, c.v_reset, c.detach_reset,
            c.surrogate.kind, c.surrogate.param, store, False)


def _ref_fn(m, drop):
    return lambda x: staa_lif_reference(x, m.params(), drop, **m.cfg._asdict())


# ---------------------------------------------------------------- float64: exact
@settings(**SETTINGS)
@given(
    T=st.integers(1, 4), B=st.integers(1, 3), C=st.sampled_from([1, 3, 5, 8]), P=st.sampled_from([1, 4, 9]),
    gc=st.booleans(), pe=st.booleans(), sa=st.booleans(), reset=st.sampled_from(["hard0", "hard-0.3", "soft"]),
    detach=st.booleans(), v_th=st.sampled_from([0.5, 1.0, 1.7]),
    surrogate=st.sampled_from(["rect", "atan", "sigmoid", "fast_sigmoid"]),
    width=st.sampled_from([0.5, 1.0, 2.0]), drop_bits=st.integers(0, 15), seed=st.integers(0, 10_000),
)
def test_float64_matches_reference(T, B, C, P, gc, pe, sa, reset, detach, v_th, surrogate, width, drop_bits, seed):
    """Every block switch, threshold, reset (hard to 0, hard to -0.3, soft), detach_reset,
    surrogate kind and rectangle width; any step dropped, the first included."""
    drop = [bool(drop_bits >> t & 1) for t in range(T)]
    v_reset = {"hard0": 0.0, "hard-0.3": -0.3, "soft": None}[reset]
    m, x, drop = _case(T, B, C, P, gc=gc, pe=pe, sa=sa, soft=v_reset is None, v_reset=v_reset or 0.0, detach=detach,
                       width=width, v_th=v_th, seed=seed, drop=drop, surrogate=surrogate)
    gout = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(seed))

    s_ref, h_ref = staa_lif_reference(x, m.params(), drop, **m.cfg._asdict(), return_states=True)
    s_op, h_last, v_seq = staa_lif(x, m.params(), m.cfg, drop=drop, store_v_seq=True)
    assert s_op.dtype == x.dtype and h_last.dtype == torch.float64
    assert torch.equal(s_op, s_ref)
    torch.testing.assert_close(v_seq, h_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_last, h_ref[-1], rtol=0, atol=1e-12)
    assert not v_seq.requires_grad  # the last state stays differentiable (single-step chains)

    _, g_ref = _run(_ref_fn(m, drop), x, m, gout)
    _, g_op = _run(_op_fn(m, drop), x, m, gout)
    for name, a, b in zip(["x"] + [n for n, _ in m.named_parameters()], g_ref, g_op):
        if a is None:  # the reference never touches this weight (e.g. pos rows of dropped steps)
            a = torch.zeros_like(b)
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10, msg=lambda s: f"grad of {name}: {s}")


def test_every_weight_gets_a_gradient():
    m, x, drop = _case(3, 2, 6, 9, seed=4, drop=[False, True, False])
    _, grads = _run(_op_fn(m, drop), x, m, torch.randn(x.shape, dtype=x.dtype))
    for (name, p), g in zip(m.named_parameters(), grads[1:]):
        assert g is not None and g.shape == p.shape, name
        assert g.abs().sum() > 0, f"{name} got an all-zero gradient"


@pytest.mark.parametrize("blocks", [dict(), dict(sa=False), dict(gc=False)])
@pytest.mark.parametrize("soft", [False, True])
def test_one_position_matches_reference(blocks, soft):
    """With one position (``[T, B, C]`` input, P = 1) the torch route takes its own GC formulas
    (products instead of batched matmuls): spikes and every gradient as the reference's."""
    m, x, drop = _case(4, 5, 7, 1, soft=soft, seed=13, drop=[False, True, False, False], **blocks)
    gout = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    s_ref, g_ref = _run(_ref_fn(m, drop), x, m, gout)
    s_op, g_op = _run(_op_fn(m, drop), x, m, gout)
    assert torch.equal(s_op, s_ref) and 0 < s_op.mean() < 1
    for name, a, b in zip(["x"] + [n for n, _ in m.named_parameters()], g_op, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda s: f"grad of {name}: {s}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("use_h_last", [False, True])
def test_eager_path_equals_the_custom_op(dtype, with_h0, use_h_last):
    """Eager calls go through ``_op.EagerLIF``, compiled ones through the custom op: both run
    the same bodies, so spikes, states and every gradient agree bit for bit."""
    m, x, _ = _case(3, 2, 5, 4, dtype=dtype, seed=4)
    drop = torch.tensor([False, True, False])
    g = torch.Generator().manual_seed(5)
    h0 = torch.randn(2, 5, 4, generator=g, dtype=torch.float64).to(dtype) if with_h0 else None
    gout = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dtype)
    gh = torch.randn(2, 5, 4, generator=g, dtype=torch.float64).to(dtype)

    def run(call):
        xx = x.detach().requires_grad_()
        hh = None if h0 is None else h0.detach().requires_grad_()
        spikes, h_last, v_seq = call(xx, hh)
        loss = (spikes * gout).sum() + ((h_last * gh).sum() if use_h_last else 0)
        wrt = [xx] + ([hh] if hh is not None else []) + _weights(m)
        return (spikes, h_last, v_seq), torch.autograd.grad(loss, wrt, allow_unused=True)

    eager_out, eager_grads = run(lambda xx, hh: staa_lif_op(xx, m.params(), drop, m.cfg, h0=hh, store_v_seq=True))
    op_out, op_grads = run(lambda xx, hh: _op.lif_forward(*_op_args(m, xx, drop, True, hh))[:3])
    assert eager_out[0].grad_fn is not None and "EagerLIF" in type(eager_out[0].grad_fn).__name__
    for a, b in zip(eager_out, op_out):
        assert torch.equal(a, b)
    assert len(eager_grads) == len(op_grads)
    for a, b in zip(eager_grads, op_grads):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b))


def test_eager_path_refuses_double_backward_through_single_steps():
    m = make_neuron(5, 3, seed=2, tsrd=0.0, step_mode="s")
    x = torch.randn(3, 2, 5, 2, 2, requires_grad=True)
    loss = sum(m(x[t]).sum() for t in range(3))
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    assert g.requires_grad
    with pytest.raises(RuntimeError, match=r"does not support double backward"):
        torch.autograd.grad(g.sum(), x)


def test_module_uses_the_op_for_5d_and_3d_inputs():
    for shape in [(3, 2, 5, 4, 4), (3, 2, 5)]:
        m = make_neuron(5, 3, seed=2, tsrd=0.0, dtype=torch.float64, store_v_seq=True)
        x = torch.randn(shape, dtype=torch.float64) * 2
        out = m(x)
        x4 = x.reshape(3, 2, 5, -1)
        want, h = staa_lif_reference(x4, m.params(), None, **m.cfg._asdict(), return_states=True)
        assert out.shape == x.shape and torch.equal(out, want.reshape(x.shape))
        torch.testing.assert_close(m.v_seq, h.reshape(x.shape), rtol=0, atol=1e-12)
        spikes = m(x.detach().requires_grad_())
        assert "EagerLIF" in type(spikes.grad_fn.next_functions[0][0]).__name__


def test_t_larger_pos_and_drop_at_step_zero():
    """pos may be longer than the input; a mask with drop[0] set is handled like any other."""
    m, x, _ = _case(2, 2, 4, 4, seed=9)
    m6 = make_neuron(4, 6, seed=9, tsrd=0.0, dtype=torch.float64)
    for drop in ([True, False], [True, True]):
        drop = torch.tensor(drop)
        want = staa_lif_reference(x, m6.params(), drop, **m6.cfg._asdict())
        got = staa_lif(x, m6.params(), m6.cfg, drop=drop)[0]
        assert torch.equal(got, want)
        gout = torch.randn(x.shape, dtype=x.dtype)
        _, g_ref = _run(_ref_fn(m6, drop), x, m6, gout)
        _, g_op = _run(_op_fn(m6, drop), x, m6, gout)
        for a, b in zip(g_ref, g_op):
            torch.testing.assert_close(b, torch.zeros_like(b) if a is None else a, rtol=1e-10, atol=1e-10)
        assert torch.all(g_op[1][2:] == 0), "rows of pos past T get no gradient"


def test_non_contiguous_input():
    m, x, drop = _case(3, 2, 6, 8, seed=5, drop=[False, True, False])
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, permuted strides
    assert not xt.is_contiguous()
    gout = torch.randn(x.shape, dtype=x.dtype)
    s1, g1 = _run(_op_fn(m, drop), x, m, gout)
    s2, g2 = _run(_op_fn(m, drop), xt, m, gout)
    assert torch.equal(s1, s2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- float32 and below
def _reference_step_v(x_t, h, prm: STAAParams, t, dropped, alpha):
    """V_t of one step from the reference blocks, given the state H_{t-1} (float32)."""
    if dropped:
        return x_t + h
    xt = x_t + prm.pos[t].float()[None, :, None] if prm.pos is not None else x_t
    gx = global_context(xt, prm.gc_x) if prm.gc_x is not None else xt
    gh = global_context(h, prm.gc_h) if prm.gc_h is not None else h
    u = gx + gh
    return step_attention(u, prm.sa, alpha) if prm.sa is not None else u


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("p_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("soft", [False, True])
def test_low_precision_step_by_step(x_dtype, p_dtype, soft):
    """Each step of the op equals the reference's step fed with the op's own previous state.

    Two correct float32 implementations may round V differently; a spike then flips only
    where V is within float32 rounding of the threshold, so that is what is allowed (and the
    flipped element's state is not compared). Everything else is compared at 1e-5.
    """
    T, B, C, P = 4, 3, 12, 16
    m = make_neuron(C, T, seed=21, tsrd=0.0, v_reset=None if soft else 0.0, dtype=p_dtype)
    x = (torch.randn(T, B, C, P, generator=torch.Generator().manual_seed(3)) * 1.5 + 0.5).to(x_dtype)
    drop = torch.tensor([False, False, True, False])
    spikes, h_last, v_seq = staa_lif(x, m.params(), m.cfg, drop=drop, store_v_seq=True)
    assert spikes.dtype == x_dtype and v_seq.dtype == torch.float32 and h_last.dtype == torch.float32
    prm, th = m.params(), m.v_threshold
    h = torch.zeros(B, C, P)
    n_spikes = 0
    for t in range(T):
        v = _reference_step_v(x[t].float(), h, prm, t, bool(drop[t]), m.alpha)
        want = v >= th
        got = spikes[t] > 0
        flipped = got != want
        assert torch.all((v[flipped] - th).abs() < 1e-5 * max(1.0, th)), "a spike differs away from the threshold"
        assert flipped.sum() <= 2
        h_want = v - th * want if soft else torch.where(want, 0.0, v)
        torch.testing.assert_close(v_seq[t][~flipped], h_want[~flipped], rtol=1e-5, atol=1e-5)
        n_spikes += int(want.sum())
        h = v_seq[t]
    assert 0 < n_spikes < spikes.numel(), "the case should both fire and not fire"
    torch.testing.assert_close(h_last, v_seq[-1], rtol=0, atol=0)


def _window_margin(v, th, width):
    """Distance of V to the nearest point where S or its surrogate window changes."""
    return torch.stack([(v - th).abs(), ((v - th).abs() - width / 2).abs()]).min()


@settings(**SETTINGS)
@given(T=st.integers(1, 3), B=st.integers(1, 2), C=st.sampled_from([3, 8]), P=st.sampled_from([1, 16]),
       soft=st.booleans(), detach=st.booleans(), drop_bits=st.integers(0, 7), seed=st.integers(0, 10_000))
def test_float32_gradients_against_float64(T, B, C, P, soft, detach, drop_bits, seed):
    """fp32 op gradients equal the float64 reference's on the same values to fp32 accuracy.

    Cases where some V is within 1e-4 of the threshold or of the surrogate window's edge are
    set aside (hypothesis draws another): there the two precisions may legitimately take
    different branches.
    """
    drop = [bool(drop_bits >> t & 1) for t in range(T)]
    m32, x32, drop = _case(T, B, C, P, soft=soft, detach=detach, seed=seed, dtype=torch.float32, drop=drop)
    m64 = make_neuron(C, T, tsrd=0.0, v_reset=None if soft else 0.0, detach_reset=detach, dtype=torch.float64)
    m64.load_state_dict({k: v.double() for k, v in m32.state_dict().items()})
    x64 = x32.double()
    _, h64 = staa_lif_reference(x64, m64.params(), drop, **m64.cfg._asdict(), return_states=True)
    # V = H where no spike fired (hard reset) / H + v_th S (soft); recover V via the op's u * gate in fp64.
    _, _, _, u, gate, _ = _op.lif_forward(*_op_args(m64, x64, drop))
    assume(float(_window_margin(u * gate[..., None], 1.0, 1.0)) > 1e-4)

    gout = torch.randn(x32.shape, generator=torch.Generator().manual_seed(seed))
    s32, g32 = _run(_op_fn(m32, drop), x32, m32, gout)
    s64, g64 = _run(_ref_fn(m64, drop), x64, m64, gout.double())
    assert torch.equal(s32, s64.float())
    for name, a, b in zip(["x"] + [n for n, _ in m32.named_parameters()], g64, g32):
        a = torch.zeros(b.shape, dtype=torch.float64) if a is None else a
        assert b.dtype == torch.float32
        scale = float(a.abs().max()) + 1.0
        torch.testing.assert_close(b.double(), a, rtol=1e-4, atol=1e-5 * scale, msg=lambda s: f"grad of {name}: {s}")


def test_bf16_module_gets_bf16_gradients():
    m = make_neuron(8, 3, seed=1, tsrd=0.0, dtype=torch.bfloat16)
    m32 = make_neuron(8, 3, tsrd=0.0)
    m32.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    x = torch.randn(3, 2, 8, 16).bfloat16()
    gout = torch.randn(x.shape).bfloat16()
    drop = torch.zeros(3, dtype=torch.bool)
    s, grads = _run(_op_fn(m, drop), x, m, gout)
    s32, grads32 = _run(_op_fn(m32, drop), x.float(), m32, gout.float())
    assert s.dtype == torch.bfloat16 and torch.equal(s.float(), s32)
    for (name, p), g, g32 in zip(m.named_parameters(), grads[1:], grads32[1:]):
        assert g.dtype == torch.bfloat16, name
        # the same fp32 computation, rounded once to bf16 at the end
        torch.testing.assert_close(g, g32.bfloat16(), rtol=0, atol=0, msg=lambda s: f"{name}: {s}")
    assert grads[0].dtype == torch.bfloat16


def test_autocast_is_neutral():
    """Under autocast the op computes as without it: fp32 math, spikes in the input's dtype."""
    m, x, drop = _case(3, 2, 8, 16, dtype=torch.float32, seed=3)
    gout = torch.randn(x.shape)
    s1, g1 = _run(_op_fn(m, drop), x, m, gout)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s2, g2 = _run(_op_fn(m, drop), x, m, gout)
    assert s2.dtype == torch.float32 and torch.equal(s1, s2)
    for a, b in zip(g1, g2):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------- registration and memory
def test_opcheck():
    m, x, _ = _case(2, 2, 5, 4, seed=2, dtype=torch.float32)
    drop = torch.tensor([False, True])
    args = _op_args(m, x.requires_grad_(), drop, store=True)
    torch.library.opcheck(torch.ops.staa.lif_forward.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_saved_memory_per_neuron_step():
    T, B, C, P = 4, 2, 16, 64
    m = make_neuron(C, T, seed=0, tsrd=0.0)
    x = torch.randn(T, B, C, P, requires_grad=True)
    drop = torch.zeros(T, dtype=torch.bool)
    spikes, nbytes = saved_tensor_bytes(_op_fn(m, drop), x, exclude=list(m.parameters()))
    per = nbytes / (T * B * C * P)
    # x (4 bytes) + u (4 bytes) + the [T, B, C] gate and the bool mask
    assert per <= 8 + 4 / P + 1e-3, per
    _, ref_bytes = saved_tensor_bytes(_ref_fn(m, drop), x, exclude=list(m.parameters()))
    assert ref_bytes > 2 * nbytes

    # Nothing but save_for_backward holds tensors: the node's attributes carry only scalars.
    node = spikes.grad_fn
    while "EagerLIF" not in type(node).__name__:  # past the reshape views
        node = node.next_functions[0][0]
    assert not any(isinstance(v, torch.Tensor) for v in vars(node).values())
    saved = [t for t in node.saved_tensors if t is not None]  # h0 is None from rest
    big = [t for t in saved if t.numel() >= T * B * C * P]
    assert len(big) == 2 and {t.dtype for t in big} == {torch.float32}


def test_no_tensors_left_alive_beside_the_saved_ones():
    """After forward, every tensor still alive (besides inputs, weights and spikes) is one
    autograd saved for backward: no cache, no ctx attribute, no leaked intermediate."""
    T, B, C, P = 3, 2, 8, 16
    m = make_neuron(C, T, seed=0, tsrd=0.0)
    x = torch.randn(T, B, C, P, requires_grad=True)
    gc.collect()
    before = {id(o) for o in gc.get_objects() if isinstance(o, torch.Tensor)}
    spikes = _op_fn(m, torch.zeros(T, dtype=torch.bool))(x)
    gc.collect()
    new = [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and id(o) not in before and o is not spikes]
    node = spikes.grad_fn
    while "EagerLIF" not in type(node).__name__:  # past the reshape views
        node = node.next_functions[0][0]
    saved = {t.untyped_storage().data_ptr() for t in node.saved_tensors if t is not None}
    saved.add(spikes.untyped_storage().data_ptr())  # the op's output behind the returned view
    weights = {w.untyped_storage().data_ptr() for w in m.parameters()}  # views of weights (pos rows) are not new memory
    stray = [tuple(o.shape) for o in new if o.untyped_storage().data_ptr() not in saved | weights]
    assert not stray, stray
    storages = {o.untyped_storage().data_ptr(): o.untyped_storage().nbytes() for o in new}
    for ptr in weights | {spikes.untyped_storage().data_ptr()}:
        storages.pop(ptr, None)
    assert sum(storages.values()) <= (8 + 4 / P) * T * B * C * P + 64, storages
    spikes.sum().backward()


# ---------------------------------------------------------------- torch.compile
class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(2, 6, 3, padding=1)
        self.lif1 = staa.STAALIF(6, 3, tsrd=0.5, backend="torch")
        self.conv2 = torch.nn.Conv2d(6, 6, 3, padding=1)
        self.lif2 = staa.STAALIF(6, 3, v_reset=None, detach_reset=True, backend="torch")

    def forward(self, x):
        T, B = x.shape[:2]
        y = self.lif1(self.conv1(x.flatten(0, 1)).unflatten(0, (T, B)))
        return self.lif2(self.conv2(y.flatten(0, 1)).unflatten(0, (T, B)))


def test_compile_fullgraph_train_and_eval():
    """fullgraph=True fails on any graph break; one frame per mode, gradients as in eager."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    net = randomize(_Net(), seed=4)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(net, fullgraph=True, backend=counter)
    x = torch.randn(3, 2, 2, 5, 5)
    for train in (True, False):
        net.train(train)
        torch.manual_seed(0)
        got = compiled(x)
        torch.manual_seed(0)
        want = net(x)
        assert torch.equal(got, want)
        if train:
            gx = torch.autograd.grad(got.sum(), list(net.parameters()))
            gw = torch.autograd.grad(want.sum(), list(net.parameters()))
            for a, b in zip(gx, gw):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert counter.frame_count == 2
    graph_ops = [str(n.target) for g in counter.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert sum("lif_forward" in op for op in graph_ops) == 4
