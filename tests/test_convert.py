"""staa.convert on networks built from spikingjelly 2.x layers and neurons, and its zoo."""
import copy
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import staa

from conftest import requires_spikingjelly

pytestmark = requires_spikingjelly

T = 3


@pytest.fixture
def sj():
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    return type("SJ", (), dict(functional=functional, layer=layer, neuron=neuron, surrogate=surrogate))


@pytest.fixture
def quiet():
    """Fails the test if spikingjelly logs a warning (its loguru logger is enabled for the test)
    or a Python warning is raised."""
    from spikingjelly.logger import logger

    messages = []
    logger.enable("spikingjelly")
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    logger.remove(sink)
    logger.disable("spikingjelly")
    assert not messages, messages
    assert not caught, [f"{w.filename}:{w.lineno}: {w.message}" for w in caught]


def _x(seed=0, B=2):
    return torch.randn(T, B, 2, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2


def _net(sj, cls, step_mode="m", seed=0, **kw):
    from convert_helpers import conv_net

    torch.manual_seed(seed)
    return conv_net(cls, step_mode, **kw)


def _run(net, x, step_mode):
    if step_mode == "m":
        return net(x)
    return torch.stack([net(x[t]) for t in range(x.shape[0])])


def _staa_nodes(net):
    return [m for m in net.modules() if isinstance(m, staa.STAALIF)]


def _randomize(net, seed=1):
    """Random values for every parameter (STAALIF's value layers start at zero), large
    enough that every layer spikes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


# ---------------------------------------------------------------------------------- 2.x networks
@pytest.mark.parametrize("name", ["LIFNode", "ParametricLIFNode", "IFNode"])
@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_converted_network_trains_resets_and_switches_step_mode(sj, quiet, name, step_mode):
    cls = getattr(sj.neuron, name)
    net = _net(sj, cls, step_mode)
    x = _x()
    example = x if step_mode == "m" else x[0]
    out = staa.convert(net, example, T=T)
    assert out is net
    nodes = _staa_nodes(net)
    assert [(m.channels, m.T, m.step_mode) for m in nodes] == [(6, T, step_mode), (8, T, step_mode), (5, T, step_mode)]
    assert not any(isinstance(m, cls) for m in net.modules())
    from spikingjelly.activation_based import base

    assert all(isinstance(m, base.MemoryModule) for m in nodes)
    _randomize(net)

    # forward and backward
    sj.functional.reset_net(net)
    y = _run(net, x, step_mode)
    assert y.shape == (T, 2, 5)
    y.mean().backward()
    assert all(p.grad is not None for m in nodes for p in m.parameters())

    # reset_net, then two eval forwards agree
    net.eval()
    outs = []
    for _ in range(2):
        sj.functional.reset_net(net)
        outs.append(_run(net, x, step_mode))
    assert torch.equal(outs[0], outs[1])
    assert 0 < outs[0].mean() < 1  # not a comparison of two constant outputs

    # set_step_mode reaches the new nodes; the other step mode gives the same spikes
    other = "s" if step_mode == "m" else "m"
    sj.functional.set_step_mode(net, other)
    assert all(m.step_mode == other for m in nodes)
    sj.functional.reset_net(net)
    assert torch.equal(_run(net, x, other), outs[0])
    sj.functional.detach_net(net)


def test_settings_are_carried_over(sj):
    rect = sj.surrogate.Rect(alpha=4.0)
    net = nn.Sequential(
        sj.layer.Conv2d(2, 3, 1, step_mode="m"),
        sj.neuron.LIFNode(v_threshold=0.7, v_reset=None, detach_reset=True, surrogate_function=rect, step_mode="m",
                          store_v_seq=True),
        sj.neuron.IFNode(v_threshold=1.5, v_reset=-0.5, step_mode="m"),
    ).double()
    net[2].eval()
    staa.convert(net, _x().double(), tsrd=0.2, r=2)
    lif, if_ = net[1], net[2]
    assert (lif.v_threshold, lif.v_reset, lif.detach_reset, lif.surrogate_width) == (0.7, None, True, 0.25)
    assert (if_.v_threshold, if_.v_reset, if_.detach_reset, if_.surrogate_width) == (1.5, -0.5, False, 1.0)
    assert lif.store_v_seq and not if_.store_v_seq
    assert (lif.tsrd, lif.r) == (0.2, 2)
    assert lif.training and not if_.training
    assert all(p.dtype == torch.float64 for m in (lif, if_) for p in m.parameters())
    dropped = dict((r.name, r.dropped) for r in net.staa_report.replaced)
    assert not any("surrogate" in d for d in dropped["1"])  # Rect carried as a width
    assert any(d.startswith("surrogate_function=Sigmoid") for d in dropped["2"])


def test_options_override_carried_settings_and_are_reported(sj):
    net = _net(sj, sj.neuron.LIFNode)
    staa.convert(net, _x(), v_threshold=0.5, gc=False)
    assert all(m.v_threshold == 0.5 and m.gc_x is None for m in _staa_nodes(net))
    assert any("overridden" in d for d in net.staa_report.replaced[0].dropped)


def test_forward_hooks_move_to_the_new_node(sj):
    net = _net(sj, sj.neuron.LIFNode)
    calls = []
    handle = net[2].register_forward_hook(lambda m, i, o: calls.append((type(m), o.shape)))
    pre = net[2].register_forward_pre_hook(lambda m, i: calls.append("pre"))
    staa.convert(net)
    net(_x())
    assert calls == ["pre", (type(net[2]), torch.Size([T, 2, 6, 4, 4]))]
    assert isinstance(net[2], staa.STAALIF)
    handle.remove()
    pre.remove()
    net(_x())
    assert len(calls) == 2


def test_report_table_dropped_settings_and_skipped_neurons(sj):
    net = nn.Sequential(
        sj.layer.Linear(4, 4), sj.neuron.LIFNode(tau=3.0, decay_input=False, step_mode="m"),
        sj.layer.Linear(4, 4), sj.neuron.ParametricLIFNode(init_tau=5.0, step_mode="m"),
        sj.layer.Linear(4, 4), sj.neuron.ILIFNode(step_mode="m"), sj.neuron.LIAFNode(act=nn.Identity(), threshold_related=False, step_mode="m"),
        sj.neuron.IzhikevichNode(step_mode="m"),
    )
    report = staa.convert(net, torch.randn(T, 2, 4), dry_run=True)
    assert [(r.name, r.old_class.rsplit(".", 1)[1], r.channels, r.T) for r in report.replaced] == [
        ("1", "LIFNode", 4, T), ("3", "ParametricLIFNode", 4, T),
    ]
    assert report.replaced[0].dropped[:2] == ("tau=3", "decay_input=False")
    assert report.replaced[1].dropped[0] == "learnable tau (was 5)"
    skipped = {s.name: s.reason for s in report.skipped}
    assert set(skipped) == {"5", "6", "7"}
    assert "different neuron model" in skipped["5"] and "different neuron model" in skipped["6"]
    assert skipped["7"] == "not a LIF, PLIF or IF node"
    text = str(report)
    assert text.splitlines()[0] == "staa.convert: would replace 2 node(s) with STAALIF, skipped 3"
    assert "tau=3, decay_input=False" in text and "ILIFNode" in text and "IzhikevichNode" in text


def test_dry_run_leaves_the_model_alone(sj):
    net = _net(sj, sj.neuron.LIFNode)
    before = list(net.modules())
    sd = copy.deepcopy(net.state_dict())
    report = staa.convert(net, _x(), dry_run=True)
    assert isinstance(report, staa._convert.ConvertReport) and len(report) == 3 and report.dry_run
    assert list(net.modules()) == before
    assert not hasattr(net, "staa_report")
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in sd.items())


def test_model_without_nodes_comes_back_unchanged(sj):
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU())
    before = list(net.modules())
    assert staa.convert(net, torch.randn(1, 2, 4, 4)) is net
    assert list(net.modules()) == before
    assert "no spikingjelly LIFNode/ParametricLIFNode/IFNode found; the model is unchanged" in str(net.staa_report)


def test_detection_is_by_exported_class_not_by_name(sj):
    LIFNode = type("LIFNode", (nn.Module,), {"forward": lambda self, x: x})  # a look-alike
    net = nn.Sequential(LIFNode(), sj.neuron.LIFNode(step_mode="m"))
    staa.convert(net)
    assert type(net[0]) is LIFNode and isinstance(net[1], staa.STAALIF)


def test_include_exclude(sj):
    def names(**kw):
        return [r.name for r in staa.convert(_net(sj, sj.neuron.IFNode), dry_run=True, **kw).replaced]

    assert names() == ["2", "5", "8"]
    assert names(include="2") == ["2"]
    assert names(include=["2", "8"]) == ["2", "8"]
    assert names(exclude="[58]") == ["2"]
    assert names(exclude=lambda name, m: name == "5") == ["2", "8"]
    nested = nn.Sequential(nn.Sequential(sj.neuron.IFNode()), sj.neuron.IFNode())
    report = staa.convert(nested, T=2, include="0", dry_run=True)
    assert [r.name for r in report.replaced] == ["0.0"]
    assert report.skipped[0].reason == "excluded by include/exclude"


def test_shared_node_is_replaced_everywhere(sj):
    node = sj.neuron.LIFNode(step_mode="m")
    net = nn.Sequential(sj.layer.Linear(4, 4), node, sj.layer.Linear(4, 4), node)
    staa.convert(net, torch.randn(T, 2, 4))
    assert net[1] is net[3] and isinstance(net[1], staa.STAALIF) and net[1].channels == 4


def test_without_example_input_nodes_are_lazy(sj):
    net = _net(sj, sj.neuron.LIFNode)
    staa.convert(net)
    assert all(m.has_uninitialized_params() for m in _staa_nodes(net))
    assert [(r.channels, r.T) for r in net.staa_report.replaced] == [(None, None)] * 3
    net(_x())
    assert [(m.channels, m.T) for m in _staa_nodes(net)] == [(6, T), (8, T), (5, T)]


def test_reset_net_sees_new_nodes_after_its_cache_was_filled(sj):
    net = _net(sj, sj.neuron.LIFNode)
    sj.functional.reset_net(net)  # caches the old nodes
    old = list(net.modules())  # keep them alive, so the cache is not dropped on its own
    staa.convert(net, _x())
    net(_x())
    assert all(m.v is not None for m in _staa_nodes(net))
    sj.functional.reset_net(net)
    assert all(m.v is None for m in _staa_nodes(net))
    del old


# ---------------------------------------------------------------------------------- probe
class _Noisy(nn.Module):
    """Draws random numbers in every forward, to show the probe does not move the RNG."""

    def forward(self, x):
        return x + 0 * torch.rand_like(x)


def test_probe_leaves_model_flags_buffers_and_rng_untouched(sj):
    net = _net(sj, sj.neuron.LIFNode)
    net.insert(0, _Noisy())
    net.train()
    net[2].eval()  # the BatchNorm: mixed training flags
    net[2].running_mean.fill_(0.25)
    flags = [m.training for m in net.modules()]
    sd = copy.deepcopy(net.state_dict())
    rng = torch.get_rng_state()
    report = staa.convert(net, _x(), dry_run=True)  # probes, builds nothing
    assert len(report) == 3
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in net.modules()] == flags
    assert sd.keys() == net.state_dict().keys()
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in sd.items())

    net[2].train()  # a training BatchNorm would update its statistics in a non-eval probe
    kept_modules = [(m, m.training) for m in net.modules() if not isinstance(m, sj.neuron.LIFNode)]
    node_flags = [m.training for m in net.modules() if isinstance(m, sj.neuron.LIFNode)]
    sd = copy.deepcopy(net.state_dict())
    staa.convert(net, _x())
    assert all(m.training == flag for m, flag in kept_modules)
    assert [m.training for m in _staa_nodes(net)] == node_flags
    after = net.state_dict()
    kept = {k: v for k, v in sd.items() if not k.startswith(("3.", "6.", "9."))}
    assert kept and all(torch.equal(v, after[k]) for k, v in kept.items())
    assert net[2].num_batches_tracked.item() == 0


def test_probe_restores_neuron_state(sj):
    net = _net(sj, sj.neuron.LIFNode)
    net.append(sj.neuron.ILIFNode(step_mode="m"))  # skipped; its state must survive the probe
    x = _x()
    net(x)
    v = net[-1].v.clone()
    staa.convert(net, _x(seed=5))
    assert torch.equal(net[-1].v, v)


def test_converted_models_are_reproducible_under_a_seed(sj):
    def build():
        torch.manual_seed(7)
        net = _net(sj, sj.neuron.LIFNode, seed=7)
        staa.convert(net, _x(), tsrd=0.5)
        _randomize(net, seed=3)
        net.train()
        return net, net(_x(seed=2))

    (a, ya), (b, yb) = build(), build()
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert torch.equal(ya, yb)


@pytest.mark.parametrize("lazy_copy", [False, True])
def test_state_dict_loads_into_a_freshly_converted_copy(sj, lazy_copy):
    net = _net(sj, sj.neuron.ParametricLIFNode)
    staa.convert(net, _x())
    _randomize(net)
    sd = net.state_dict()
    fresh = _net(sj, sj.neuron.ParametricLIFNode, seed=99)
    staa.convert(fresh, None if lazy_copy else _x())
    fresh.load_state_dict(sd)
    net.eval(), fresh.eval()
    sj.functional.reset_net(net), sj.functional.reset_net(fresh)
    x = _x(seed=4)
    assert torch.equal(net(x), fresh(x))


# ---------------------------------------------------------------------------------- bad input
def test_wrong_example_input_names_the_first_failing_module(sj):
    net = _net(sj, sj.neuron.LIFNode)
    with pytest.raises(ValueError, match=r"shape \[3, 2, 5, 4, 4\]\) failed in module '0' \(Conv2d\)"):
        staa.convert(net, torch.randn(T, 2, 5, 4, 4))
    with pytest.raises(ValueError, match=r"failed in module '7' \(Linear\)"):
        staa.convert(net, torch.randn(T, 2, 2, 6, 6))  # fine until the flattened size reaches the Linear
    assert not _staa_nodes(net) and net[0].training  # nothing replaced, flags restored


def test_node_used_twice_with_different_shapes(sj):
    node = sj.neuron.LIFNode(step_mode="m")
    net = nn.Sequential(sj.layer.Linear(4, 6), node, sj.layer.Linear(6, 3), node)
    with pytest.raises(ValueError, match=r"node '1' is called 2 times .* \(\[3, 2, 6\], \[3, 2, 3\]\)"):
        staa.convert(net, torch.randn(T, 2, 4))


def test_single_step_model_needs_T(sj):
    net = _net(sj, sj.neuron.LIFNode, "s")
    with pytest.raises(ValueError, match=r"node '2' runs in single-step mode.*pass T="):
        staa.convert(net, _x()[0])
    staa.convert(net, _x()[0], pe=False)  # no position encoding: T is not needed
    assert _staa_nodes(net)[0].T is None


def test_T_smaller_than_the_probe_and_reserved_options(sj):
    net = _net(sj, sj.neuron.LIFNode)
    with pytest.raises(ValueError, match=r"T=2 but node '2' receives T=3"):
        staa.convert(net, _x(), T=2)
    with pytest.raises(TypeError, match="channels"):
        staa.convert(net, channels=4)
    with pytest.raises(ValueError, match="node '2'.*tsrd"):
        staa.convert(net, _x(), tsrd=1.5)
    with pytest.raises(TypeError, match="unknown STAALIF option.*'tsdr'"):
        staa.convert(net, _x(), tsdr=0.1)
    assert not _staa_nodes(net)


# ---------------------------------------------------------------------------------- zoo
def test_zoo_spiking_resnet18(sj, quiet):
    from convert_helpers import load_zoo_file

    zoo = load_zoo_file("spiking_resnet")
    torch.manual_seed(0)
    net = zoo.spiking_resnet18(spiking_neuron=sj.neuron.LIFNode, num_classes=10)
    sj.functional.set_step_mode(net, "m")
    x = torch.randn(2, 1, 3, 32, 32)
    staa.convert(net, x)
    rep = net.staa_report
    assert len(rep) == 17 and not rep.skipped
    assert {r.name: r.channels for r in rep.replaced}["layer4.1.sn2"] == 512
    assert all(r.T == 2 for r in rep.replaced)
    y = net(x)
    assert y.shape == (2, 1, 10)
    y.sum().backward()
    assert net.layer1[0].sn1.pos.grad is not None
    sj.functional.reset_net(net)


def test_zoo_spiking_vgg11_bn_head_gets_T_B_C_inputs(sj, quiet):
    from convert_helpers import load_zoo_file

    zoo = load_zoo_file("spiking_vgg")
    torch.manual_seed(0)
    net = zoo.spiking_vgg11_bn(spiking_neuron=sj.neuron.LIFNode, num_classes=10)
    sj.functional.set_step_mode(net, "m")
    x = torch.randn(2, 1, 3, 32, 32)
    staa.convert(net, x)
    rep = {r.name: (r.channels, r.T) for r in net.staa_report.replaced}
    assert len(rep) == 10
    assert rep["features.2"] == (64, 2) and rep["classifier.1"] == (4096, 2) and rep["classifier.4"] == (4096, 2)
    with torch.no_grad():
        y = net.eval()(x)
    assert y.shape == (2, 1, 10)
    assert net.classifier[1].v.shape == (1, 4096)  # [B, C]: the head ran on [T, B, C]


# ---------------------------------------------------------------------------------- import
def test_convert_without_spikingjelly_imported_does_not_import_it():
    code = (
        "import sys, torch, staa\n"
        "net = torch.nn.Sequential(torch.nn.Linear(2, 2))\n"
        "assert staa.convert(net, torch.randn(1, 2)) is net\n"
        "assert not [m for m in sys.modules if m.startswith('spikingjelly')], 'spikingjelly was imported'\n"
        "print(net.staa_report)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "the model is unchanged" in out.stdout
