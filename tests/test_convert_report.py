"""The convert report's section on nodes without spatial positions names both input forms."""
import pytest
import torch
from torch import nn

import staa
from staa._convert._report import ConvertReport, FlatNode, ReplacedNode

HEADING = "no spatial positions (input [T, B, C], or [B, C] per step; e.g. after a Linear layer):"


def test_flat_heading_covers_single_step_inputs():
    report = ConvertReport(
        replaced=[ReplacedNode("2", "snntorch._neurons.leaky.Leaky", 12, 10, "s", ("beta=0.5",))],
        skipped=[], flat=[FlatNode("8", "snntorch._neurons.leaky.Leaky", 10, 420, False)])
    lines = str(report).splitlines()
    assert HEADING in lines
    assert "no spatial positions (input [T, B, C], e.g." not in str(report)


def test_snntorch_report_as_printed():
    """The report of a single-step snnTorch model (the one docs/convert.md shows)."""
    snn = pytest.importorskip("snntorch")
    from snntorch import surrogate

    grad = surrogate.fast_sigmoid(slope=25)
    net = nn.Sequential(
        nn.Conv2d(1, 12, 5), nn.MaxPool2d(2), snn.Leaky(beta=0.5, spike_grad=grad, init_hidden=True),
        nn.Flatten(), nn.Linear(12 * 12 * 12, 10),
        snn.Leaky(beta=0.5, spike_grad=grad, init_hidden=True, output=True),
    )
    staa.convert(net, torch.zeros(1, 1, 28, 28), T=10)
    text = str(net.staa_report)
    assert "(input [B, C]): kept by linear='keep'" in text
    assert HEADING in text.splitlines()
