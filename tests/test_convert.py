"""staa.convert on networks built from spikingjelly 2.x layers and neurons, and its zoo."""
import copy
import subprocess
import sys
import warnings

import pytest
import torch
from hypothesis import given, settings, strategies as st
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
    out = staa.convert(net, example, T=T, linear="convert")
    assert out is net
    nodes = _staa_nodes(net)
    assert [(m.channels, m.T, m.step_mode) for m in nodes] == [(6, T, step_mode), (8, T, step_mode), (5, T, step_mode)]
    assert not any(isinstance(m, cls) for m in net.modules())
    from spikingjelly.activation_based import base

    assert all(isinstance(m, base.MemoryModule) for m in nodes)
    _randomize(net)

    # forward, backward and one optimizer step: the parameters move and the loss changes
    def loss_now():
        sj.functional.reset_net(net)
        y = _run(net, x, step_mode)
        assert y.shape == (T, 2, 5)
        return (y.mean(0) - 0.5).pow(2).mean()

    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    before = [p.detach().clone() for p in net.parameters()]
    loss = loss_now()
    loss.backward()
    assert all(p.grad is not None for m in nodes for p in m.parameters())
    opt.step()
    opt.zero_grad()
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters()) if p.grad is not None)
    with torch.no_grad():
        assert loss_now().item() != loss.item()

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

    # detach_net cuts the single-step membrane state (which carries the graph between calls)
    net.train()
    sj.functional.set_step_mode(net, "s")
    sj.functional.reset_net(net)
    _run(net, x, "s")
    assert all(m.v is not None and m.v.grad_fn is not None for m in nodes)
    sj.functional.detach_net(net)
    assert all(m.v.grad_fn is None for m in nodes)


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
    assert (lif.v_threshold, lif.v_reset, lif.detach_reset, tuple(lif.surrogate)) == (0.7, None, True, ("rect", 0.25))
    assert (if_.v_threshold, if_.v_reset, if_.detach_reset, tuple(if_.surrogate)) == (1.5, -0.5, False, ("sigmoid", 4.0))
    assert lif.store_v_seq and not if_.store_v_seq
    assert (lif.tsrd, lif.r) == (0.2, 2)
    assert lif.training and not if_.training
    assert all(p.dtype == torch.float64 for m in (lif, if_) for p in m.parameters())
    dropped = dict((r.name, r.dropped) for r in net.staa_report.replaced)
    assert not any("surrogate" in d for d in dropped["1"] + dropped["2"])  # both carried exactly


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
    staa.convert(net, linear="convert")
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
    report = staa.convert(net, torch.randn(T, 2, 4), dry_run=True, linear="convert")
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
    report = staa.convert(net, _x(), dry_run=True, linear="convert")
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
    staa.convert(net, linear="convert")
    assert type(net[0]) is LIFNode and isinstance(net[1], staa.STAALIF)


def test_include_exclude(sj):
    def names(**kw):
        return [r.name for r in staa.convert(_net(sj, sj.neuron.IFNode), dry_run=True, **kw).replaced]

    assert names() == ["2", "5", "8"]
    assert names(example_input=_x()) == ["2", "5"]  # the probe finds "8" after a Linear layer: kept
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
    staa.convert(net, torch.randn(T, 2, 4), linear="convert")
    assert net[1] is net[3] and isinstance(net[1], staa.STAALIF) and net[1].channels == 4


def test_without_example_input_nodes_are_lazy(sj):
    net = _net(sj, sj.neuron.LIFNode)
    staa.convert(net, linear="convert")
    assert all(m.has_uninitialized_params() for m in _staa_nodes(net))
    assert [(r.channels, r.T) for r in net.staa_report.replaced] == [(None, None)] * 3
    net(_x())
    assert [(m.channels, m.T) for m in _staa_nodes(net)] == [(6, T), (8, T), (5, T)]


def test_reset_net_sees_new_nodes_after_its_cache_was_filled(sj):
    net = _net(sj, sj.neuron.LIFNode)
    sj.functional.reset_net(net)  # caches the old nodes
    old = list(net.modules())  # keep them alive, so the cache is not dropped on its own
    staa.convert(net, _x(), linear="convert")
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
    report = staa.convert(net, _x(), dry_run=True, linear="convert")  # probes, builds nothing
    assert len(report) == 3
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in net.modules()] == flags
    assert sd.keys() == net.state_dict().keys()
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in sd.items())

    net[2].train()  # a training BatchNorm would update its statistics in a non-eval probe
    kept_modules = [(m, m.training) for m in net.modules() if not isinstance(m, sj.neuron.LIFNode)]
    node_flags = [m.training for m in net.modules() if isinstance(m, sj.neuron.LIFNode)]
    sd = copy.deepcopy(net.state_dict())
    staa.convert(net, _x(), linear="convert")
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
        staa.convert(net, _x(), tsrd=0.5, linear="convert")
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
    staa.convert(net, _x(), linear="convert")
    _randomize(net)
    sd = net.state_dict()
    fresh = _net(sj, sj.neuron.ParametricLIFNode, seed=99)
    staa.convert(fresh, None if lazy_copy else _x(), linear="convert")
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
        staa.convert(net, torch.randn(T, 2, 4), linear="convert")


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
    with pytest.raises(ValueError, match=r"invalid STAALIF settings: tsrd .*\[0, 1\).*got 1.5"):
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
    staa.convert(net, x, linear="convert")  # the head's neurons too (kept by default)
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


# ---------------------------------------------------------------------------------- surrogates
def _sj_surrogate(sj, kind, alpha):
    return {"rect": sj.surrogate.Rect, "atan": sj.surrogate.ATan, "sigmoid": sj.surrogate.Sigmoid}[kind](alpha=alpha)


def _sj_grad(sj, kind, alpha, x):
    """spikingjelly's surrogate backward at x (float64)."""
    x = x.detach().clone().requires_grad_()
    _sj_surrogate(sj, kind, alpha)(x).sum().backward()
    return x.grad


@pytest.mark.parametrize("kind", ["rect", "atan", "sigmoid"])
@settings(max_examples=40, deadline=None)
@given(alpha=st.floats(0.25, 8.0), xs=st.lists(st.floats(-3.0, 3.0), min_size=1, max_size=8),
       shift=st.sampled_from([0.0, 1e-9, -1e-9, 1e-3, -1e-3]))
def test_each_kind_matches_spikingjellys_backward(kind, alpha, xs, shift):
    from spikingjelly.activation_based import neuron, surrogate

    from staa.surrogate import surrogate_grad

    sj = type("SJ", (), dict(neuron=neuron, surrogate=surrogate))

    edge = 0.5 / alpha  # the rectangle's edges, where spikingjelly's Rect steps
    x = torch.tensor(xs + [0.0, shift, edge + shift, -edge + shift, edge, -edge], dtype=torch.float64)
    want = _sj_grad(sj, kind, alpha, x)
    param = 1.0 / alpha if kind == "rect" else alpha
    assert torch.allclose(surrogate_grad(x, kind, param), want, rtol=1e-6, atol=1e-6)
    # STAALIF's backward, one step with every block off: V = I, so dL/dI = dS/dV at x = I - v_threshold
    v = x + 1.0
    node = staa.convert(sj.neuron.IFNode(surrogate_function=_sj_surrogate(sj, kind, alpha), step_mode="m"),
                        linear="convert", gc=False, pe=False, sa=False, tsrd=0.0, backend="torch")
    assert tuple(node.surrogate) == (kind, pytest.approx(param))
    i = v.reshape(1, 1, -1).clone().requires_grad_()
    node(i).sum().backward()
    assert torch.allclose(i.grad.reshape(-1), _sj_grad(sj, kind, alpha, v - 1.0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["atan", "sigmoid"])
@pytest.mark.parametrize("step_mode", ["m", "s"])
@pytest.mark.parametrize("reset", [dict(v_reset=0.0), dict(v_reset=None), dict(v_reset=0.0, detach_reset=True)])
def test_converted_IF_with_blocks_off_is_the_original(sj, kind, step_mode, reset):
    """gc=pe=sa=False, tsrd=0: STAALIF is an IF neuron, so spikes and input gradients equal spikingjelly's."""
    alpha = 3.0 if kind == "atan" else 5.0
    orig = sj.neuron.IFNode(surrogate_function=_sj_surrogate(sj, kind, alpha), step_mode=step_mode, **reset).double()
    new = staa.convert(copy.deepcopy(orig), T=T, linear="convert", gc=False, pe=False, sa=False, tsrd=0.0)
    assert isinstance(new, staa.STAALIF) and tuple(new.surrogate) == (kind, alpha)
    x = torch.randn(T, 3, 4, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.5
    outs, grads = [], []
    for m in (orig, new):
        xi = x.clone().requires_grad_()
        y = _run(m, xi, step_mode)
        (y * torch.linspace(0.5, 1.5, y.numel(), dtype=torch.float64).reshape(y.shape)).sum().backward()
        outs.append(y.detach())
        grads.append(xi.grad)
        sj.functional.reset_net(m)
    assert 0 < outs[0].mean() < 1
    assert torch.equal(outs[0], outs[1])
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-10)


def test_surrogates_are_carried_mapped_skipped_or_overridden(sj):
    S = sj.surrogate
    net = nn.Sequential(*[sj.neuron.IFNode(surrogate_function=sg, step_mode="m") for sg in (
        S.Rect(alpha=2.0), S.ATan(alpha=3.0), S.Sigmoid(alpha=5.0), S.PiecewiseQuadratic(alpha=2.0), S.Erf(alpha=2.0),
        S.SoftSign(alpha=3.0), S.S2NN(), S.ATan(spiking=False),
    )])
    report = staa.convert(net, T=T, linear="convert", dry_run=True)
    got = {r.name: r.surrogate for r in report.replaced}
    assert got["0"] == "surrogate='rect', surrogate_width=0.5"
    assert got["1"] == "surrogate='atan', surrogate_alpha=3"
    assert got["2"] == "surrogate='sigmoid', surrogate_alpha=5"
    assert got["3"] == "surrogate='rect', surrogate_width=0.5"  # triangle -> rectangle of the same peak
    assert got["5"] == "surrogate='atan', surrogate_alpha=3"
    assert got["6"] == "surrogate='sigmoid', surrogate_alpha=4"  # no close kind: spikingjelly's default
    notes = {r.name: " ".join(r.dropped) for r in report.replaced}
    assert all("surrogate" not in notes[n] for n in "012")
    assert all("no such kind in STAALIF" in notes[n] for n in "3456")
    assert [(s.name, "spiking=False" in s.reason) for s in report.skipped] == [("7", True)]
    # an explicit option replaces the carried surrogate, and the report says so
    staa.convert(net, T=T, linear="convert", surrogate="rect", surrogate_width=1.0)
    assert all(tuple(m.surrogate) == ("rect", 1.0) for m in _staa_nodes(net))
    assert "surrogate='atan', surrogate_alpha=3 (overridden by the options)" in net.staa_report.replaced[1].dropped
    net2 = nn.Sequential(sj.neuron.IFNode(surrogate_function=S.ATan(), step_mode="m"))
    staa.convert(net2, linear="convert", surrogate_alpha=6.0)  # an alpha alone keeps the node's kind
    assert tuple(net2[0].surrogate) == ("atan", 6.0)


# ---------------------------------------------------------------------------------- linear, RNG, report, options
def test_nodes_after_linear_layers_are_flagged_and_kept_by_default(sj):
    net = _net(sj, sj.neuron.LIFNode)
    staa.convert(net, _x())
    assert isinstance(net[8], sj.neuron.LIFNode) and [type(m) for m in (net[2], net[5])] == [type(_staa_nodes(net)[0])] * 2
    (flat,) = net.staa_report.flat
    built = staa.STAALIF(5, T)
    assert (flat.name, flat.channels, flat.converted) == ("8", 5, False)
    assert flat.added_params == sum(p.numel() for p in built.parameters())
    assert "kept by linear='keep'" in {s.name: s.reason for s in net.staa_report.skipped}["8"]
    assert "no spatial positions" in str(net.staa_report)
    staa.convert(net, _x(), linear="convert")  # the second call converts the kept node and adds to the report
    assert isinstance(net[8], staa.STAALIF)
    rep = net.staa_report
    assert [r.name for r in rep.replaced] == ["2", "5", "8"] and rep.calls == 2 and not rep.skipped
    assert [(f.name, f.converted) for f in rep.flat] == [("8", True)]
    with pytest.warns(UserWarning, match="without example_input.*linear='keep' cannot apply"):
        staa.convert(_net(sj, sj.neuron.LIFNode))


def test_convert_leaves_the_global_rng_as_it_was(sj):
    for example in (_x(), None):
        net = _net(sj, sj.neuron.LIFNode)
        torch.manual_seed(3)
        state = torch.get_rng_state()
        staa.convert(net, example, linear="convert")
        assert torch.equal(torch.get_rng_state(), state)
    a, b = _net(sj, sj.neuron.IFNode), _net(sj, sj.neuron.IFNode)  # (_net seeds the RNG itself)
    torch.manual_seed(3)
    staa.convert(a, _x())
    torch.manual_seed(4)
    staa.convert(b, _x())
    # different RNG states still give different initial weights (the key layers are random)
    assert not torch.equal(a[2].gc_x.key.weight, b[2].gc_x.key.weight)


def test_a_bare_node_is_returned_converted(sj):
    node = sj.neuron.LIFNode(step_mode="m")
    calls = []
    node.register_forward_hook(lambda m, i, o: calls.append(type(m)))
    new = staa.convert(node, torch.randn(T, 2, 4, 3, 3))
    assert isinstance(new, staa.STAALIF) and new is not node and (new.channels, new.T) == (4, T)
    assert [r.name for r in new.staa_report.replaced] == [""] and "<model>" in str(new.staa_report)
    assert calls == [type(node)]  # the probe runs the model, hooks included (documented)
    new(torch.randn(T, 2, 4, 3, 3))
    assert calls == [type(node), type(new)]  # the hook moved to the new node
    kept = staa.convert(sj.neuron.IFNode(step_mode="m"), torch.randn(T, 2, 4))  # [T, B, C]: kept by default
    assert isinstance(kept, sj.neuron.IFNode) and kept.staa_report.flat[0].name == ""


@pytest.mark.parametrize("kw, err, text", [
    (dict(T=0), ValueError, r"T must be a positive int .* got 0"),
    (dict(T=2.5), ValueError, r"T must be a positive int .* got 2.5"),
    (dict(linear="drop"), ValueError, r"linear must be 'keep' .* or 'convert', got 'drop'"),
    (dict(dry_run="yes"), TypeError, r"dry_run must be True or False, got 'yes'"),
    (dict(example_input=3), TypeError, r"example_input must be a tensor, .* got int"),
    (dict(include=3), TypeError, r"include must be a module-name pattern.* got 3"),
    (dict(surrogate="tanh"), ValueError, r"surrogate must be one of 'rect', 'atan', .* got 'tanh'"),
    (dict(surrogate_width=-1.0), ValueError, r"surrogate_width must be a positive finite number, got -1"),
    (dict(surrogate="atan", surrogate_width=1.0), ValueError, r"surrogate_width=1.0 was given with surrogate='atan'"),
    (dict(r=0), ValueError, r"r\b.*got 0"),
])
def test_every_option_is_validated_with_its_value(sj, kw, err, text):
    net = nn.Sequential(nn.Identity())  # no node: options are still checked
    with pytest.raises(err, match=text):
        staa.convert(net, **kw)


# ---------------------------------------------------------------------------------- a dead conversion
def _head_net(sj):
    """A small Fashion-MNIST-style Conv-SNN as spikingjelly's example builds it: conv-BN-IF-pool,
    then Linear-IF and Linear-IF at the output (ATan surrogate), firing rates against one-hot labels."""
    S = sj.surrogate
    net = nn.Sequential(
        sj.layer.Conv2d(1, 8, 3, padding=1, bias=False), sj.layer.BatchNorm2d(8),
        sj.neuron.IFNode(surrogate_function=S.ATan()), sj.layer.MaxPool2d(2),
        sj.layer.Flatten(), sj.layer.Linear(8 * 7 * 7, 64, bias=False), sj.neuron.IFNode(surrogate_function=S.ATan()),
        sj.layer.Linear(64, 10, bias=False), sj.neuron.IFNode(surrogate_function=S.ATan()),
    )
    sj.functional.set_step_mode(net, "m")
    return net


def _realistic_batch(B=32, T=4):
    """Images in [0, 1] from 10 smooth class prototypes plus pixel noise (a stand-in for Fashion-MNIST
    that needs no download): [T, B, 1, 14, 14] direct encoding and labels."""
    g = torch.Generator().manual_seed(0)
    protos = nn.functional.interpolate(torch.rand(10, 1, 4, 4, generator=g), size=14, mode="bilinear")
    y = torch.arange(B) % 10
    img = (protos[y] + 0.15 * torch.randn(B, 1, 14, 14, generator=g)).clamp(0, 1)
    return img.unsqueeze(0).repeat(T, 1, 1, 1, 1), y


def _rate_loss(sj, net, x, y):
    sj.functional.reset_net(net)
    rate = net(x).mean(0)
    return nn.functional.mse_loss(rate, nn.functional.one_hot(y, 10).float())


@pytest.mark.parametrize("linear", ["keep", "convert"])
def test_converted_network_is_not_dead(sj, linear):
    """The first layer still gets a gradient after conversion, and 20 steps on one batch lower the loss."""
    x, y = _realistic_batch()
    torch.manual_seed(0)
    orig = _head_net(sj)
    net = copy.deepcopy(orig)
    staa.convert(net, x, linear=linear)
    assert len(net.staa_report) == (1 if linear == "keep" else 3)
    norms = []
    for m in (orig, net):
        m.train()
        _rate_loss(sj, m, x, y).backward()
        norms.append(m[0].weight.grad.norm().item())
    assert norms[0] > 0
    assert norms[1] >= 0.1 * norms[0], f"first-layer gradient norm {norms[1]:.3g} vs {norms[0]:.3g} unconverted"
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss = _rate_loss(sj, net, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = _rate_loss(sj, net, x, y).item()
    assert final < 0.9 * losses[0], losses + [final]


# ---------------------------------------------------------------------------------- README
def test_readme_convert_example_runs_as_written():
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "staa.convert(" in b]
    assert len(blocks) == 1, "the README has one convert example"
    scope = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert isinstance(scope["model"], nn.Module) and len(scope["model"].staa_report) > 0


def test_converted_step_attention_starts_open_unless_a_norm_layer_precedes(sj):
    """convert starts SA's fc2 bias at 3 (gate about 0.95) for nodes not right after a normalisation
    layer, keeps nn.Linear's initialisation after one; without a probe every node starts open; an
    explicit sa_init_bias applies to all."""
    x = _x()
    net = staa.convert(_net(sj, sj.neuron.IFNode), x, linear="convert")  # conv-BN-node, conv-node, Linear-node
    after_bn, after_conv, after_linear = _staa_nodes(net)
    assert after_bn.sa.init_bias is None and after_bn.sa.fc2.bias.abs().max() < 1.0  # uniform(+-1/sqrt(Ch))
    for m in (after_conv, after_linear):
        assert m.sa.init_bias == 3.0 and torch.equal(m.sa.fc2.bias, torch.full_like(m.sa.fc2.bias, 3.0))
    lazy = staa.convert(_net(sj, sj.neuron.IFNode), linear="convert", T=T)
    lazy(x)
    assert [m.sa.init_bias for m in _staa_nodes(lazy)] == [3.0, 3.0, 3.0]
    for value in (None, 1.5):
        forced = staa.convert(_net(sj, sj.neuron.IFNode), x, linear="convert", sa_init_bias=value)
        assert [m.sa.init_bias for m in _staa_nodes(forced)] == [value] * 3
