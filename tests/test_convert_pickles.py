"""Converted models pickled by an earlier staa (tests/fixtures/converted_models.pt, written by
tests/fixtures/make_pickles.py) load again and give the outputs saved with them."""
import os

import pytest
import torch

from conftest import requires_snntorch, requires_spikingjelly

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "converted_models.pt")


def _load():
    return torch.load(FIXTURE, weights_only=False)


@requires_spikingjelly
@requires_snntorch
def test_pickled_spikingjelly_model_loads_and_runs_as_saved():
    import spikingjelly.activation_based.neuron  # noqa: F401  (the pickled class is spikingjelly-aware)
    from spikingjelly.activation_based import functional

    import staa

    net, x, expected = _load()["spikingjelly"]
    assert type(net[2]).__module__ == "staa._sjcompat" and isinstance(net[2], staa.STAALIF)
    assert isinstance(net.staa_report, staa.ConvertReport) and len(net.staa_report) == 2
    functional.reset_net(net)
    with torch.no_grad():
        out = torch.stack([net(x) for _ in range(expected.shape[0])])
    assert torch.equal(out, expected)


@requires_spikingjelly
@requires_snntorch
def test_pickled_snntorch_model_loads_and_runs_as_saved():
    import snntorch  # noqa: F401
    from snntorch import utils

    net, x, expected = _load()["snntorch"]
    assert type(net[1]).__name__ == "STAALeaky" and isinstance(net[1], snntorch.Leaky)
    utils.reset(net)
    with torch.no_grad():
        out = torch.stack([net(x)[0] for _ in range(expected.shape[0])])
    assert torch.equal(out, expected)
    assert expected.sum() > 0  # the saved run spikes: the comparison says something


@pytest.mark.parametrize("path", ["staa._sjcompat:STAALIF", "staa._snntorch:STAALeaky",
                                  "staa._convert:ConvertReport", "staa._convert:ReplacedNode",
                                  "staa._convert:SkippedNode", "staa._convert:FlatNode"])
@requires_spikingjelly
@requires_snntorch
def test_pickled_class_paths_stay_importable(path):
    import importlib

    import snntorch  # noqa: F401
    import spikingjelly.activation_based.neuron  # noqa: F401

    module, name = path.split(":")
    assert isinstance(getattr(importlib.import_module(module), name), type)
