"""Spec on a GPU: stepping past T under torch.compile on the Triton path (docs/dropin.md, "Bad values")."""
import pytest
import torch

import staa

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the Triton kernels)")


def test_compiled_triton_single_step_past_T_gives_nan_spikes_not_a_device_assert():
    torch._dynamo.reset()
    m = staa.STAALIF(4, 3, step_mode="s", backend="triton", tsrd=0.0).cuda()
    step = torch.compile(m, fullgraph=True)
    x = torch.randn(2, 4, 3, 3, device="cuda")
    for _ in range(3):
        assert not step(x).isnan().any()
    past = step(x)  # t = 3: no position-encoding row; no host synchronisation to raise from
    torch.cuda.synchronize()
    assert past.isnan().all()
    m.reset()
    assert not step(x).isnan().any()  # the CUDA context is still usable
    with pytest.raises(ValueError, match=r"single-step call at t=3 but this STAALIF has T=3 steps"):
        for _ in range(4):
            m(x)  # eager: the host counter raises
