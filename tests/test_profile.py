"""staa.profile: hand-computed counts, residual blocks, spikingjelly nodes, state left untouched."""
import json

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import staa
from staa._demo import MultiStepLIF
from staa._profile import staa_step_macs

from conftest import requires_spikingjelly
from helpers import randomize

E_AC, E_MAC = 0.9e-12, 4.6e-12


class TinyNet(nn.Module):
    """conv (real-valued input) -> STAALIF -> Linear (binary input)."""

    def __init__(self, T):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.sn = staa.STAALIF(3, T, backend="torch")
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):  # [T, B, 2, 4, 4]
        y = self.conv(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        s = self.sn(y)
        return self.fc(s.flatten(2))


def _tiny(T=2, seed=0):
    torch.manual_seed(seed)
    net = TinyNet(T)
    randomize(net.sn, seed=seed, scale=0.4)
    return net


def _spikes_of(module, net, x):
    out = []
    h = module.register_forward_hook(lambda m, i, o: out.append(o.detach().clone()))
    with torch.no_grad():
        net.eval()(x)
    h.remove()
    return out[0]


def test_tiny_net_counts_by_hand():
    T, B = 2, 3
    net = _tiny(T)
    x = torch.randn(T, B, 2, 4, 4) * 3
    spikes = _spikes_of(net.sn, net, x)  # [T, B, 3, 4, 4]
    assert 0 < spikes.mean() < 1, "the test needs some spikes and some silence"
    rep = staa.profile(net, x)
    assert rep.batch_size == B and rep.T == T
    assert [r.name for r in rep.rows] == ["conv", "sn", "fc"]
    conv, sn, fc = rep.rows

    # conv: 3 output channels x 16 positions x (2 in-channels x 3x3) per step, real input -> MACs.
    assert conv.kind == "synaptic" and conv.type == "Conv2d"
    assert conv.input_binary is False
    assert conv.dense_macs == T * 3 * 16 * 2 * 9 == 1728
    assert conv.macs == 1728 and conv.acs == 0
    assert conv.output_shape == [T * B, 3, 4, 4]

    # STAALIF, C=3, P=16, Ch=max(3 // 4, 4)=4, per step and sample:
    pe = 3 * 16
    gc = 3 * 16 + 3 * 16 + 3 * 4 + 4 * 4 + 4 * 3 + 3 * 16  # key, context, query, LayerNorm, value, residual
    sa = 3 * 16 + 3 + 3 * 4 + 4 * 3 + 3 * 16  # mean, alpha, fc1, fc2, gating
    assert staa_step_macs(3, 16, 4) == pe + 2 * gc + sa == 539
    assert sn.kind == "spiking" and sn.type == "STAALIF"
    assert sn.macs == T * 539 and sn.acs == 0 and sn.dense_macs is None
    assert sn.output_shape == [T, B, 3, 4, 4]
    assert sn.firing_rate == pytest.approx(spikes.mean().item())
    assert sn.firing_rate_per_step == pytest.approx([spikes[t].mean().item() for t in range(T)])

    # fc on binary spikes: ACs = non-zero inputs x out_features, per sample.
    assert fc.input_binary is True
    assert fc.input_nonzero == pytest.approx(spikes.mean().item())
    assert fc.dense_macs == T * 48 * 5
    assert fc.acs == pytest.approx(int(spikes.count_nonzero()) * 5 / B)
    assert fc.macs == 0

    assert rep.total_macs == 1728 + T * 539
    assert rep.total_acs == pytest.approx(fc.acs)
    assert rep.energy_j == pytest.approx(fc.acs * E_AC + (1728 + T * 539) * E_MAC)
    assert rep.energy_j == pytest.approx(sum(r.energy_j for r in rep.rows))
    assert rep.firing_rate == pytest.approx(spikes.mean().item())


@settings(max_examples=12, deadline=None)
@given(
    B=st.integers(1, 3), cin=st.integers(1, 4), cout=st.integers(1, 4), groups=st.sampled_from([1, 2]),
    k=st.integers(1, 3), stride=st.integers(1, 2), size=st.integers(3, 6), density=st.floats(0.0, 1.0),
    seed=st.integers(0, 100),
)
def test_synaptic_counts_property(B, cin, cout, groups, k, stride, size, density, seed):
    cin, cout = cin * groups, cout * groups
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=1, groups=groups)
    lin = nn.Linear(cin, cout)
    x = (torch.rand(B, cin, size, size, generator=g) < density).float()
    out_hw = (size + 2 - k) // stride + 1
    dense = out_hw * out_hw * cout * (cin // groups) * k * k  # per sample, counted position by position
    (row,) = staa.profile(conv, x).rows
    assert row.dense_macs == dense and row.input_binary and row.macs == 0
    assert row.acs == pytest.approx(dense * int(x.count_nonzero()) / x.numel())
    (row,) = staa.profile(conv, x + 0.5).rows
    assert row.macs == dense and row.acs == 0 and not row.input_binary
    xl = x.permute(0, 2, 3, 1)  # [B, H, W, cin]
    (row,) = staa.profile(lin, xl).rows
    assert row.dense_macs == size * size * cin * cout
    assert row.acs == pytest.approx(int(xl.count_nonzero()) * cout / B)


def test_energy_figures_are_configurable():
    net, x = _tiny(), torch.randn(2, 3, 2, 4, 4) * 3
    a = staa.profile(net, x)
    b = staa.profile(net, x, e_ac=1.0, e_mac=10.0)
    assert b.energy_j == pytest.approx(a.total_acs + 10.0 * a.total_macs)
    assert a.energy_j != pytest.approx(b.energy_j)


def test_staa_blocks_off_cost_less():
    assert staa_step_macs(8, 4, 4, pe=False, gc_x=False, gc_h=False, sa=False) == 0
    assert staa_step_macs(8, 4, 4, pe=True, gc_x=False, gc_h=False, sa=False) == 32
    assert staa_step_macs(8, 4, 4, pe=False, gc_x=True, gc_h=False, sa=False) == 3 * 32 + 2 * 32 + 16
    assert staa_step_macs(8, 4, 4, pe=False, gc_x=False, gc_h=False, sa=True) == 2 * 32 + 8 + 2 * 32
    # A neuron with only SA: its row uses the module's own blocks.
    sn = staa.STAALIF(8, 2, gc=False, pe=False, backend="torch")
    rep = staa.profile(sn, torch.randn(2, 5, 8, 2, 2))
    assert rep.rows[0].macs == 2 * staa_step_macs(8, 4, 4, pe=False, gc_x=False, gc_h=False, sa=True)


def test_single_step_staalif_counts_each_call_as_a_step():
    T, B = 3, 2
    sn = randomize(staa.STAALIF(4, T, step_mode="s", backend="torch"), seed=1, scale=0.4)

    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.sn = sn

        def forward(self, x):  # [T, B, 4]
            return torch.stack([self.sn(x[t]) for t in range(x.shape[0])])

    x = torch.randn(T, B, 4) * 2
    rep = staa.profile(Loop(), x)
    (row,) = rep.rows
    assert row.calls == T and rep.T == T and rep.batch_size == B
    assert len(row.firing_rate_per_step) == T
    assert row.macs == T * staa_step_macs(4, 1, 4)
    sn.reset()
    with torch.no_grad():
        want = torch.stack([sn.eval()(x[t]) for t in range(T)])
    assert row.firing_rate_per_step == pytest.approx([want[t].mean().item() for t in range(T)])


class ResBlock(nn.Module):
    """Spiking residual block with a 1x1 shortcut conv, built from the demo's marked LIF."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.sn1 = MultiStepLIF()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.down = nn.Conv2d(cin, cout, 1, bias=False)
        self.sn2 = MultiStepLIF()

    def forward(self, x):  # binary [T, B, cin, H, W]
        f = lambda m, z: m(z.flatten(0, 1)).unflatten(0, z.shape[:2])  # noqa: E731
        return self.sn2(f(self.conv2, self.sn1(f(self.conv1, x))) + f(self.down, x))


def test_residual_block_and_shared_layer_counts():
    torch.manual_seed(0)
    block = ResBlock(2, 4)
    with torch.no_grad():
        for conv in (block.conv1, block.conv2, block.down):
            conv.weight.mul_(4)

    class Twice(nn.Module):  # the same block applied twice: rows accumulate over calls
        def __init__(self):
            super().__init__()
            self.block = block
            self.proj = nn.Conv2d(4, 2, 1, bias=False)

        def forward(self, x):
            y = self.block(x)
            y = self.proj(y.flatten(0, 1)).unflatten(0, y.shape[:2]).gt(0).float()
            return self.block(y)

    T, B = 3, 2
    x = (torch.rand(T, B, 2, 5, 5) < 0.3).float()
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, []).append(i[0].clone()))
             for n, m in (("conv1", block.conv1), ("conv2", block.conv2), ("down", block.down))]
    model = Twice()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()

    rep = staa.profile(model, x)
    rows = {r.name: r for r in rep.rows}
    assert set(rows) == {"block.conv1", "block.sn1", "block.conv2", "block.down", "block.sn2", "proj"}
    assert [r.kind for r in rep.rows].count("spiking") == 2
    per_output = {"conv1": 2 * 9, "conv2": 4 * 9, "down": 2}
    for name, k in per_output.items():
        row = rows["block." + name]
        assert row.calls == 2 and row.input_binary
        dense = sum(T * B * 4 * 25 * k for _ in seen[name]) / B
        acs = sum(T * B * 4 * 25 * k * int(i.count_nonzero()) / i.numel() for i in seen[name]) / B
        assert row.dense_macs == dense
        assert row.acs == pytest.approx(acs)
        assert row.macs == 0
    # proj sees spikes too; the marked LIF costs no MACs of its own.
    assert rows["proj"].input_binary and rows["proj"].macs == 0
    assert rows["block.sn1"].macs == 0 and rows["block.sn1"].calls == 2
    assert rows["block.sn2"].firing_rate_per_step is not None and len(rows["block.sn2"].firing_rate_per_step) == T


def test_layers_inside_a_spiking_layer_are_not_synaptic_rows():
    class Neuron(nn.Module):
        is_spiking_neuron = True
        step_mode = "m"

        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(3, 3)

        def forward(self, x):
            return (self.inner(x) > 0).float()

    net = nn.Sequential(nn.Linear(3, 3), Neuron())
    rep = staa.profile(net, torch.randn(2, 4, 3))
    assert [(r.name, r.kind) for r in rep.rows] == [("0", "synaptic"), ("1", "spiking")]
    assert rep.batch_size == 4


def test_batch_size_without_spiking_layers_and_override():
    net = nn.Sequential(nn.Linear(6, 2))
    x = torch.randn(5, 6)
    assert staa.profile(net, x).rows[0].macs == 12
    assert staa.profile(net, x, batch_size=1).rows[0].macs == 60


def test_report_outputs(tmp_path):
    net, x = _tiny(), torch.randn(2, 3, 2, 4, 4) * 3
    rep = staa.profile(net, x)
    text = str(rep)
    for name in ("conv", "sn", "fc", "total", "STAALIF", "spikes 0.", "real"):
        assert name in text
    rows = rep.to_list()
    assert [r["name"] for r in rows] == ["conv", "sn", "fc"] and rows[1]["macs"] == rep.rows[1].macs
    rep.to_json(tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["rows"] == json.loads(json.dumps(rows))
    assert data["totals"]["energy_j"] == pytest.approx(rep.energy_j)
    assert data["batch_size"] == 3 and data["T"] == 2


def test_lazy_model_is_refused():
    with pytest.raises(ValueError, match="lazy"):
        staa.profile(staa.STAALIF(), torch.randn(2, 1, 3))


def _snapshot(net):
    return {
        "training": [m.training for m in net.modules()],
        "state": {k: v.clone() for k, v in net.state_dict().items()},
        "rng": torch.get_rng_state(),
    }


def test_model_state_flags_and_rng_are_restored():
    T, B = 2, 3
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("conv", nn.Conv2d(2, 3, 3, padding=1))
    net.add_module("bn", nn.BatchNorm2d(3))
    net.add_module("drop", nn.Dropout(0.5))

    class Noise(nn.Module):  # draws random numbers in eval mode too
        def forward(self, x):
            return x + 1e-3 * torch.randn_like(x)

    net.add_module("noise", Noise())

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = net
            self.sn = randomize(staa.STAALIF(3, T, tsrd=0.5, backend="torch"), seed=3, scale=0.4)

        def forward(self, x):
            return self.sn(self.body(x.flatten(0, 1)).unflatten(0, x.shape[:2]))

    model = Wrap().train()
    model.body.drop.eval()  # mixed flags must survive
    x = torch.randn(T, B, 2, 4, 4)
    model(x)  # leaves membrane state behind and updates BN statistics
    v_before, t_before = model.sn.v.clone(), model.sn.t
    before = _snapshot(model)
    rep1 = staa.profile(model, x * 2)
    after = _snapshot(model)
    assert after["training"] == before["training"]
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())
    assert torch.equal(after["rng"], before["rng"])
    assert torch.equal(model.sn.v, v_before) and model.sn.t == t_before
    # the profile itself ran in eval mode from rest: it does not depend on earlier state
    model(torch.randn(T, B, 2, 4, 4))
    assert staa.profile(model, x * 2).to_list() == rep1.to_list()
    # and it matches an eval forward of the same model
    model.eval()
    model.sn.reset()
    with torch.no_grad():
        want = model(x * 2)
    assert rep1.rows[-1].firing_rate == pytest.approx(want.mean().item(), abs=0.02)


@requires_spikingjelly
def test_spikingjelly_nodes_and_containers():
    from spikingjelly.activation_based import layer, neuron

    torch.manual_seed(0)
    net = nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)),
        neuron.LIFNode(step_mode="m"),
        layer.SeqToANNContainer(nn.Conv2d(4, 4, 3, padding=1, bias=False)),
        neuron.IFNode(step_mode="m"),
        layer.Flatten(step_mode="m"),
        layer.Linear(4 * 16, 3, step_mode="m"),
    )
    T, B = 3, 2
    x = torch.randn(T, B, 3, 4, 4) * 2
    outs = {}
    hooks = [net[i].register_forward_hook(lambda m, i, o, k=k: outs.setdefault(k, o.clone()))
             for k, i in (("lif", 1), ("if", 3))]
    net.eval()
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    for m in net.modules():
        if hasattr(m, "reset"):
            m.reset()
    # state left by an earlier (different) input must not leak into the profile, and must survive it
    with torch.no_grad():
        net(torch.randn(T, B, 3, 4, 4) * 5)
    v_before = net[1].v.clone()

    rep = staa.profile(net, x)
    assert torch.equal(net[1].v, v_before)
    rows = {r.name: r for r in rep.rows}
    assert list(rows) == ["0.0", "1", "2.0", "3", "5"]
    assert rows["1"].type == "LIFNode" and rows["3"].type == "IFNode"
    assert rows["1"].firing_rate_per_step == pytest.approx([outs["lif"][t].mean().item() for t in range(T)])
    assert rows["3"].firing_rate == pytest.approx(outs["if"].mean().item())
    assert rows["0.0"].macs == T * 4 * 16 * 27 and not rows["0.0"].input_binary
    assert rows["2.0"].input_binary
    assert rows["2.0"].acs == pytest.approx(T * 4 * 16 * 36 * outs["lif"].mean().item())
    assert rows["5"].type == "Linear" and rows["5"].input_binary
    assert rows["5"].acs == pytest.approx(int(outs["if"].count_nonzero()) * 3 / B)
    assert rep.batch_size == B and rep.T == T


@requires_spikingjelly
def test_spikingjelly_single_step_node_and_staalif_together():
    from spikingjelly.activation_based import neuron

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)
            self.lif = neuron.LIFNode(step_mode="s")
            self.sn = randomize(staa.STAALIF(4, 3, backend="torch"), seed=0, scale=0.4)

        def forward(self, x):  # [T, B, 3]
            s = torch.stack([self.lif(self.fc(x[t])) for t in range(x.shape[0])])
            return self.sn(s * 3)

    x = torch.randn(3, 5, 3) * 3
    rep = staa.profile(Net(), x)
    names = [r.name for r in rep.rows]
    assert names[:2] == ["fc", "lif"] and names[-1] == "sn"
    assert rep.batch_size == 5 and rep.T == 3
    assert len(rep.rows[1].firing_rate_per_step) == 3 and rep.rows[0].calls == 3
