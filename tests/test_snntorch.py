"""staa.convert on snnTorch 1.0 models (the real package; installed light in CI by scripts/test.sh)."""
import copy
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import staa

if os.environ.get("STAA_REQUIRE_OPTIONAL") == "1":
    import snntorch  # noqa: F401  (CI installs it: a missing package is a failure there, not a skip)
else:
    pytest.importorskip("snntorch")

import snntorch as snn  # noqa: E402
from snntorch import surrogate, utils  # noqa: E402

T = 4
OFF = dict(gc=False, pe=False, sa=False, tsrd=0.0)  # STAA-LIF without its blocks: an IF neuron


def _conv_net(seed=0, spike_grad=None, beta=0.5):
    """snnTorch's tutorial Conv-SNN shape (Conv-MaxPool-Leaky x2, Linear, Leaky(output=True)), small."""
    torch.manual_seed(seed)
    sg = spike_grad if spike_grad is not None else surrogate.fast_sigmoid(slope=25)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), snn.Leaky(beta=beta, spike_grad=sg, init_hidden=True),
        nn.Conv2d(4, 8, 3), nn.MaxPool2d(2), snn.Leaky(beta=beta, spike_grad=sg, init_hidden=True),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 3),
        snn.Leaky(beta=beta, spike_grad=sg, init_hidden=True, output=True),
    )


def _images(seed=0, B=3):
    return torch.rand(B, 1, 14, 14, generator=torch.Generator().manual_seed(seed)) * 3


def _run(net, x, steps=T):
    """The user's loop from snnTorch's tutorials, unchanged."""
    utils.reset(net)
    spk_rec, mem_rec = [], []
    for _ in range(steps):
        spk, mem = net(x)
        spk_rec.append(spk)
        mem_rec.append(mem)
    return torch.stack(spk_rec), torch.stack(mem_rec)


def _staa_leaky():
    from staa._snntorch import leaky_class

    return leaky_class()


def _one(**kw):
    """A lone converted Leaky in a container (convert replaces children in place)."""
    leaky_kw = {k: kw.pop(k) for k in list(kw) if k in ("beta", "threshold", "reset_mechanism", "spike_grad",
                                                         "init_hidden", "output")}
    net = nn.Sequential(snn.Leaky(**{"beta": 1.0, **leaky_kw}))
    staa.convert(net, linear="convert", **{**OFF, **kw})
    return net[0]


# ------------------------------------------------------------------------------ import and detection
def test_import_staa_does_not_import_snntorch():
    code = (
        "import sys, torch, staa\n"
        "net = torch.nn.Sequential(torch.nn.Linear(2, 2))\n"
        "staa.convert(net)\n"
        "assert 'snntorch' not in sys.modules, 'snntorch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_replacement_is_a_registered_leaky():
    net = _conv_net()
    old = [net[2], net[5]]
    staa.convert(net, _images(), T=T)
    cls = _staa_leaky()
    assert type(net[2]) is cls and type(net[5]) is cls
    assert isinstance(net[2], snn.Leaky)
    assert type(net[8]) is snn.Leaky  # after Linear: kept by the default linear="keep"
    registry = snn.SpikingNeuron.instances
    assert any(m is net[2] for m in registry) and any(m is net[5] for m in registry)
    assert not any(m is o for m in registry for o in old)  # replaced neurons left the registry
    assert isinstance(net[2].staa, staa.STAALIF) and net[2].staa.step_mode == "s"
    assert (net[2].staa.channels, net[2].staa.T) == (4, T) and net[5].staa.channels == 8
    rep = net.staa_report
    assert [r.name for r in rep.replaced] == ["2", "5"]
    assert [(f.name, f.converted) for f in rep.flat] == [("8", False)]
    assert "fast_sigmoid" in rep.replaced[0].surrogate
    assert "beta=0.5" in rep.replaced[0].dropped


def test_linear_convert_converts_the_output_neuron():
    net = _conv_net()
    staa.convert(net, _images(), T=T, linear="convert")
    assert type(net[8]) is _staa_leaky() and net[8].staa.channels == 3
    spk, mem = net(_images())  # output=True: (spk, mem)
    assert spk.shape == mem.shape == (3, 3)


# ------------------------------------------------------------------------------ the user's loop
def test_tutorial_loop_trains_with_utils_reset_between_batches():
    import snntorch.functional as SF

    net = _conv_net(seed=1)
    staa.convert(net, _images(), T=T, linear="convert")
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    loss_fn = SF.ce_rate_loss()
    x, y = _images(2, B=6), torch.tensor([0, 1, 2, 0, 1, 2])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for _ in range(3):
        net.train()
        spk, _ = _run(net, x)
        loss = loss_fn(spk, y)
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(loss)
        opt.step()
        assert net[2].staa.t == T
    changed = [k for k in before if not torch.equal(before[k], net.state_dict()[k])]
    assert any(k.startswith("2.staa.") for k in changed) and any(k.startswith("8.staa.") for k in changed)
    # a smaller last batch without a reset in between starts a new sequence, as snnTorch does
    net(x[:2])
    assert net[2].staa.t == 1


def test_past_T_raises_and_reset_recovers():
    net = _conv_net()
    staa.convert(net, _images(), T=T)
    x = _images()
    _run(net, x)
    with pytest.raises(ValueError, match=r"T=4.*utils\.reset"):
        net(x)
    utils.reset(net)
    assert net[2].staa.t == 0 and torch.count_nonzero(net[2].mem) == 0
    net(x)
    assert net[2].staa.t == 1


@pytest.mark.parametrize("how", ["utils.reset", "reset_mem", "init_leaky", "assign", "reset_hidden"])
def test_state_resets(how):
    lif = _one(T=T, pe=True)
    x = torch.full((2, 3), 0.7)
    for _ in range(3):
        lif(x)
    assert lif.staa.t == 3 and lif.mem.abs().sum() > 0
    if how == "utils.reset":
        utils.reset(nn.Sequential(lif))
    elif how == "reset_mem":
        lif.reset_mem()
    elif how == "init_leaky":
        lif.init_leaky()
    elif how == "assign":
        lif.mem = torch.zeros(2, 3)
    else:
        snn.Leaky.reset_hidden()
    assert lif.staa.t == 0
    assert lif.mem.numel() == 0 or torch.count_nonzero(lif.mem) == 0
    spk, mem = lif(x)
    assert torch.equal(mem, torch.full((2, 3), 0.7))  # from rest again


def test_detach_hidden_keeps_the_step_counter():
    lif = _one(T=T, pe=True)
    x = torch.full((2, 3), 0.4, requires_grad=True)
    lif(x)
    lif(x)
    assert lif.mem.requires_grad
    snn.Leaky.detach_hidden()
    assert not lif.mem.requires_grad and lif.staa.t == 2
    spk, mem = lif(x)
    mem.sum().backward()
    assert torch.equal(x.grad, torch.ones(2, 3))  # only this step's input reaches mem after the detach
    assert lif.staa.t == 3


def test_returns_follow_leaky_rules():
    x = torch.full((2, 3), 1.5)
    assert isinstance(_one(init_hidden=True)(x), torch.Tensor)
    out = _one(init_hidden=True, output=True)(x)
    assert isinstance(out, tuple) and len(out) == 2
    out = _one()(x)  # init_hidden=False: (spk, mem)
    assert isinstance(out, tuple) and len(out) == 2
    with pytest.raises(TypeError, match="init_hidden=True"):
        _one(init_hidden=True)(x, torch.zeros(2, 3))


# ------------------------------------------------------------------------------ dynamics
def _if_by_hand(xs, threshold, soft):
    """IF neuron by hand: V = x + H; S = [V >= thr]; H = V - thr S (soft) or V (1 - S) (zero)."""
    h, spikes, mems = 0.0, [], []
    for x in xs:
        v = x + h
        s = 1.0 if v >= threshold else 0.0
        h = v - threshold * s if soft else v * (1.0 - s)
        spikes.append(s)
        mems.append(h)
    return spikes, mems


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_blocks_off_beta_one_is_hand_computed_if(reset):
    xs = [0.6, 0.7, 0.3, 1.6, -0.2, 0.45, 0.9]
    lif = _one(threshold=1.25, reset_mechanism=reset)
    orig = snn.Leaky(beta=1.0, threshold=1.25, reset_mechanism=reset)
    spikes, mems = _if_by_hand(xs, 1.25, reset == "subtract")
    mem_o = orig.init_leaky()
    for t, x in enumerate(xs):
        spk, mem = lif(torch.tensor([[x]]))
        spk_o, mem_o = orig(torch.tensor([[x]]), mem_o)
        assert spk.item() == spikes[t], t
        assert mem.item() == pytest.approx(mems[t], abs=1e-6), t
        # same spikes as snnTorch; snnTorch's mem is the value before the reset
        assert spk_o.item() == spk.item()
        pre = mem_o.item()
        after = pre - 1.25 * spk_o.item() if reset == "subtract" else pre * (1 - spk_o.item())
        assert mem.item() == pytest.approx(after, abs=1e-6)


def test_threshold_equality_fires_in_staa_not_in_snntorch():
    """snnTorch fires on mem > threshold, STAALIF on V >= threshold: they differ only at equality."""
    lif = _one(threshold=1.0)
    orig = snn.Leaky(beta=1.0, threshold=1.0)
    spk, _ = lif(torch.ones(1, 1))
    spk_o, _ = orig(torch.ones(1, 1))
    assert spk.item() == 1.0 and spk_o.item() == 0.0


@pytest.mark.parametrize("make_sg, reset", [
    (lambda: surrogate.fast_sigmoid(slope=5), "subtract"),
    (lambda: surrogate.atan(alpha=3.0), "subtract"),
    (lambda: surrogate.sigmoid(slope=4), "zero"),
    (lambda: None, "zero"),  # snnTorch's default: atan(alpha=2)
])
def test_bptt_gradient_matches_snntorch_leaky_beta_one(make_sg, reset):
    """With the blocks off and beta=1 the whole backward pass equals snnTorch's: same surrogate,
    reset term detached on both sides."""
    g = torch.Generator().manual_seed(3)
    xs = torch.rand(6, 4, 5, generator=g) * 1.4
    orig = snn.Leaky(beta=1.0, threshold=0.9, spike_grad=make_sg(), reset_mechanism=reset)
    lif = _one(threshold=0.9, spike_grad=make_sg(), reset_mechanism=reset)
    grads = []
    for neuron in (orig, lif):
        x = xs.clone().requires_grad_(True)
        mem = neuron.init_leaky()
        out = []
        for t in range(xs.shape[0]):
            spk, mem = neuron(x[t], mem)
            out.append(spk)
        (torch.stack(out) * torch.arange(1.0, 7.0)[:, None, None]).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_snntorch_atan_formula_equals_staa_atan():
    from staa.surrogate import surrogate_grad

    x = torch.linspace(-2, 2, 41, requires_grad=True)
    surrogate.atan(alpha=3.0)(x).sum().backward()
    torch.testing.assert_close(x.grad, surrogate_grad(x.detach(), "atan", 3.0))


def test_class_based_model_with_mem_passed():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(5, 6)
            self.lif1 = snn.Leaky(beta=0.9)

        def forward(self, x):
            mem1 = self.lif1.init_leaky()
            out = []
            for t in range(x.shape[0]):
                spk1, mem1 = self.lif1(self.fc1(x[t]), mem1)
                out.append(spk1)
            return torch.stack(out)

    net = Net()
    x = torch.rand(T, 2, 5) * 2
    staa.convert(net, x, T=T, linear="convert", tsrd=0.0)
    a = net(x)
    b = net(x)  # init_leaky() inside forward starts each call from rest
    torch.testing.assert_close(a, b)
    assert net.lif1.staa.t == T


def test_passed_mem_is_honoured_and_keeps_the_counter():
    lif = _one(T=T, pe=True)
    x = torch.full((1, 2), 0.5)
    mem = lif.init_leaky()
    spk, mem = lif(x, mem)
    spk, mem = lif(x, mem.detach() + 0.25)  # a foreign tensor: its value is the state
    assert torch.allclose(mem, torch.full((1, 2), 0.25))  # 0.5 + 0.25 + 0.5 = 1.25 -> spike, 0.25 left
    assert spk.sum() == 2 and lif.staa.t == 2


# ------------------------------------------------------------------------------ settings
def test_surrogates_and_reset_carried():
    cases = [
        (surrogate.atan(alpha=3.0), ("atan", 3.0)),
        (surrogate.fast_sigmoid(slope=7), ("fast_sigmoid", 7.0)),
        (surrogate.sigmoid(slope=5), ("sigmoid", 5.0)),
        (None, ("atan", 2.0)),
    ]
    for sg, (kind, param) in cases:
        lif = _one(spike_grad=sg)
        assert tuple(lif.staa.surrogate) == (kind, param)
    lif = _one(reset_mechanism="zero", threshold=0.5)
    assert lif.staa.v_reset == 0.0 and lif.staa.v_threshold == 0.5 and lif.staa.detach_reset
    lif = _one(reset_mechanism="subtract")
    assert lif.staa.v_reset is None
    assert lif.reset_mechanism == "subtract" and float(lif.threshold) == 1.0


def test_dropped_settings_reported():
    net = nn.Sequential(
        snn.Leaky(beta=torch.tensor(0.8), learn_beta=True, learn_threshold=True, spike_grad=surrogate.triangular()),
        snn.Leaky(beta=0.7, graded_spikes_factor=2.0, surrogate_disable=True),
    )
    staa.convert(net, linear="convert", **OFF)
    d0, d1 = (", ".join(r.dropped) for r in net.staa_report.replaced)
    assert "learnable beta (was 0.8)" in d0 and "learn_threshold" in d0 and "spike_grad=" in d0
    assert "beta=0.7" in d1 and "graded spikes (factor 2)" in d1 and "surrogate_disable=True" in d1
    assert tuple(net[0].staa.surrogate) == ("atan", 2.0)


def test_other_neurons_skipped_and_reported():
    class MyLeaky(snn.Leaky):
        pass

    net = nn.Sequential(
        snn.Synaptic(alpha=0.9, beta=0.8), snn.RLeaky(beta=0.9, linear_features=3), snn.Alpha(alpha=0.9, beta=0.8),
        snn.Lapicque(beta=0.9), MyLeaky(beta=0.9), snn.Leaky(beta=0.9, reset_mechanism="none"),
        snn.Leaky(beta=0.9),
    )
    kinds = [type(m) for m in net]
    staa.convert(net, linear="convert", **OFF)
    assert [type(m) for m in net][:6] == kinds[:6]
    assert type(net[6]) is _staa_leaky()
    reasons = {s.name: s.reason for s in net.staa_report.skipped}
    assert set(reasons) == {"0", "1", "2", "3", "4", "5"}
    assert "subclass of Leaky" in reasons["4"] and "reset_mechanism='none'" in reasons["5"]
    assert "not a Leaky" in reasons["0"]


def test_include_exclude_and_dry_run():
    net = _conv_net()
    rep = staa.convert(net, _images(), T=T, exclude="5", dry_run=True)
    assert rep.dry_run and [r.name for r in rep.replaced] == ["2"]
    assert type(net[2]) is snn.Leaky  # dry run: unchanged
    staa.convert(net, _images(), T=T, include=["2"])
    assert type(net[2]) is _staa_leaky() and type(net[5]) is snn.Leaky


def test_dtype_follows_the_model():
    # snnTorch's own Leaky returns float32 spikes, so a double model runs only once converted
    net = _conv_net().double()
    staa.convert(net, T=T, linear="convert")
    spk, mem = net(_images().double())
    assert net[2].staa.pos.dtype == torch.float64 and spk.dtype == torch.float64


def test_state_dict_round_trip_and_deepcopy():
    a, b = _conv_net(seed=0), _conv_net(seed=1)
    for net in (a, b):
        staa.convert(net, _images(), T=T, linear="convert")
    keys = list(a.state_dict())
    assert "2.staa.pos" in keys and "8.staa.gc_x.query.weight" in keys
    assert not any(k.endswith((".beta", ".threshold", ".graded_spikes_factor", ".mem")) for k in keys)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = _images(5)
    for out_a, out_b in zip(_run(a, x), _run(b, x)):
        torch.testing.assert_close(out_a, out_b)
    c = copy.deepcopy(a)
    assert any(m is c[2] for m in snn.SpikingNeuron.instances)  # the copy joins snnTorch's registry
    for out_a, out_c in zip(_run(a, x), _run(c, x)):
        torch.testing.assert_close(out_a, out_c)


# ------------------------------------------------------------------------------ bad inputs
def test_bad_inputs():
    net = _conv_net()
    with pytest.raises(ValueError, match=r"pass T="):
        staa.convert(net, _images())
    with pytest.raises(TypeError, match="step_mode"):
        staa.convert(net, _images(), T=T, step_mode="m")
    with pytest.raises(TypeError, match="unknown STAALIF option"):
        staa.convert(net, _images(), T=T, tau=2.0)
    with pytest.raises(ValueError, match="linear"):
        staa.convert(net, _images(), T=T, linear="drop")
    per_neuron = nn.Sequential(snn.Leaky(beta=0.9, threshold=torch.ones(3)))
    with pytest.raises(ValueError, match="per-neuron threshold"):
        staa.convert(per_neuron, linear="convert", T=T)
    assert all(type(m) is snn.Leaky for m in (net[2], net[5], net[8]))  # failed calls change nothing
    lif = _one()
    with pytest.raises(ValueError, match=r"\[B, C, H, W\] or \[B, C\]"):
        lif(torch.zeros(2, 3, 5))
