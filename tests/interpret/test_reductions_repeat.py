"""Bitwise repeatability of the Triton route's blocked reductions under TRITON_INTERPRET=1, with
the blocks and ranges shrunk so that every sum spans several (``triton_cases.SPLIT_SMALL``; parity
of the same sums: tests/interpret/test_reductions.py)."""
from __future__ import annotations

import pytest
import torch

from triton_cases import SPLIT_CASE, SPLIT_SMALL, backward, build_case, flat_grads, forward, launcher_settings
from triton_checks import check_deterministic_backward

BOTH_PATHS = ["per_step", "persistent"]
T, B, C, P, MAX_TILE = (SPLIT_CASE[k] for k in ("T", "B", "C", "P", "max_tile"))


@pytest.mark.parametrize("path", BOTH_PATHS)
def test_split_sums_bitwise_repeatable(path):
    """Two backward passes, the second with its buffers at other addresses: bit for bit."""
    with launcher_settings(max_tile=MAX_TILE, **SPLIT_SMALL):
        assert check_deterministic_backward(T, B, C, P, drop=[1], margin=0.0, path=path) == 22


def test_paths_agree_bitwise_split_sums():
    """Both loop paths run the same blocked sums in the same order: equal gradients."""
    with launcher_settings(max_tile=MAX_TILE, **SPLIT_SMALL) as launch:
        x, params, drop, kw, _, _, h0 = build_case(T, B, C, P, drop=[1])
        gs = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
        grads = {}
        for path in BOTH_PATHS:
            _, _, _, u, gate, stats = forward(launch, x, drop, h0, params, kw, store_v_seq=False, path=path,
                                              keep_stats=True)
            grads[path] = flat_grads(backward(launch, gs, None, x, drop, h0, params, u, gate, kw, path=path,
                                              stats=stats))
    differ = [i for i, (a, b) in enumerate(zip(grads["per_step"], grads["persistent"])) if not torch.equal(a, b)]
    assert not differ, f"gradients {differ} differ between the loop paths"
