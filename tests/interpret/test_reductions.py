"""The Triton route's blocked reductions under TRITON_INTERPRET=1 (a pytest process of its own,
see tests/interpret/conftest.py): parity with the reference.

The sums whose length grows with the batch or the plane are split into fixed blocks: the MLP
kernels add a sample's per-tile partials in ``[BLOCK_NP, BLOCK_CC]`` blocks
(``launch.partial_block``), and the parameter gradients add their rows in ranges of 16-row blocks,
one range per program, then the ranges' partials (``launch.weight_config``). At the small shapes a
test can afford, the shipped settings give one block and one range; these tests shrink them
(``triton_cases.SPLIT_SMALL``) so that every sum spans several blocks and ranges, with a partial
last block, on both loop paths, for every surrogate kind, and for a single row. Bitwise
repeatability of the same sums: tests/interpret/test_reductions_repeat.py.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triton_cases import SPLIT_CASE, SPLIT_SMALL, launcher_settings
from triton_checks import check_parity

SURROGATES = ["rect", "atan", "sigmoid", "fast_sigmoid"]
BOTH_PATHS = ["per_step", "persistent"]
T, B, C, P, MAX_TILE = (SPLIT_CASE[k] for k in ("T", "B", "C", "P", "max_tile"))


def test_small_settings_split_every_sum():
    """The forced settings really give several blocks and ranges, with partial last blocks."""
    with launcher_settings(max_tile=MAX_TILE, **SPLIT_SMALL) as launch:
        tc = launch.tile_config(C, P)
        h = max(C // 4, 4)  # triton_cases.make_params' hidden width
        block_cc, _, _ = launch.mlp_config(C, h, h, h)
        block_np = launch.partial_block(tc.NP, block_cc)
        wc = launch.weight_config(T, B, tc.NP, C, (h, h, h), T + 1, has_gc=True, has_pos=True)
    assert tc.NP == 3 and block_np == 2  # 2 blocks of tiles, the last one half empty
    assert (T * B) % 16 != 0 and (wc.NSM, wc.RBM) == (2, 2)  # 33 rows: 2 ranges of 2 blocks
    assert (wc.NSV, wc.RBV) == (4, 2)  # 99 key-gradient rows: 4 ranges of 2 blocks
    assert wc.BLOCK_S == 4  # pass 2 adds 4 partials per element


@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("path", BOTH_PATHS)
def test_parity_split_sums(path, surrogate):
    # float64 for two kinds (tolerance 1e-10), float32 for the others; h0 and grad_h_last on,
    # a dropped step.
    dtype = "float64" if surrogate in ("atan", "sigmoid") else "float32"
    with launcher_settings(**SPLIT_SMALL):
        run = check_parity(T, B, C, P, max_tile=MAX_TILE, dtype=dtype, surrogate=surrogate, h0=True,
                           grad_h_last=True, drop=[1], fwd_path=path, bwd_path=path)
    assert run.np == 3
    assert ("staa_bwd_persistent_kernel" in run.bwd_kernels) == (path == "persistent")
    assert "staa_bwd_weights_sum_kernel" in run.bwd_kernels


@pytest.mark.parametrize("path", BOTH_PATHS)
@pytest.mark.parametrize("shipped", [False, True], ids=["small-blocks", "shipped-blocks"])
def test_parity_single_row(path, shipped):
    # T = B = 1: one row in every parameter-gradient sum, one sample's tiles in the MLP sums.
    with launcher_settings(**(SPLIT_SMALL if not shipped else {})):
        check_parity(1, 1, C, P, max_tile=MAX_TILE, dtype="float64", h0=True, grad_h_last=True, fwd_path=path,
                     bwd_path=path)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 5000), cap=st.integers(1, 64), least=st.integers(1, 4))
def test_row_ranges_cover_every_row_once(rows, cap, least):
    """``_splits``: ranges of whole 16-row blocks, at most ``cap`` of them, covering every row,
    none empty; no more ranges than ``least`` blocks fill, and while the cap is not reached no range
    is longer than ``least`` blocks (so a program's loads do not grow with the rows)."""
    with launcher_settings(weight_splits=(least, cap, cap)) as launch:
        n, rb = launch._splits(rows, cap)
    span = rb * launch.WEIGHT_ROW_BLOCK
    assert 1 <= n <= cap
    assert (n - 1) * span < rows <= n * span  # the last range holds at least one row
    per = least * launch.WEIGHT_ROW_BLOCK
    assert n <= -(-rows // per)
    if -(-rows // per) <= cap:
        assert rb <= least
