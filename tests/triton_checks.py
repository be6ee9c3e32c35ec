"""Assertions on the Triton launchers that both the interpreter tests (tests/interpret/) and the
GPU tests (tests/test_triton_cuda.py) make; the cases come from tests/triton_cases.py.

Each check asserts and, where a test asserts more (which kernels ran, how the plane was tiled),
returns what it saw.
"""
from __future__ import annotations

from typing import List, NamedTuple

import torch

from triton_cases import (MARGIN, backward, build_case, flat_grads, flat_params, forward, launcher_settings,
                          on_device, poisoned, recorded_launches, reference, tolerances)


class Mismatches:
    """Collects every tensor outside tolerance, so one failure names them all."""

    def __init__(self):
        self.failures: List[str] = []

    def close(self, name, got, want, tol):
        try:
            torch.testing.assert_close(got.double(), want.double(), rtol=tol[0], atol=tol[1])
        except AssertionError as exc:
            self.failures.append(f"{name}: {exc}")

    def expect(self, ok, message):
        if not ok:
            self.failures.append(message)

    def check(self):
        assert not self.failures, "\n".join(self.failures)


class ParityRun(NamedTuple):
    fwd_kernels: List[str]  # the kernels the forward launched, sorted, once each
    bwd_kernels: List[str]  # the backward's (empty with grads=False)
    np: int  # plane tiles per (sample, channel block)
    grads: List[str]  # the gradients compared, by name


def _nan_free(named):
    bad = [n for n, t in named if t is not None and bool(torch.isnan(t).any())]
    assert not bad, f"NaN in {bad}"


def check_parity(T, B, C, P, *, max_tile=None, store_v_seq=True, grads=True, poison=True, device="cpu",
                 fwd_path=None, bwd_path=None, grad_h_last=False, keep_stats=True, margin=MARGIN, **case) -> ParityRun:
    """The launchers against autograd of the reference on one case: spikes equal, H_{T-1}, the
    V sequence and V = u * gate within the state tolerance, then (``grads``) every gradient,
    grad_h0 too when the case has an ``h0`` (``grad_h_last``: the loss also uses H_{T-1}).

    ``keep_stats`` (the op's route): the forward keeps its per-step reductions and the backward
    takes them; False: the backward rebuilds them from x and u. ``fwd_path`` / ``bwd_path`` go
    to the launchers as ``path`` (None: their rule)."""
    with launcher_settings(max_tile=max_tile) as launch:
        x, params, drop, kw, got_margin, v_ref, h0 = build_case(T, B, C, P, margin=margin, **case)
        assert got_margin >= margin, f"inputs too close to a switching point: margin {got_margin}"
        x, drop, params, h0, v_ref = on_device(device, x, drop, params, h0, v_ref)
        tol = tolerances(x.dtype)
        leaves = [x.requires_grad_(True)] + ([h0.requires_grad_(True)] if h0 is not None else [])
        leaves += [p.requires_grad_(True) for p in flat_params(params)]
        ref_s, ref_h = reference(x, params, drop, kw, h0)
        h0_in = h0.detach() if h0 is not None else None

        with recorded_launches() as fwd_kernels, poisoned(poison):
            out = forward(launch, x.detach(), drop, h0_in, params, kw, store_v_seq=store_v_seq, path=fwd_path,
                          keep_stats=keep_stats)
        stats = out[5] if keep_stats else None
        spikes, h_last, v_seq, u, gate = out[:5]
        _nan_free(zip(("spikes", "h_last", "v_seq", "u", "gate"), out[:5]))
        assert spikes.dtype == x.dtype, f"spikes dtype {spikes.dtype}, expected {x.dtype}"
        flips = int((spikes != ref_s.detach()).sum())
        assert flips == 0, f"{flips} spikes differ from the reference's"
        bad = Mismatches()
        bad.close("h_last", h_last, ref_h[-1].detach(), tol["state"])
        bad.expect(h0 is None or h_last.data_ptr() != h0.data_ptr(), "h_last aliases h0")
        if store_v_seq:
            bad.close("v_seq", v_seq, ref_h.detach(), tol["state"])
        # The contract: V_t == u_t * gate_t, and gate == 1 at dropped steps.
        bad.close("u*gate", u * gate[..., None], v_ref.to(u.dtype), tol["state"])
        bad.expect(not bool(drop.any()) or bool((gate[drop] == 1).all()), "gate is not exactly 1 at dropped steps")
        bad.check()
        np_tiles = launch.tile_config(C, P).NP
        if not grads:
            return ParityRun(sorted(set(fwd_kernels)), [], np_tiles, [])

        g = torch.Generator().manual_seed(123)
        gs = torch.randn(ref_s.shape, generator=g, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
        ghl = None
        loss = (ref_s * gs).sum()
        if grad_h_last:
            ghl = torch.randn(ref_h.shape[1:], generator=g, dtype=torch.float64).to(device=x.device,
                                                                                   dtype=ref_h.dtype)
            loss = loss + (ref_h[-1] * ghl).sum()
        want = torch.autograd.grad(loss, leaves)
        with recorded_launches() as bwd_kernels, poisoned(poison):
            res = backward(launch, gs, ghl, x.detach(), drop, h0_in, params, u, gate, kw, path=bwd_path, stats=stats)
        gx, gh0, gpos, ggcx, ggch, gsa = res
        assert (gh0 is None) == (h0 is None), f"grad_h0 is {gh0 is not None}, expected {h0 is not None}"
        got = [gx] + ([gh0] if gh0 is not None else []) + ([gpos] if gpos is not None else [])
        names = ["x"] + (["h0"] if gh0 is not None else []) + (["pos"] if gpos is not None else [])
        for bname, blk, ref_blk in (("gcx", ggcx, params.gc_x), ("gch", ggch, params.gc_h), ("sa", gsa, params.sa)):
            assert (blk is None) == (ref_blk is None), f"grad {bname} is {blk is not None}"
            if blk is not None:
                assert getattr(blk, "_fields", None) == ref_blk._fields, f"grad {bname}: fields {blk}"
                got += list(blk)
                names += [f"{bname}.{f}" for f in ref_blk._fields]
        assert len(got) == len(leaves), f"{len(got)} gradients for {len(leaves)} leaves"
        _nan_free(zip([f"grad {n}" for n in names], got))
        for n, a, b, p in zip(names, got, want, leaves):
            bad.expect(a.dtype == p.dtype and a.shape == p.shape,
                       f"grad {n}: {a.dtype}{tuple(a.shape)} vs leaf {p.dtype}{tuple(p.shape)}")
            bad.close(f"grad {n}", a, b, tol["grad_x" if n == "x" else "grad"])
        bad.check()
        return ParityRun(sorted(set(fwd_kernels)), sorted(set(bwd_kernels)), np_tiles, names)


def check_deterministic_backward(T, B, C, P, *, device="cpu", path=None, **case) -> int:
    """Backward twice on the same saved tensors (both launchers given ``path``), the second time
    with every fresh allocation NaN-poisoned and placed at an address no first-run buffer can
    have (on the CPU; ``poisoned(shift=17)``): all gradients bitwise identical, and the saved
    tensors (x, u, gate, the reductions) unchanged by the backward. Returns how many gradients
    were compared."""
    from staa.kernels import launch

    x, params, drop, kw, _, _, h0 = build_case(T, B, C, P, **case)
    x, drop, params, h0 = on_device(device, x, drop, params, h0)
    _, _, _, u, gate, stats = forward(launch, x, drop, h0, params, kw, store_v_seq=False, path=path, keep_stats=True)
    saved = [t.clone() for t in (x, u, gate, stats)]
    gs = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(device=device, dtype=x.dtype)
    runs = []
    for poison in (False, device == "cpu"):
        with poisoned(poison, shift=17 if poison else 0):
            runs.append(flat_grads(backward(launch, gs, None, x, drop, h0, params, u, gate, kw, path=path,
                                            stats=stats)))
    differ = [i for i, (a, b) in enumerate(zip(*runs)) if not torch.equal(a, b)]
    assert not differ, f"gradients {differ} (in flat_grads order) differ between two backward calls"
    changed = [n for n, a, b in zip(("x", "u", "gate", "stats"), saved, (x, u, gate, stats)) if not torch.equal(a, b)]
    assert not changed, f"the backward wrote into the saved {changed}"
    return len(runs[0])


def check_non_finite_input(T=3, B=3, C=5, P=4, *, path=None, gc=True, sa=True, value=float("nan"),
                           where=(1, 1, 2, 3), dtype="float32", device="cpu", nan_rows=None, all_nan_rows=None,
                           h_last_nan_samples=None):
    """A non-finite input at ``where = (t, b, c, p)``: the launchers' spikes equal the
    reference's, NaN positions included, spikes are 0, 1 or NaN in the input dtype, and (where
    given) the (t, b) rows with any / all spikes NaN and the samples with a NaN final state are
    the expected ones."""
    from staa.kernels import launch

    x, params, drop, kw, _, _, h0 = build_case(T, B, C, P, gc=gc, sa=sa, dtype=dtype)
    x = x.clone()
    x[where] = value
    with torch.no_grad():
        ref_s, _ = reference(x, params, drop, kw, h0)
    x, drop, params, h0 = on_device(device, x, drop, params, h0)
    with poisoned():
        spikes, h_last, _, _, _ = forward(launch, x, drop, h0, params, kw, store_v_seq=False, path=path)
    assert spikes.dtype == x.dtype
    spikes, h_last = spikes.cpu(), h_last.cpu()
    nan = torch.isnan(spikes)
    assert torch.equal(nan, torch.isnan(ref_s)), "NaN spikes where the reference has none (or the reverse)"
    assert torch.equal(spikes[~nan], ref_s[~nan])
    assert bool(((spikes == 0) | (spikes == 1) | nan).all())
    rows = [[t, b] for t in range(T) for b in range(B)]
    if nan_rows is not None:
        assert [r for r in rows if bool(nan[r[0], r[1]].any())] == nan_rows
    if all_nan_rows is not None:
        assert [r for r in rows if bool(nan[r[0], r[1]].all())] == all_nan_rows
    if h_last_nan_samples is not None:
        assert [b for b in range(B) if bool(torch.isnan(h_last[b]).any())] == h_last_nan_samples
