"""Spec: every setting is validated with a message naming the value and the accepted range."""
import math
import warnings

import numpy as np
import pytest
import torch

import staa

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("kw, err, text", [
    (dict(alpha=NAN), ValueError, r"alpha must be a finite number > 0 \(step attention's pooling scale"),
    (dict(alpha=0.0), ValueError, r"alpha must be a finite number > 0.*got 0"),
    (dict(alpha=-1), ValueError, r"alpha .*surrogate_alpha.*got -1"),
    (dict(v_threshold=NAN), ValueError, r"v_threshold must be a finite number, got nan"),
    (dict(v_threshold=torch.tensor(1.0)), TypeError, r"v_threshold must be a Python number.*float\(value\)"),
    (dict(v_reset=NAN), ValueError, r"v_reset must be a finite number"),
    (dict(surrogate_width=INF), ValueError, r"surrogate_width must be a positive finite number, got inf"),
    (dict(surrogate_width=0.0), ValueError, r"surrogate_width must be a positive finite number, got 0"),
    (dict(surrogate="atan", surrogate_alpha=NAN), ValueError, r"surrogate_alpha must be a positive finite"),
    (dict(surrogate="atan", surrogate_width=1.0), ValueError, r"surrogate_width=1.0 was given with surrogate='atan'"),
    (dict(surrogate_alpha=2.0), ValueError, r"surrogate_alpha=2.0 was given with surrogate='rect'.*not STAALIF's alpha"),
    (dict(surrogate="tanh"), ValueError, r"surrogate must be one of 'rect', 'atan', 'sigmoid', 'fast_sigmoid'"),
    (dict(channels=True), TypeError, r"channels must be an int >= 1 or None, got True"),
    (dict(T=True), TypeError, r"T must be an int >= 1 or None, got True"),
    (dict(r=True), TypeError, r"r must be an int >= 1, got True"),
    (dict(r=0), ValueError, r"r must be an int >= 1, got 0"),
    (dict(channels=2.0), TypeError, r"channels must be an int"),
    (dict(tsrd=None), TypeError, r"tsrd must be a probability in \[0, 1\); use tsrd=0.0"),
    (dict(tsrd=1.0), ValueError, r"tsrd must be a probability in \[0, 1\)"),
    (dict(tsrd=NAN), ValueError, r"tsrd must be a probability"),
    (dict(gc="yes"), TypeError, r"gc must be True or False, got 'yes'"),
    (dict(check_finite=1), TypeError, r"check_finite must be True or False"),
    (dict(sa_init_bias=NAN), ValueError, r"sa_init_bias must be a finite number"),
])
def test_bad_settings_are_rejected_with_the_value(kw, err, text):
    with pytest.raises(err, match=text):
        staa.STAALIF(**{"channels": 8, "T": 2, **kw})


def test_numpy_numbers_are_accepted():
    m = staa.STAALIF(np.int64(8), np.int32(2), r=np.int64(2), alpha=np.float32(2.0), tsrd=np.float64(0.0),
                     gc=np.bool_(True))
    assert (m.channels, m.T, m.r, m.alpha) == (8, 2, 2, 2.0) and type(m.channels) is int


def test_threshold_at_or_below_a_hard_reset_warns_but_builds():
    with pytest.warns(UserWarning, match=r"v_threshold=0 <= v_reset=0.5"):
        m = staa.STAALIF(4, 2, v_threshold=0.0, v_reset=0.5)
    assert m(torch.randn(2, 1, 4)).shape == (2, 1, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        staa.STAALIF(4, 2, v_threshold=0.0, v_reset=None)  # soft reset: no warning


def test_repr_shows_the_surrogate_and_which_alpha_is_which():
    text = repr(staa.STAALIF(4, 2, surrogate="atan", surrogate_alpha=3.0))
    assert "surrogate='atan', surrogate_alpha=3" in text
    assert "surrogate='rect', surrogate_width=1" in repr(staa.STAALIF(4, 2))


# ---------------------------------------------------------------- the functional API's settings (S2, U7)
def _functional_call(cfg):
    from staa.functional import staa_lif

    m = staa.STAALIF(8, 3, tsrd=0.0)
    x = torch.randn(3, 2, 8, requires_grad=True)
    return staa_lif(x, m.params(), cfg)


@pytest.mark.parametrize("kw, err, text", [
    (dict(surrogate=staa.surrogate.Surrogate("rect", -1.0)), ValueError,
     r"NeuronConfig\.surrogate: the 'rect' surrogate's width a must be a positive finite number, got -1\.0"),
    (dict(surrogate=staa.surrogate.Surrogate("atan", 0.0)), ValueError,
     r"'atan' surrogate's sharpness alpha must be a positive finite number, got 0\.0"),
    (dict(surrogate=staa.surrogate.Surrogate("sigmoid", NAN)), ValueError, r"'sigmoid' surrogate's sharpness alpha"),
    (dict(surrogate=staa.surrogate.Surrogate("foo", 1.0)), ValueError,
     r"NeuronConfig\.surrogate: the kind must be one of 'rect', 'atan', 'sigmoid', 'fast_sigmoid', got 'foo'"),
    (dict(surrogate="foo"), ValueError, r"kind must be one of .*got 'foo'"),
    (dict(surrogate=2.0), TypeError, r"NeuronConfig\.surrogate must be a staa\.surrogate\.Surrogate.*got float"),
    (dict(v_threshold=NAN), ValueError, r"NeuronConfig\.v_threshold must be a finite number, got nan"),
    (dict(v_reset=INF), ValueError, r"NeuronConfig\.v_reset must be a finite number \(None: soft reset\)"),
    (dict(alpha=-1.0), ValueError, r"NeuronConfig\.alpha must be a finite number > 0.*got -1\.0"),
    (dict(detach_reset=1), TypeError, r"NeuronConfig\.detach_reset must be True or False"),
])
def test_the_functional_api_validates_its_config_at_the_call(kw, err, text):
    from staa.functional import NeuronConfig

    with pytest.raises(err, match=text):
        _functional_call(NeuronConfig(**kw))


def test_a_config_that_is_not_a_neuron_config_is_rejected():
    with pytest.raises(TypeError, match=r"cfg must be a staa\.functional\.NeuronConfig, got dict"):
        _functional_call({"alpha": 2.0})


@pytest.mark.parametrize("kind", ["rect", "atan", "sigmoid", "fast_sigmoid"])
def test_the_functional_api_takes_a_surrogate_name(kind):  # U7
    from staa.functional import NeuronConfig, staa_lif

    torch.manual_seed(0)
    m = staa.STAALIF(8, 3, tsrd=0.0, surrogate=kind)  # the kind with its default parameter
    x = torch.randn(3, 2, 8, requires_grad=True)
    s, h, _ = staa_lif(x, m.params(), NeuronConfig(surrogate=kind))
    (g,) = torch.autograd.grad(s.sum() + h.sum(), x)
    s2, h2, _ = staa_lif(x, m.params(), m.cfg)
    (g2,) = torch.autograd.grad(s2.sum() + h2.sum(), x)
    assert torch.equal(s, s2) and torch.equal(g, g2)


# ---------------------------------------------------------------- T without a position encoding (U6)
def test_without_pe_T_is_not_enforced_in_either_step_mode():
    m = staa.STAALIF(8, 3, pe=False, tsrd=0.0, backend="torch")
    assert m(torch.randn(5, 2, 8)).shape == (5, 2, 8)
    m.step_mode = "s"  # a single-step call continues the multi-step sequence: no pos[t] to run out of
    assert m(torch.randn(2, 8)).shape == (2, 8) and m.t == 6
    for _ in range(4):
        m(torch.randn(2, 8))
    assert m.t == 10


def test_a_lazy_layer_without_pe_does_not_freeze_T():
    m = staa.STAALIF(pe=False)
    m(torch.randn(2, 2, 8))
    assert m.T is None and m.channels == 8 and "position encoding" not in repr(m)
    assert m(torch.randn(6, 2, 8)).shape == (6, 2, 8) and m.T is None
    with_pe = staa.STAALIF()
    with_pe(torch.randn(2, 2, 8))
    with pytest.raises(ValueError, match=r"input has T=6 time steps but this STAALIF was built for T=2"):
        with_pe(torch.randn(6, 2, 8))


def test_a_lazy_layers_repr_does_not_show_zero_sized_linears():
    text = repr(staa.STAALIF())
    assert "in_features=0" not in text and "(0,)" not in text
    assert "Linear(in_features and out_features set at the first call (lazy))" in text
    assert "Linear(in_features=8, out_features=4, bias=True)" in repr(staa.STAALIF(8, 2))


# ---------------------------------------------------------------- reset_parameters and meta-device init
def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kw", [dict(), dict(sa_init_bias=3.0), dict(gc=False), dict(pe=False, sa=False)])
def test_reset_parameters_redraws_exactly_the_constructors_initialisation(kw):
    torch.manual_seed(7)
    fresh = staa.STAALIF(8, 3, **kw)
    m = staa.STAALIF(8, 3, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-5, 5)
    torch.manual_seed(7)
    m.reset_parameters()
    assert _same_state(m, fresh)
    if m.gc_x is not None:
        assert m.gc_x.value.weight.abs().sum() == 0 and m.gc_h.value.bias.abs().sum() == 0
    if kw.get("sa_init_bias") is not None:
        assert torch.all(m.sa.fc2.bias == 3.0)


def test_every_submodules_reset_parameters_in_any_order_keeps_the_documented_init():
    m = staa.STAALIF(8, 3, sa_init_bias=3.0)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-5, 5)
    m.apply(lambda mod: mod.reset_parameters() if hasattr(mod, "reset_parameters") else None)
    assert m.gc_x.value.weight.abs().sum() == 0 and torch.all(m.sa.fc2.bias == 3.0) and m.pos.abs().sum() == 0
    for mod in m.modules():  # root first, as FSDP's meta-device initialisation goes
        if hasattr(mod, "reset_parameters"):
            mod.reset_parameters()
    assert m.gc_h.value.weight.abs().sum() == 0 and torch.all(m.sa.fc2.bias == 3.0)


def test_meta_device_init_then_to_empty_and_reset_parameters():
    torch.manual_seed(3)
    want = staa.STAALIF(8, 3, sa_init_bias=3.0)
    m = staa.STAALIF(8, 3, sa_init_bias=3.0, device="meta").to_empty(device="cpu")
    torch.manual_seed(3)
    m.reset_parameters()
    assert _same_state(m, want)
    assert m(torch.randn(3, 2, 8)).shape == (3, 2, 8)


def test_reset_parameters_leaves_a_lazy_layer_lazy():
    m = staa.STAALIF()
    m.reset_parameters()
    assert m.has_uninitialized_params() and m(torch.randn(3, 2, 8)).shape == (3, 2, 8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a torch without CUDA")
def test_main_with_device_cuda_on_a_cpu_only_torch_exits_2_with_a_message(capsys):
    from staa.__main__ import main

    assert main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: this torch build has no usable CUDA device" in err and "Traceback" not in err


@pytest.mark.parametrize("with_spikingjelly", [False, True])
def test_fsdp_style_meta_init_module_by_module(with_spikingjelly):
    """FSDP materialises each module that holds parameters, root first: to_empty(recurse=False), then
    that module's reset_parameters(). Also for the spikingjelly-compatible subclass, whose
    MemoryModule base takes no recurse argument."""
    if with_spikingjelly:
        pytest.importorskip("spikingjelly.activation_based.base")
    m = staa.STAALIF(8, 3, sa_init_bias=3.0, device="meta")
    if with_spikingjelly:
        assert type(m).__module__ == "staa._sjcompat"
    for mod in m.modules():
        if any(True for _ in mod.parameters(recurse=False)):
            mod.to_empty(device="cpu", recurse=False)
            mod.reset_parameters()
    assert not any(p.is_meta for p in m.parameters())
    assert m.pos.abs().sum() == 0 and m.gc_x.value.weight.abs().sum() == 0 and torch.all(m.sa.fc2.bias == 3.0)
    assert m(torch.randn(3, 2, 8)).shape == (3, 2, 8)
