"""Spec: convert and profile validate their options and inputs and say what is wrong."""
import pytest
import torch

import staa


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.lif = staa.STAALIF(8, 2, tsrd=0.0)

    def forward(self, x):
        T, B = x.shape[:2]
        return self.lif(self.conv(x.flatten(0, 1)).unflatten(0, (T, B)))


@pytest.mark.parametrize("kw, err, text", [
    (dict(batch_size=2.5), TypeError, r"batch_size must be an int >= 1 or None, got 2.5"),
    (dict(batch_size=True), TypeError, r"batch_size must be an int >= 1 or None, got True"),
    (dict(batch_size=0), ValueError, r"batch_size must be an int >= 1"),
    (dict(e_ac=-1.0), ValueError, r"e_ac must be a finite energy in joules >= 0"),
    (dict(e_mac=float("nan")), ValueError, r"e_mac must be a finite energy"),
])
def test_profile_options_are_validated(kw, err, text):
    with pytest.raises(err, match=text):
        staa.profile(_Net(), torch.randn(2, 1, 3, 8, 8), **kw)


def test_profile_takes_keyword_inputs_like_convert():
    net = _Net()
    x = torch.randn(2, 1, 3, 8, 8)
    assert staa.profile(net, {"x": x}).to_list() == staa.profile(net, x).to_list()


def test_profile_rejects_empty_and_unknown_inputs():
    with pytest.raises(ValueError, match=r"empty tensor \(shape \[2, 0, 3, 8, 8\]\)"):
        staa.profile(_Net(), torch.randn(2, 0, 3, 8, 8))
    with pytest.raises(TypeError, match="example_input must be a tensor.*got int"):
        staa.profile(_Net(), 3)


def test_convert_validates_pattern_values():
    with pytest.raises(TypeError, match=r"include must be a module-name pattern.* got 3"):
        staa.convert(_Net(), include=3)


# ---------------------------------------------------------------------------------- edges of convert
from conftest import requires_spikingjelly  # noqa: E402


@requires_spikingjelly
def test_single_step_node_registered_at_two_places_is_refused():
    from spikingjelly.activation_based import neuron

    node = neuron.IFNode(step_mode="s")
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), node, torch.nn.Conv2d(4, 4, 3), node)
    with pytest.raises(ValueError, match=r"single-step node '1' is registered at 2 places \('1', '3'\).*"
                                         r"copy\.deepcopy.*pe=False"):
        staa.convert(net, torch.rand(2, 2, 8, 8), T=4)
    assert net[1] is node  # nothing changed
    staa.convert(net, torch.rand(2, 2, 8, 8), T=4, pe=False)  # without a position encoding sharing is fine
    assert net[1] is net[3] and isinstance(net[1], staa.STAALIF)


@requires_spikingjelly
def test_surrogate_subclass_and_bad_alpha():
    from spikingjelly.activation_based import neuron, surrogate

    class MyATan(surrogate.ATan):
        pass

    net = torch.nn.Sequential(neuron.IFNode(surrogate_function=MyATan(alpha=3.0), step_mode="m"))
    report = staa.convert(net, T=2, linear="convert", dry_run=True)
    assert report.replaced[0].surrogate == "surrogate='atan', surrogate_alpha=3"
    assert any("is a subclass of ATan" in d for d in report.replaced[0].dropped)
    bad = torch.nn.Sequential(neuron.IFNode(surrogate_function=surrogate.ATan(alpha=-1.0), step_mode="m"))
    with pytest.raises(ValueError, match=r"node '0' has surrogate_function=ATan\(alpha=-1.0.*not a finite number > 0"):
        staa.convert(bad, T=2, linear="convert")
    staa.convert(bad, T=2, linear="convert", surrogate_alpha=4.0)  # the options replace it: fine
    assert tuple(bad[0].surrogate) == ("atan", 4.0)


@requires_spikingjelly
def test_dropout_between_norm_and_node_is_looked_through():
    from spikingjelly.activation_based import layer, neuron

    def net(drop):
        return torch.nn.Sequential(layer.Conv2d(2, 4, 3, step_mode="m"), layer.BatchNorm2d(4, step_mode="m"), drop,
                                   neuron.IFNode(step_mode="m"))

    for drop in (layer.Dropout(0.5, step_mode="m"), torch.nn.Dropout(0.3), torch.nn.Identity()):
        m = staa.convert(net(drop), torch.rand(2, 2, 2, 6, 6))
        assert m[3].sa.init_bias is None, type(drop)  # after a norm: step attention's default initialisation
    m = staa.convert(net(layer.MaxPool2d(2, step_mode="m")), torch.rand(2, 2, 2, 6, 6))
    assert m[3].sa.init_bias == 3.0  # pooling changes the values: not "after a norm"
    # judged by type and identity, not values: a BatchNorm given zeros (it returns zeros) is still a norm
    zeros = torch.nn.Sequential(layer.Conv2d(2, 4, 3, bias=False, step_mode="m"), layer.BatchNorm2d(4, step_mode="m"),
                                neuron.IFNode(step_mode="m"))
    assert staa.convert(zeros, torch.zeros(2, 2, 2, 6, 6))[2].sa.init_bias is None


@requires_spikingjelly
def test_convert_takes_numpy_integer_T():
    import numpy as np
    from spikingjelly.activation_based import neuron

    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), neuron.IFNode(step_mode="s"))
    staa.convert(net, torch.rand(2, 2, 6, 6), T=np.int64(5))
    assert net[1].T == 5 and type(net[1].T) is int
    for bad in (True, 2.0, 0, torch.tensor(3)):
        with pytest.raises(ValueError, match="T must be a positive int"):
            staa.convert(torch.nn.Sequential(torch.nn.Linear(2, 2)), T=bad)
