"""Spec: bad values and odd inputs never fail silently (non-finite inputs, empty tensors,
double backward, torch.func transforms, layouts)."""
import pytest
import torch

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
