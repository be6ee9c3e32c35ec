"""Spec: the state rules of docs/dropin.md ("State rules")."""
import pytest
import torch

import staa


def _single(**kw):
    torch.manual_seed(0)
    return staa.STAALIF(8, 4, tsrd=0.0, backend="torch", step_mode="s", **kw)


def test_dtype_change_mid_sequence_continues_the_sequence():
    m = _single()
    x = torch.randn(4, 2, 8, 3, 3, dtype=torch.float64)
    ref = _single().double()
    expected = torch.stack([ref(x[t]) for t in range(4)])
    first = m(x[0].float())
    m.double()
    assert m.t == 1 and m.v.dtype == torch.float64  # the state moved with the module
    rest = torch.stack([m(x[t]) for t in range(1, 4)])
    assert m.t == 4
    # the first step ran in float32, so compare the sequence position, not bits: same step count, no restart
    assert rest.shape == expected[1:].shape and first.dtype == torch.float32


def test_to_moves_the_state():
    m = _single()
    m(torch.randn(2, 8, 3, 3))
    m.to(torch.float64)
    assert m.v.dtype == torch.float64 and m.t == 1


def test_single_step_after_a_multi_step_call_asks_for_reset():
    m = staa.STAALIF(8, 4, tsrd=0.0)
    m(torch.randn(4, 2, 8, 3, 3))
    assert m.t == 4
    m.step_mode = "s"
    with pytest.raises(ValueError, match=r"t=4 .*T=4 steps; call reset\(\)"):
        m(torch.randn(2, 8, 3, 3))
    m.reset()
    assert m(torch.randn(2, 8, 3, 3)).shape == (2, 8, 3, 3) and m.t == 1


def test_a_new_batch_size_mid_sequence_asks_for_reset():
    m = _single()
    m(torch.randn(2, 8, 3, 3))
    with pytest.raises(ValueError, match=r"does not match the stored state .* call reset\(\)"):
        m(torch.randn(3, 8, 3, 3))


def test_a_failed_call_changes_nothing():
    m = _single()
    m(torch.randn(2, 8, 3, 3))
    t, h = m.t, m.v.clone()
    with pytest.raises(ValueError):
        m(torch.randn(2, 7, 3, 3))
    assert m.t == t and torch.equal(m.v, h)


def test_inference_mode_state_then_training_asks_for_reset():
    m = _single()
    with torch.inference_mode():
        m(torch.randn(2, 8, 3, 3))
    with pytest.raises(RuntimeError, match=r"inference_mode.*call reset\(\)"):
        m(torch.randn(2, 8, 3, 3, requires_grad=True))


def test_detach_keeps_the_step_and_cuts_the_graph():
    m = _single()
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    m(x)
    m.detach()
    assert m.t == 1 and not m.v.requires_grad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_single_step_equals_multi_step(dtype):
    torch.manual_seed(0)
    multi = staa.STAALIF(8, 4, tsrd=0.0)
    single = staa.STAALIF(8, 4, tsrd=0.0, step_mode="s")
    single.load_state_dict(multi.state_dict())
    x = torch.randn(4, 2, 8, 5, 5)
    with torch.autocast("cpu", dtype=dtype):
        a = multi(x)
        b = torch.stack([single(x[t]) for t in range(4)])
    assert torch.equal(a, b)


def test_a_lazy_layer_first_called_under_inference_mode_can_train():  # U4, as nn.LazyLinear
    m = staa.STAALIF(tsrd=0.0)
    with torch.inference_mode():
        m(torch.randn(3, 2, 8))
    assert not any(p.is_inference() for p in m.parameters())
    x = torch.randn(3, 2, 8, requires_grad=True)
    m(x).sum().backward()
    assert x.grad is not None and m.pos.grad is not None
    single = staa.STAALIF(T=3, step_mode="s")
    with torch.inference_mode():
        single(torch.randn(2, 8))
    single.reset()
    single(torch.randn(2, 8, requires_grad=True)).sum().backward()


def test_state_without_pe_continues_after_a_multi_step_call():  # U6: no pos[T] to run out of
    m = staa.STAALIF(8, 4, pe=False, tsrd=0.0)
    m(torch.randn(4, 2, 8))
    m.step_mode = "s"
    assert m(torch.randn(2, 8)).shape == (2, 8) and m.t == 5
