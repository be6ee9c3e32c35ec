"""The main job ``python -m staa`` and its embedded network."""
import json
import os
import subprocess
import sys

import pytest
import torch

import staa
from staa import _demo
from staa.__main__ import main

from conftest import requires_spikingjelly

SMALL = ["--T", "2", "--batch", "2", "--width", "4", "--repeat", "1", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _no_backend_override(monkeypatch):
    monkeypatch.delenv("STAA_BACKEND", raising=False)


def test_main_json_small(capsys):
    assert main(SMALL + ["--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "[5/5" in captured.err  # progress goes to stderr, stdout stays pure JSON
    assert result["backend"] == staa.backend_for(torch.zeros(1), "auto") == "torch"
    assert result["config"]["T"] == 2 and result["config"]["width"] == 4

    lif, snn = _demo.build_pair(width=4, T=2)
    n_staa = sum(p.numel() for m in snn.modules() if isinstance(m, staa.STAALIF) for p in m.parameters())
    assert result["parameters"]["added"] == n_staa > 0
    assert result["parameters"]["lif"] == sum(p.numel() for p in lif.parameters())

    for key in ("lif", "staa"):
        t = result["time_ms"][key]
        assert t["forward_ms"] > 0 and t["forward_backward_ms"] > 0
        saved = result["saved_for_backward"][key]
        # every neuron output element of one training forward is one neuron-step
        steps = 2 * 2 * (4 * 32 * 32 * 3 + 8 * 16 * 16 * 2 + 16 * 8 * 8 * 2)
        assert saved["neuron_steps"] == steps
        assert saved["bytes_per_neuron_step"] == saved["neuron_bytes"] / steps > 0
        assert saved["network_bytes"] >= saved["neuron_bytes"]
        prof = result["profile"][key]
        assert prof["T"] == 2 and prof["batch_size"] == 2
        kinds = [r["kind"] for r in prof["rows"]]
        assert kinds.count("spiking") == 7 and kinds.count("synaptic") == 10
    # the LIF holds V (4 B) at every step and 1 - S (4 B) for the reset of every step but the last,
    # whose reset result is dropped with its graph: (8 + 4) / 2 bytes per neuron-step for T=2
    assert result["saved_for_backward"]["lif"]["bytes_per_neuron_step"] == 6.0
    lif_rows = {r["name"]: r for r in result["profile"]["lif"]["rows"]}
    staa_rows = {r["name"]: r for r in result["profile"]["staa"]["rows"]}
    assert lif_rows["sn0"]["macs"] == 0 and staa_rows["sn0"]["macs"] > 0
    assert not staa_rows["stem.0"]["input_binary"] and staa_rows["block1.conv1.0"]["input_binary"]
    # identical stems: the first layer sees the same images in both networks
    assert lif_rows["stem.0"] == staa_rows["stem.0"]


def test_main_tables(capsys):
    assert main(SMALL) == 0
    out = capsys.readouterr().out
    for text in ("parameters", "forward, eval (ms)", "forward+backward, train (ms)", "saved for backward per neuron-step",
                 "staa.profile, LIF network", "staa.profile, STAALIF network", "STAALIF backend: torch", "MultiStepLIF"):
        assert text in out


def test_main_refuses_bad_flags(capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(SMALL + ["--backend", "triton"]) == 2
    assert "backend='triton' cannot run" in capsys.readouterr().err
    assert main(["--T", "0"]) == 2
    assert "--T must be >= 1" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    env = dict(os.environ, STAA_BACKEND="")
    proc = subprocess.run([sys.executable, "-m", "staa", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0
    for flag in ("--T", "--batch", "--width", "--device", "--backend", "--json"):
        assert flag in proc.stdout


def test_demo_networks_share_weights_and_shapes():
    lif, snn = _demo.build_pair(width=4, T=3, seed=1)
    staa_state = snn.state_dict()
    for k, v in lif.state_dict().items():
        assert torch.equal(v, staa_state[k])
    img = _demo.example_images(2)
    for net in (lif, snn):
        _demo.calibrate_batchnorm(net, img)
        assert net.training
        with torch.no_grad():
            assert net.eval()(img).shape == (2, 10)
    with pytest.raises(ValueError, match="images"):
        lif(torch.zeros(3, 2, 3, 32, 32))


def test_multistep_lif_by_hand():
    lif = _demo.MultiStepLIF(tau=2.0)
    x = torch.tensor([[1.5], [0.4], [1.8], [0.0]]).requires_grad_()
    s = lif(x)
    # V0 = 0.75; V1 = 0.75 + (0.4 - 0.75)/2 = 0.575; V2 = 0.575 + (1.8 - 0.575)/2 = 1.1875 -> spike, H = 0;
    # V3 = 0
    assert s.flatten().tolist() == [0.0, 0.0, 1.0, 0.0]
    s.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@requires_spikingjelly
def test_multistep_lif_matches_spikingjelly_lifnode():
    from spikingjelly.activation_based import neuron

    x = torch.randn(5, 3, 4, 2, 2) * 2
    sj = neuron.LIFNode(tau=2.0, v_reset=0.0, step_mode="m")
    assert torch.equal(_demo.MultiStepLIF()(x), sj(x))


def test_profile_does_not_depend_on_the_timing_rounds(capsys):
    """Timing and memory measurement run training forwards (BatchNorm statistics, TSRD draws);
    the profile that follows must see the network as it was before them."""
    totals = []
    for repeat in ("1", "3"):
        args = [a if a != "1" else repeat for a in SMALL] + ["--json"]
        assert main(args) == 0
        result = json.loads(capsys.readouterr().out)
        totals.append({k: v["totals"] for k, v in result["profile"].items()})
    assert totals[0] == totals[1]
