"""Spec: under torch.compile the errors of eager calls stay the same (docs/dropin.md, "Bad values")."""
import pytest
import torch

import staa
from staa.functional import staa_lif

PAST_T = r"single-step call at t=3 but this STAALIF has T=3 steps; call reset\(\)"


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_stepping_past_T_compiled_gives_the_eager_message(backend):  # U5, torch backend
    torch._dynamo.reset()
    m = staa.STAALIF(4, 3, step_mode="s", backend="torch")
    step = torch.compile(m, fullgraph=True, backend=backend)
    x = torch.randn(2, 4)
    for _ in range(3):
        step(x)
    with pytest.raises(ValueError, match=PAST_T):
        step(x)
    m.reset()
    with pytest.raises(ValueError, match=PAST_T):  # eager: the same text
        for _ in range(4):
            m(x)


def test_compiled_functional_tensor_t0_is_checked_and_differentiable():
    torch._dynamo.reset()
    m = staa.STAALIF(4, 3, backend="torch").double()
    with torch.no_grad():
        m.pos.normal_()
    fn = torch.compile(lambda x, t: staa_lif(x, m.params(), m.cfg, t0=t)[1], fullgraph=True, backend="aot_eager")
    x = torch.randn(1, 2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=PAST_T):
        fn(x, torch.tensor(3))
    (g,) = torch.autograd.grad(fn(x, torch.tensor(1)).sum(), m.pos)
    (want,) = torch.autograd.grad(staa_lif(x, m.params(), m.cfg, t0=1)[1].sum(), m.pos)
    assert g[1].abs().sum() > 0 and torch.allclose(g, want)


@pytest.mark.parametrize("fullgraph", [False, True])
def test_inference_mode_state_then_a_compiled_step_asks_for_reset(fullgraph):  # U10
    torch._dynamo.reset()
    m = staa.STAALIF(4, 3, step_mode="s", backend="torch")
    with torch.inference_mode():
        m(torch.randn(2, 4))
    step = torch.compile(m, fullgraph=fullgraph, backend="aot_eager")
    # with fullgraph=True torch wraps the raise in its own error, which quotes the message
    with pytest.raises(Exception, match=r"(?s)inference_mode.*call reset\(\)"):
        step(torch.randn(2, 4, requires_grad=True))
    m.reset()
    step(torch.randn(2, 4, requires_grad=True)).sum().backward()


def test_check_finite_works_under_fullgraph_compile():
    torch._dynamo.reset()
    m = staa.STAALIF(4, 3, check_finite=True, backend="torch")
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 2, 4, requires_grad=True)
    torch.manual_seed(0)
    got = compiled(x)
    torch.manual_seed(0)
    assert torch.equal(got, m(x))
    (g,) = torch.autograd.grad(got.sum(), x)
    assert g.shape == x.shape
    bad = torch.randn(3, 2, 4)
    bad[1, 0, 2] = float("nan")
    with pytest.raises(ValueError, match=r"check_finite=True\): the input has 1 non-finite value"):
        compiled(bad)
