"""Spec: STAALIF with the tools around a PyTorch layer (docs/dropin.md, "With other tools"):
torch.export, AveragedModel (EMA), torch.utils.checkpoint, gradient accumulation."""
import copy
import warnings

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.checkpoint import checkpoint

import staa


def _layer(step_mode="m", **kw):
    torch.manual_seed(0)
    kw = {"tsrd": 0.0, **kw}
    return staa.STAALIF(8, 3, backend="torch", step_mode=step_mode, **kw)


# ---------------------------------------------------------------- torch.export
@pytest.mark.parametrize("strict", [False, True])
def test_export_of_a_multi_step_model_gives_the_eager_spikes(strict):
    net = torch.nn.Sequential(torch.nn.Flatten(0, 1), torch.nn.Conv2d(2, 8, 3, padding=1),
                              torch.nn.Unflatten(0, (3, 2)), _layer(tsrd=0.3)).eval()
    x = torch.randn(3, 2, 2, 5, 5)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*assigned during export")  # no state written while exporting
        ep = torch.export.export(net, (x,), strict=strict)
    y = torch.randn(3, 2, 2, 5, 5)
    assert torch.equal(ep.module()(y), net(y)) and net[3].v.shape == (2, 8, 5, 5)


def test_export_of_a_single_step_layer_says_to_export_multi_step():
    with pytest.raises(Exception, match=r"torch\.export of a single-step STAALIF.*multi-step mode"):
        torch.export.export(_layer("s").eval(), (torch.randn(2, 8),))


# ---------------------------------------------------------------- AveragedModel / EMA
def test_ema_with_averaged_model_tracks_the_weights():
    m = _layer(tsrd=0.2)
    ema = AveragedModel(m, multi_avg_fn=get_ema_multi_avg_fn(0.5))
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    for _ in range(2):
        x = torch.randn(3, 2, 8) + 1.0
        m(x).sum().backward()
        opt.step()
        opt.zero_grad()
        ema.update_parameters(m)
    for (k, v), e in zip(m.state_dict().items(), ema.module.state_dict().values()):
        # EMA after two updates: the first copies, the second averages with decay 0.5
        assert e.shape == v.shape
    assert not torch.equal(m.sa.fc1.weight, before["sa.fc1.weight"])
    assert ema(torch.randn(3, 2, 8)).shape == (3, 2, 8)


def test_copies_of_a_layer_mid_sequence_take_the_state_detached():
    m = _layer("s")
    x = torch.randn(2, 8, requires_grad=True)
    m(x)
    assert m.v.requires_grad
    for c in (copy.deepcopy(m), AveragedModel(m).module):
        assert c.t == 1 and torch.equal(c.v, m.v) and not c.v.requires_grad
        assert c(torch.randn(2, 8)).shape == (2, 8) and c.t == 2
    assert m.v.requires_grad  # the original keeps its graph


def test_averaged_model_of_a_lazy_layer_needs_the_layer_sized_first():
    lazy = staa.STAALIF()
    ema = AveragedModel(lazy)
    lazy(torch.randn(3, 2, 8))
    with pytest.raises(ValueError, match=r"uninitialized parameter.*LazyModule"):
        ema.update_parameters(lazy)  # torch's own rule for lazy modules, as for nn.LazyLinear


# ---------------------------------------------------------------- torch.utils.checkpoint
@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpoint_of_a_multi_step_call_gives_the_same_gradients(reentrant):
    m = _layer(tsrd=0.5)
    x = torch.randn(3, 2, 8, 3, 3, requires_grad=True)
    torch.manual_seed(1)
    y = checkpoint(m, x, use_reentrant=reentrant)  # the recomputation redraws the same TSRD mask
    y.sum().backward()
    g = x.grad.clone()
    x.grad = None
    torch.manual_seed(1)
    y2 = m(x)
    y2.sum().backward()
    assert torch.equal(y, y2) and torch.equal(g, x.grad)


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpoint_of_a_whole_single_step_sequence_gives_the_same_gradients(reentrant):
    m = _layer("s")
    x = torch.randn(3, 2, 8, requires_grad=True)

    def sequence(x):
        m.reset()
        return torch.stack([m(x[t]) for t in range(3)])

    checkpoint(sequence, x, use_reentrant=reentrant).pow(2).sum().backward()
    g = x.grad.clone()
    x.grad = None
    sequence(x).pow(2).sum().backward()
    assert torch.equal(g, x.grad) and m.t == 3


def test_checkpoint_of_single_steps_raises_instead_of_wrong_gradients():
    m = _layer("s", pe=False)  # without pe nothing else would stop the recomputation
    x = torch.randn(3, 2, 8, requires_grad=True)
    out = torch.stack([checkpoint(m, x[t], use_reentrant=False) for t in range(3)])
    with pytest.raises(RuntimeError, match=r"checkpoint is recomputing a single step.*whole sequence"):
        out.sum().backward()


# ---------------------------------------------------------------- gradient accumulation
@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_gradient_accumulation_across_sequences_sums_the_gradients(step_mode):
    m = _layer(step_mode)
    xs = [torch.randn(3, 2, 8) + 0.8 for _ in range(2)]

    def run(x):
        m.reset()
        return m(x) if step_mode == "m" else torch.stack([m(x[t]) for t in range(3)])

    for x in xs:  # two backward passes into the same .grad
        (run(x) * torch.linspace(0.5, 2, 8)).sum().backward()
    accumulated = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    sum((run(x) * torch.linspace(0.5, 2, 8)).sum() for x in xs).backward()  # one pass over both
    for n, p in m.named_parameters():
        torch.testing.assert_close(accumulated[n], p.grad, rtol=1e-6, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in accumulated.values())


def test_truncated_bptt_with_detach_accumulates_over_chunks():
    m = _layer("s")
    x = torch.randn(3, 2, 8) + 0.8
    m.reset()
    for t in range(3):  # one backward per step; detach() keeps H and t, cuts the graph
        m(x[t]).sum().backward()
        m.detach()
    assert m.t == 3 and all(p.grad is not None for p in m.parameters())
