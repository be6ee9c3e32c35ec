"""Checks of staa.convert against the real spikingjelly 0.0.0.0.14 release.

Run by tests/test_convert_sj0014.py in a subprocess whose PYTHONPATH starts with the
unpacked 0.0.0.0.14 wheel (that release and spikingjelly 2.0 cannot share a process).
Usage: ``python sj0014_check.py legacy|activation``. Exits non-zero on the first failed check.

- ``legacy``: only ``spikingjelly.clock_driven`` is imported, as in code written for the old API.
- ``activation``: ``spikingjelly.activation_based`` of the same release.
"""
from __future__ import annotations

import logging
import sys
import warnings

import torch
from torch import nn

import staa


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _quiet(fn):
    """Run fn; fail if it logs a warning or raises a Python warning."""
    handler = _Records()
    logging.getLogger().addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = fn()
    finally:
        logging.getLogger().removeHandler(handler)
    assert not handler.messages, handler.messages
    assert not caught, [str(w.message) for w in caught]
    return out


def _check_release():
    import importlib.metadata

    import spikingjelly

    version = importlib.metadata.version("spikingjelly")
    assert version == "0.0.0.0.14", f"expected spikingjelly 0.0.0.0.14 first on the path, got {version} at {spikingjelly.__file__}"


def _train_step(net, x, reset):
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    reset(net)
    out = net(x)
    out.float().pow(2).mean().backward()
    grads = [p.grad for p in net.parameters() if any(p is q for m in net.modules() if isinstance(m, staa.STAALIF) for q in m.parameters())]
    assert grads and all(g is not None for g in grads), "STAALIF parameters got no gradient"
    opt.step()


def _eval_twice(net, x, reset, steps=None):
    net.eval()
    outs = []
    for _ in range(2):
        reset(net)
        if steps is None:
            outs.append(net(x))
        else:
            outs.append(torch.stack([net(x[t]) for t in range(steps)]))
    assert torch.equal(outs[0], outs[1]), "two eval forwards after reset_net differ"
    return outs[0]


def legacy():
    _check_release()
    from spikingjelly.clock_driven import functional, layer, neuron

    assert "spikingjelly.activation_based.base" not in sys.modules
    torch.manual_seed(0)
    # Multi-step classes, as in the clock_driven examples: [T, B, ...] through SeqToANNContainer.
    net = nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6)),
        neuron.MultiStepLIFNode(tau=4.0, detach_reset=True),
        layer.SeqToANNContainer(nn.Conv2d(6, 8, 3, padding=1)),
        neuron.MultiStepParametricLIFNode(init_tau=3.0, v_reset=None),
        layer.SeqToANNContainer(nn.Flatten(), nn.Linear(8 * 16, 5)),
        neuron.MultiStepIFNode(v_threshold=0.5),
    )
    x = torch.randn(3, 2, 2, 4, 4) * 2
    staa.convert(net, x, linear="convert")  # the IF node after Linear too (kept by default)
    rep = net.staa_report
    got = [(r.name, r.old_class, r.channels, r.T, r.step_mode) for r in rep.replaced]
    assert got == [
        ("1", "spikingjelly.clock_driven.neuron.MultiStepLIFNode", 6, 3, "m"),
        ("3", "spikingjelly.clock_driven.neuron.MultiStepParametricLIFNode", 8, 3, "m"),
        ("5", "spikingjelly.clock_driven.neuron.MultiStepIFNode", 5, 3, "m"),
    ], got
    assert any("tau=4" in d for d in rep.replaced[0].dropped), rep.replaced[0].dropped
    assert any("learnable tau (was 3)" in d for d in rep.replaced[1].dropped), rep.replaced[1].dropped
    # 0.0.0.0.14's default surrogate, Sigmoid(alpha=4), is carried
    assert all("sigmoid" in r.surrogate for r in rep.replaced), [r.surrogate for r in rep.replaced]
    lif, plif, if_ = net[1], net[3], net[5]
    assert all(type(m) is staa.STAALIF for m in (lif, plif, if_)), [type(m) for m in (lif, plif, if_)]
    assert lif.detach_reset and lif.v_reset == 0.0 and plif.v_reset is None and if_.v_threshold == 0.5
    assert all(m.surrogate == ("sigmoid", 4.0) for m in (lif, plif, if_)), [m.surrogate for m in (lif, plif, if_)]
    _quiet(lambda: _train_step(net, x, functional.reset_net))
    _quiet(lambda: _eval_twice(net, x, functional.reset_net))

    # Single-step classes: one [B, ...] step per call, T from the caller.
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), neuron.LIFNode(), nn.Flatten(), nn.Linear(4 * 16, 6),
        neuron.ParametricLIFNode(), nn.Linear(6, 3), neuron.IFNode(v_reset=None),
    )
    staa.convert(net, x[0], T=3, linear="convert")
    got = [(r.old_class.rsplit(".", 1)[-1], r.channels, r.T, r.step_mode) for r in net.staa_report.replaced]
    assert got == [("LIFNode", 4, 3, "s"), ("ParametricLIFNode", 6, 3, "s"), ("IFNode", 3, 3, "s")], got
    seq = torch.stack([net(x[t]) for t in range(3)])
    assert seq.shape == (3, 2, 3)
    _quiet(lambda: _eval_twice(net, x, functional.reset_net, steps=3))
    print("legacy ok")


def activation():
    _check_release()
    from spikingjelly.activation_based import base, functional, layer, neuron

    torch.manual_seed(0)
    net = nn.Sequential(
        layer.Conv2d(2, 6, 3, padding=1), layer.BatchNorm2d(6), neuron.LIFNode(tau=2.5),
        layer.MaxPool2d(2), layer.Flatten(), layer.Linear(6 * 4, 5), neuron.ParametricLIFNode(),
        layer.Linear(5, 3), neuron.IFNode(v_reset=None),
    )
    functional.set_step_mode(net, "m")
    x = torch.randn(3, 2, 2, 4, 4) * 2
    staa.convert(net, x, linear="convert")
    got = [(r.old_class, r.channels, r.T, r.step_mode) for r in net.staa_report.replaced]
    assert got == [
        ("spikingjelly.activation_based.neuron.LIFNode", 6, 3, "m"),
        ("spikingjelly.activation_based.neuron.ParametricLIFNode", 5, 3, "m"),
        ("spikingjelly.activation_based.neuron.IFNode", 3, 3, "m"),
    ], got
    nodes = [net[2], net[6], net[8]]
    assert all(isinstance(m, staa.STAALIF) and isinstance(m, base.MemoryModule) for m in nodes), [type(m) for m in nodes]
    assert nodes[2].v_reset is None
    _quiet(lambda: _train_step(net, x, functional.reset_net))
    multi = _quiet(lambda: _eval_twice(net, x, functional.reset_net))
    _quiet(lambda: functional.set_step_mode(net, "s"))
    assert all(m.step_mode == "s" for m in nodes)
    single = _quiet(lambda: _eval_twice(net, x, functional.reset_net, steps=3))
    assert torch.equal(multi, single), "single-step run differs from the multi-step run"
    _quiet(lambda: functional.detach_net(net))
    print("activation ok")


if __name__ == "__main__":
    {"legacy": legacy, "activation": activation}[sys.argv[1]]()
