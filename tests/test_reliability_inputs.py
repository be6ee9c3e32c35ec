"""Spec: bad values and odd inputs never fail silently (non-finite inputs, empty tensors,
double backward, torch.func transforms, layouts)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import staa


def _layer(step_mode="m", **kw):
    torch.manual_seed(0)
    return staa.STAALIF(8, 3, tsrd=0.0, backend="torch", step_mode=step_mode, **kw)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_value_makes_nan_spikes_in_its_sample_only(bad):
    x = torch.randn(3, 2, 8, 3, 3)
    x[1, 0, 2, 1, 1] = bad
    s = _layer()(x)
    assert s[1, 0].isnan().any(), "the sample that got the bad value must show it"
    assert not s[0].isnan().any(), "steps before the bad value are unaffected"
    assert not s[:, 1].isnan().any(), "other samples are unaffected"
    assert torch.isnan(s.sum()), "a loss over the spikes shows it"


def test_non_finite_values_show_in_single_step_mode_too():
    m = _layer("s")
    x = torch.randn(2, 8, 3, 3)
    x[0, 0, 0, 0] = float("nan")
    assert m(x)[0].isnan().any() and not m(x.nan_to_num(0.0))[1].isnan().any()


def test_check_finite_raises_with_the_count():
    x = torch.randn(3, 2, 8, 3, 3)
    x[0, 0, 0, 0, 0] = float("nan")
    x[2, 1, 3, 2, 2] = float("inf")
    with pytest.raises(ValueError, match=r"check_finite=True.*2 non-finite value"):
        _layer(check_finite=True)(x)
    _layer(check_finite=True)(x.nan_to_num(0.0, 0.0, 0.0))  # finite input passes


@pytest.mark.parametrize("shape", [(3, 0, 8, 3, 3), (3, 2, 8, 0, 3), (3, 2, 8, 3, 0), (3, 0, 8), (0, 2, 8, 3, 3)])
def test_empty_inputs_give_empty_spikes(shape):
    x = torch.randn(shape, requires_grad=True)
    s = _layer()(x)
    assert s.shape == x.shape
    s.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_a_lazy_layer_is_not_sized_by_an_empty_input():
    m = staa.STAALIF()
    for shape, what in (((0, 2, 8, 3, 3), "T=0"), ((2, 2, 0, 3, 3), "0 channels")):
        with pytest.raises(ValueError, match=what):
            m(torch.randn(shape))
        assert m.T is None and m.channels is None and m.has_uninitialized_params()
    assert m(torch.randn(2, 2, 8, 3, 3)).shape == (2, 2, 8, 3, 3) and (m.T, m.channels) == (2, 8)


def test_double_backward_says_what_is_not_supported():
    m = _layer()
    x = torch.randn(3, 2, 8, 3, 3, requires_grad=True)
    (g,) = torch.autograd.grad(m(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"does not support double backward.*staa_lif_reference"):
        torch.autograd.grad(g.sum(), x)


@pytest.mark.parametrize("transform", ["grad", "vmap"])
def test_torch_func_transforms_raise_a_clear_error(transform):
    m = _layer()
    x = torch.randn(3, 2, 8, 3, 3)
    with pytest.raises(RuntimeError, match=r"does not support torch\.func transforms"):
        if transform == "grad":
            torch.func.grad(lambda z: m(z).sum())(x)
        else:
            torch.func.vmap(m)(x.unsqueeze(0).expand(2, *x.shape))


def test_channels_last_input_keeps_its_layout():
    x = torch.randn(2, 8, 4, 4).to(memory_format=torch.channels_last)
    assert _layer("s")(x).is_contiguous(memory_format=torch.channels_last)


def test_backend_for_needs_a_tensor():
    with pytest.raises(TypeError, match="expects a tensor.*got list"):
        staa.backend_for([1, 2])


def test_env_var_triton_on_cpu_names_the_variable(monkeypatch):
    monkeypatch.setenv("STAA_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match=r"backend='triton' cannot run.*STAA_BACKEND=triton"):
        staa.STAALIF(8, 3)(torch.randn(3, 2, 8, 3, 3))


# ---------------------------------------------------------------- edges of issue 40
@pytest.mark.parametrize("kw, shape", [
    (dict(pe=False), (0, 2, 8)),        # S1: eval, pe=False, T=0 used to record T=0
    (dict(T=3), (0, 2, 8)),             # S1: training, T given, channels lazy, T=0
    (dict(pe=False), (3, 0, 8)),        # an empty batch does not size a lazy layer either
    (dict(), (3, 2, 8, 0, 4)),
])
@pytest.mark.parametrize("train", [True, False])
def test_a_lazy_layer_refuses_any_empty_input_and_stays_lazy(kw, shape, train):
    m = staa.STAALIF(**kw).train(train)
    with pytest.raises(ValueError, match=r"cannot size itself from an empty input"):
        m(torch.randn(shape))
    assert m.channels is None and m.T == kw.get("T") and m.has_uninitialized_params()
    assert m(torch.randn(3, 2, 8)).shape == (3, 2, 8) and m.channels == 8


def test_a_failed_first_call_leaves_a_lazy_layer_lazy(monkeypatch):
    m = staa.STAALIF(T=2)
    with pytest.raises(ValueError, match=r"input has T=3 time steps but this STAALIF was built for T=2"):
        m(torch.randn(3, 2, 8))
    assert m.channels is None and m.has_uninitialized_params()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    lazy_triton = staa.STAALIF(backend="triton")
    with pytest.raises(RuntimeError, match=r"backend='triton' cannot run"):
        lazy_triton(torch.randn(3, 2, 8))
    assert lazy_triton.channels is None and lazy_triton.has_uninitialized_params()


def test_T0_in_training_with_tsrd_gives_empty_spikes():  # U1
    m = staa.STAALIF(8, 3, tsrd=0.5, backend="torch").train()
    x = torch.randn(0, 2, 8, 3, 3, requires_grad=True)
    s = m(x)
    assert s.shape == x.shape and m.t == 0
    assert torch.equal(m.v, torch.zeros(2, 8, 3, 3))  # H at rest (v_reset = 0)
    s.sum().backward()
    soft = staa.STAALIF(8, 3, tsrd=0.5, v_reset=0.5, v_threshold=1.0, backend="torch")
    soft(torch.randn(0, 2, 8))
    assert torch.equal(soft.v, torch.full((2, 8), 0.5))  # rest is v_reset


@pytest.mark.parametrize("step_mode, shape", [("m", (3, 2, 8, 4, 4)), ("s", (2, 8, 4, 4)), ("m", (3, 2, 8))])
def test_meta_device_forward_propagates_shapes(step_mode, shape):  # U2
    m = staa.STAALIF(8, 3, step_mode=step_mode, device="meta", check_finite=True)
    x = torch.empty(shape, device="meta")
    s = m(x)
    assert s.is_meta and s.shape == x.shape and s.dtype == x.dtype
    assert m.v.is_meta and m.v.shape == x.shape[-(len(shape) - (step_mode == "m")):]
    lazy = staa.STAALIF(device="meta")
    assert lazy(torch.empty(3, 2, 8, device="meta")).shape == (3, 2, 8) and lazy.pos.shape == (3, 8)


def test_grad_over_functional_call_gets_staas_message():  # U3
    m = _layer()
    params = dict(m.named_parameters())
    x = torch.randn(3, 2, 8, 3, 3)
    with pytest.raises(RuntimeError, match=r"does not support torch\.func transforms.*functional_call under grad"):
        torch.func.grad(lambda p: torch.func.functional_call(m, p, (x,)).sum())(params)
    # functional_call alone is not a transform and runs
    assert torch.equal(torch.func.functional_call(m, params, (x,)), m(x))


def test_a_4d_multi_step_input_hint_leads_to_the_right_layer():  # U8
    m = staa.STAALIF()
    x = torch.randn(3, 2, 8, 5)  # [T, B, C, L] from a Conv1d
    with pytest.raises(ValueError, match=r"got a 4-D tensor.*\[T, B, C, L\].*x\.unsqueeze\(-1\)") as e:
        m(x)
    assert "set step_mode to match the input" not in str(e.value)
    s = m(x.unsqueeze(-1)).squeeze(-1)  # the hint, followed
    assert s.shape == x.shape and m.channels == 8 and m.T == 3
    single = staa.STAALIF(step_mode="s")
    with pytest.raises(ValueError, match=r"got a 3-D tensor.*set step_mode='m'.*\[B, C, L\].*unsqueeze\(-1\)"):
        single(torch.randn(2, 8, 5))


@pytest.mark.parametrize("t0, err, text", [
    (1.0, TypeError, r"t0 must be an int or a 0-d integer tensor.*got 1\.0 \(float\)"),  # U11
    (True, TypeError, r"t0 must be an int"),
    (torch.tensor(1.0), TypeError, r"t0 must be an int or a 0-d integer tensor.*torch\.float32"),
    (torch.tensor([1, 2]), TypeError, r"shape \[2\]"),
    (torch.tensor(5), ValueError, r"single-step call at t=5 but this STAALIF has T=3 steps; call reset\(\)"),  # U5
    (5, ValueError, r"single-step call at t=5 but this STAALIF has T=3 steps; call reset\(\)"),
    (torch.tensor(-1), ValueError, r"t=-1"),
])
def test_functional_t0_is_checked(t0, err, text):
    from staa.functional import staa_lif

    m = _layer()
    with pytest.raises(err, match=text):
        staa_lif(torch.randn(1, 2, 8), m.params(), m.cfg, t0=t0)


def test_functional_numpy_and_tensor_t0_give_the_int_result():
    import numpy as np
    from staa.functional import staa_lif

    m = _layer().double()
    x = torch.randn(1, 2, 8, dtype=torch.float64)
    want = staa_lif(x, m.params(), m.cfg, t0=2)[1]
    for t0 in (np.int64(2), torch.tensor(2), torch.tensor([2], dtype=torch.int32)):
        assert torch.equal(staa_lif(x, m.params(), m.cfg, t0=t0)[1], want)


def test_rows_past_the_end_are_nan_where_the_range_is_not_checked_on_the_host():
    """The GPU rule for a tensor t0 (no host synchronisation), run on the CPU."""
    from staa.ops import _op

    pos = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    rows = _op.rows_at(pos, torch.tensor(2), 2, check_on_host=False)
    assert torch.equal(rows[0], pos[2]) and rows[1].isnan().all()
    rows[0].sum().backward()
    assert torch.equal(pos.grad, torch.tensor([0.0, 0.0, 1.0]).double()[:, None].expand(3, 4))
    with pytest.raises(ValueError, match=r"steps 2\.\.3 need position-encoding rows"):
        _op.rows_at(pos, torch.tensor(2), 2, check_on_host=True)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int32, "float32"])
def test_a_non_floating_dtype_is_rejected(dtype):
    with pytest.raises(TypeError, match=r"dtype must be a floating-point torch\.dtype"):
        staa.STAALIF(8, 3, dtype=dtype)


def test_complex_parameters_are_rejected_at_the_call():
    with pytest.warns(UserWarning, match="Complex modules"):  # torch's own note on complex modules
        m = staa.STAALIF(8, 3).to(torch.complex64)
    with pytest.raises(TypeError, match=r"parameters are torch\.complex64.*real-valued"):
        m(torch.randn(3, 2, 8))
    with pytest.raises(TypeError, match=r"floating-point input, got dtype torch\.complex64"):
        staa.STAALIF(8, 3)(torch.randn(3, 2, 8, dtype=torch.complex64))


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_channels_last_3d_input_gives_the_same_spikes_in_its_layout(step_mode):
    m = _layer(step_mode)
    x = torch.randn(3, 2, 8, 4, 5)
    if step_mode == "m":
        xc = x.contiguous(memory_format=torch.channels_last_3d)
        s = m(xc)
        assert s.is_contiguous(memory_format=torch.channels_last_3d) and torch.equal(s, _layer()(x))
        xg = xc.clone().requires_grad_()
        m(xg).sum().backward()
        assert xg.grad.shape == x.shape
    else:  # single-step takes [B, C, H, W]: a 5-D input is one step too many dims, with a hint
        with pytest.raises(ValueError, match=r"got a 5-D tensor.*set step_mode='m'"):
            m(x.contiguous(memory_format=torch.channels_last_3d))


@settings(max_examples=25, deadline=None)
@given(n_pos=st.integers(1, 4), steps=st.integers(1, 3), t0=st.integers(-2, 5))
def test_int_and_tensor_t0_agree_on_rows_and_errors(n_pos, steps, t0):
    """The functional API's two kinds of step index: the same rows, or the same error."""
    from staa.functional import _pos_rows

    pos = torch.randn(n_pos, 3)
    results = []
    for index in (t0, torch.tensor(t0)):
        try:
            results.append(_pos_rows(pos, index, steps))
        except ValueError as e:
            results.append(str(e))
    a, b = results
    assert (a == b) if isinstance(a, str) else torch.equal(a, b)
    assert isinstance(a, str) == (t0 < 0 or t0 + steps > n_pos)


def test_functional_rejects_a_non_float_input():
    from staa.functional import staa_lif

    m = _layer()
    with pytest.raises(TypeError, match=r"staa_lif expects a floating-point tensor x, got dtype torch\.int64"):
        staa_lif(torch.ones(3, 2, 8, dtype=torch.long), m.params(), m.cfg)
