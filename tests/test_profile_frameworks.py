"""staa.profile on snnTorch and single-step spikingjelly models, original and converted, against counts
made by hand over T steps; the multi-step and single-step profiles of one network agree."""
import copy
import warnings

import pytest
import torch
from torch import nn

import staa
from conftest import requires_snntorch, requires_spikingjelly

T = 4
OFF = dict(gc=False, pe=False, sa=False, tsrd=0.0)  # STAA-LIF without its blocks: an IF neuron
# Two inputs of 1 into a 2 -> 2 Linear with weight 0.6 I: each neuron gets 0.6 per step, so an IF
# neuron with threshold 1 (soft or hard reset) has membrane 0.6, 1.2 (spike), 0.8 or 0.6, 1.4 or 1.2
# (spike): spikes at steps 2 and 4, rate 0.5. The Linear's input is binary (all ones): dense MACs
# 2 x 2 = 4 per step, all ACs, so 16 ACs and 0 MACs per sample over T = 4.
RATES = [0.0, 1.0, 0.0, 1.0]


def _linear():
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(0.6 * torch.eye(2))
    return lin


def _check(report, neuron_type):
    rows = {r.name: r for r in report.rows}
    assert report.T == T and report.batch_size == 3
    assert rows["1"].type == neuron_type and rows["1"].kind == "spiking"
    assert rows["1"].firing_rate_per_step == RATES and rows["1"].firing_rate == 0.5
    assert (rows["0"].acs, rows["0"].macs, rows["0"].dense_macs) == (16, 0, 16)
    assert report.total_acs == 16


@requires_snntorch
def test_snntorch_original_and_converted_by_hand():
    import snntorch as snn

    net = nn.Sequential(_linear(), snn.Leaky(beta=1.0, threshold=1.0, init_hidden=True))
    x = torch.ones(3, 2)
    _check(staa.profile(net, x, steps=T), "Leaky")
    conv = staa.convert(copy.deepcopy(net), x, T=T, linear="convert", **OFF)
    report = staa.profile(conv, x, steps=T)
    _check(report, "STAALeaky")  # the row is named as the user's model names the layer, not "1.staa"
    assert report.rows[1].macs == 0  # every block off: no aggregator MACs
    # with the position encoding on, the aggregator adds C * P = 2 MACs per step and sample
    pe = staa.convert(copy.deepcopy(net), x, T=T, linear="convert", **{**OFF, "pe": True})
    assert staa.profile(pe, x, steps=T).rows[1].macs == 2 * T


@requires_snntorch
def test_other_snntorch_neurons_get_spiking_rows():
    import snntorch as snn

    for neuron in (snn.Synaptic(alpha=0.5, beta=0.5, init_hidden=True), snn.Alpha(alpha=0.6, beta=0.5,
                   init_hidden=True), snn.Lapicque(beta=0.9, init_hidden=True),
                   snn.RLeaky(beta=0.9, linear_features=2, init_hidden=True)):
        net = nn.Sequential(nn.Linear(2, 2), neuron)
        report = staa.profile(net, torch.rand(3, 2) * 4, steps=T)
        row = report.rows[1]
        assert row.kind == "spiking" and row.type == type(neuron).__name__ and len(row.firing_rate_per_step) == T


@requires_spikingjelly
def test_single_step_spikingjelly_original_and_converted_by_hand():
    from spikingjelly.activation_based import neuron

    net = nn.Sequential(_linear(), neuron.IFNode(step_mode="s"))
    x = torch.ones(3, 2)
    _check(staa.profile(net, x, steps=T), "IFNode")
    conv = staa.convert(copy.deepcopy(net), x, T=T, linear="convert", **OFF)
    _check(staa.profile(conv, x, steps=T), "STAALIF")
    # a [T, B, ...] sequence gives the same counts
    _check(staa.profile(conv, x.expand(T, 3, 2), sequence=True), "STAALIF")


@requires_spikingjelly
def test_single_step_without_steps_says_how_to_pass_T():
    from spikingjelly.activation_based import neuron

    net = nn.Sequential(_linear(), neuron.IFNode(step_mode="s"))
    with pytest.warns(UserWarning, match=r"single-step.*T=1 step; pass steps=T"):
        report = staa.profile(net, torch.ones(3, 2))
    assert report.T == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        staa.profile(net, torch.ones(3, 2), steps=1)  # asked for one step: no warning
    with pytest.raises(ValueError, match="steps=3 but the sequence has T=4"):
        staa.profile(net, torch.ones(4, 3, 2), sequence=True, steps=3)


@requires_spikingjelly
def test_multi_step_and_single_step_profiles_agree():
    from spikingjelly.activation_based import functional, layer, neuron

    def net(mode):
        torch.manual_seed(0)
        m = nn.Sequential(layer.Conv2d(2, 4, 3, step_mode=mode), neuron.LIFNode(step_mode=mode),
                          layer.Flatten(step_mode=mode), layer.Linear(4 * 16, 3, step_mode=mode),
                          neuron.IFNode(step_mode=mode))
        functional.set_step_mode(m, mode)
        return m

    x = torch.rand(T, 3, 2, 6, 6) * 2
    multi = staa.profile(net("m"), x)
    single = staa.profile(net("s"), x, sequence=True)
    assert multi.T == single.T == T
    for a, b in zip(multi.rows, single.rows):
        assert (a.name, a.kind) == (b.name, b.kind)
        assert a.firing_rate_per_step == pytest.approx(b.firing_rate_per_step)
        assert (a.acs, a.macs) == pytest.approx((b.acs, b.macs))
    assert multi.energy_j == pytest.approx(single.energy_j)
    assert multi.rows[1].firing_rate > 0


def test_nan_outputs_are_not_spikes_and_warn():
    lif = staa.STAALIF(2, T, **OFF)
    net = nn.Sequential(nn.Identity(), lif)
    x = torch.zeros(T, 1, 2, 2, 2)  # no input: no spikes
    x[0, 0, 0, 0, 0] = float("nan")
    with pytest.warns(UserWarning, match=r"'1' \(\d+\) output NaN values; NaN is not counted as a spike"):
        report = staa.profile(net, x)
    assert report.rows[0].firing_rate == 0.0


def test_compare_puts_two_reports_side_by_side():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 4), staa.STAALIF(4, T, tsrd=0.0))
    b = nn.Sequential(nn.Linear(4, 4), staa.STAALIF(4, T, tsrd=0.0, gc=False))
    x = torch.rand(T, 2, 4) * 3
    ra, rb = staa.profile(a, x), staa.profile(b, x)
    text = ra.compare(rb, labels=("A", "B"))
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["layer", "type", "rate", "A"]
    row = next(line for line in lines if line.startswith("1 "))
    assert f"{ra.rows[1].firing_rate:.3f}" in row and f"{rb.rows[1].firing_rate:.3f}" in row
    total = next(line for line in lines if line.startswith("total"))
    assert total.split()[1:3] == [f"{ra.firing_rate:.3f}", f"{rb.firing_rate:.3f}"]
    assert "A over T=4, B over T=4" in lines[-1]
