"""A toy adapter for a made-up neuron class, written from docs/convert.md ("Writing an adapter") alone:
convert's core converts it and profile recognises and resets it through it."""
import sys

import pytest
import torch
from torch import nn

import staa
import staa._convert as conv
from staa._convert import Adapter, NeuronKind
from staa._convert._core import run


SEEN_CALLS = []  # ToyNeuron.calls at each forward


class ToyNeuron(nn.Module):
    """A made-up multi-step neuron: spikes where the running sum of its input crosses ``thresh``."""

    def __init__(self, thresh=1.0):
        super().__init__()
        self.thresh = thresh
        self.calls = 0

    def forward(self, x):  # [T, B, C, ...]
        SEEN_CALLS.append(self.calls)
        self.calls += 1
        return (x.cumsum(0) >= self.thresh).float()


class ToyLeaky(ToyNeuron):
    """Another neuron model of the toy framework, which convert leaves alone."""


class ToyAdapter(Adapter):
    name = "toy"
    noun = "toy neuron"
    plural = "toy neurons"

    def loaded(self):
        return __name__ in sys.modules

    def is_neuron(self, module):
        return isinstance(module, ToyNeuron)

    def convertible(self, module):
        if type(module) is ToyNeuron:
            return NeuronKind("toy.ToyNeuron", "if", "m")
        if isinstance(module, ToyNeuron):
            return "a leaky toy neuron: a different model"
        return None

    def settings(self, node, kind, name, options):
        settings = dict(v_threshold=float(node.thresh), v_reset=None, detach_reset=False, surrogate="atan",
                        surrogate_width=None, surrogate_alpha=2.0, step_mode="m", store_v_seq=False)
        return settings, ["the toy's cumulative sum"], None

    def reset(self, model):
        for m in model.modules():
            if isinstance(m, ToyNeuron):
                m.calls = 0

    def step_mode(self, module):
        return "m"


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), ToyNeuron(0.5), nn.Conv2d(4, 4, 3, padding=1),
                         ToyLeaky(2.0))


class _Seq(nn.Module):
    """[T, B, C, H, W] through a per-step module list."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        T, B = x.shape[:2]
        h = self.net[0](x.flatten(0, 1)).unflatten(0, (T, B))
        h = self.net[1](h)
        h = self.net[2](h.flatten(0, 1)).unflatten(0, (T, B))
        return self.net[3](h)


def test_toy_adapter_converts_through_the_core():
    model = _Seq(_model())
    x = torch.rand(3, 2, 2, 5, 5)
    out = run(ToyAdapter(), model, x, None, None, None, "keep", False, {"tsrd": 0.0})
    assert out is model and isinstance(model.net[1], staa.STAALIF)
    assert (model.net[1].channels, model.net[1].T, model.net[1].v_threshold) == (4, 3, 0.5)
    assert type(model.net[3]) is ToyLeaky  # the other toy model stays
    report = model.staa_report
    assert [(r.name, r.old_class, r.step_mode) for r in report.replaced] == [("net.1", "toy.ToyNeuron", "m")]
    assert "the toy's cumulative sum" in report.replaced[0].dropped
    assert [(s.name, s.reason) for s in report.skipped] == [("net.3", "a leaky toy neuron: a different model")]
    assert model(x).shape == (3, 2, 4, 5, 5)


def test_toy_adapter_words_its_messages():
    model = nn.Sequential(ToyNeuron())
    with pytest.raises(TypeError, match="sets channels"):
        run(ToyAdapter(), model, None, None, None, None, "keep", False, {"channels": 3})
    with pytest.warns(UserWarning, match="which toy neurons receive"):
        run(ToyAdapter(), model, None, None, None, None, "keep", True, {})


def test_profile_sees_and_resets_toy_neurons(monkeypatch):
    monkeypatch.setattr(conv, "ADAPTERS", (ToyAdapter(),) + conv.ADAPTERS)
    model = _Seq(_model())
    model.net[1].calls = 7
    SEEN_CALLS.clear()
    report = staa.profile(model, torch.rand(3, 2, 2, 5, 5))
    assert SEEN_CALLS == [0, 0]  # the adapter's reset ran before the forward (both toy neurons)
    spiking = {r.name: r for r in report.spiking_rows}
    assert set(spiking) == {"net.1", "net.3"}
    assert len(spiking["net.1"].firing_rate_per_step) == 3  # multi-step, as the adapter says
    assert model.net[1].calls == 7  # reset for the count, then put back
