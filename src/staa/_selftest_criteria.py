"""The self-test's criteria: the structural checks, the exact comparison and the statistical one
(see :mod:`staa._selftest` for when each applies)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch

SPIKE_AGREEMENT = 0.9999
MIN_COSINE = 0.999
ERROR_RATIO = 2.0
STAT_REL_FLOOR = 1e-5
STAT_ABS_FLOOR = 1e-12

# rtol against the largest reference magnitude of each compared tensor, and atol (exact criterion)
_TOL = {"float64": (1e-9, 1e-12), "float32": (1e-4, 1e-6), "bfloat16": (1e-4, 1e-6)}
# the input gradient comes back in the input dtype: one rounding of a value that differs by float32 noise
_TOL_GRAD_X = {"bfloat16": (2.0**-7, 1e-6)}


@dataclass
class _Outcome:
    spikes: torch.Tensor
    h_last: torch.Tensor
    grads: dict  # name -> gradient (x, h0, then every parameter)


def _structure(case, out: _Outcome, x, m) -> List[str]:
    """The checks that hold exactly on every route: shapes, dtypes, finite values, 0/1 spikes."""
    problems = []
    state_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if out.spikes.shape != x.shape or out.spikes.dtype != x.dtype:
        problems.append(f"spikes {out.spikes.dtype} {list(out.spikes.shape)}, expected {x.dtype} {list(x.shape)}")
    elif not bool(((out.spikes == 0) | (out.spikes == 1)).all()):
        problems.append("spikes not all 0 or 1")
    if out.h_last.shape != x.shape[1:] or out.h_last.dtype != state_dtype:
        problems.append(f"last state {out.h_last.dtype} {list(out.h_last.shape)}, expected {state_dtype} "
                        f"{list(x.shape[1:])}")
    elif not bool(torch.isfinite(out.h_last).all()):
        problems.append("last state not finite")
    params = dict(m.named_parameters())
    for name, g in out.grads.items():
        if g is None:
            problems.append(f"no gradient for {name}")
            continue
        want = x if name == "x" else params.get(name)
        if name == "h0":
            want_dtype, want_shape = state_dtype, x.shape[1:]
        else:
            want_dtype, want_shape = want.dtype, want.shape
        if g.dtype != want_dtype or g.shape != want_shape:
            problems.append(f"gradient of {name}: {g.dtype} {list(g.shape)}, expected {want_dtype} {list(want_shape)}")
        elif not bool(torch.isfinite(g).all()):
            problems.append(f"gradient of {name} not finite")
    return problems


def _max_diff(got, want, tol):
    """(passes, largest |got - want|, largest |want|) with the max-norm rule |d| <= atol + rtol * max|want|."""
    d = (got.double() - want.double()).abs()
    err = d.max().item() if d.numel() else 0.0
    scale = want.double().abs().max().item() if want.numel() else 0.0
    return err <= tol[1] + tol[0] * scale, err, scale


def _exact_compare(case, got: _Outcome, want: _Outcome, what: str) -> tuple:
    problems = []
    tol = _TOL[case.dtype]
    flips = int((got.spikes != want.spikes).sum())
    if flips:
        problems.append(f"{what}: {flips} spikes differ")
    ok_v, err_v, _ = _max_diff(got.h_last, want.h_last, tol)
    if not ok_v:
        problems.append(f"{what}: last state differs by {err_v:.1e}")
    err_x, worst = 0.0, ("-", 0.0)
    for name, g in got.grads.items():
        w = want.grads.get(name)
        if g is None or w is None:
            continue
        ok, err, scale = _max_diff(g, w, _TOL_GRAD_X.get(case.dtype, tol) if name == "x" else tol)
        if name == "x":
            err_x = err
        rel = err / scale if scale else err
        if rel >= worst[1]:
            worst = (name, rel)
        if not ok:
            problems.append(f"{what}: gradient of {name} differs by {err:.1e} (largest |value| {scale:.1e})")
    return problems, {"spikes": int(want.spikes.numel()), "spike_mismatches": flips, "max_dv": err_v,
                      "max_dgrad_x": err_x, "worst_grad": worst[0], "max_rel_dgrad": worst[1]}


def _cosine(a, b) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    na, nb = a.norm().item(), b.norm().item()
    if na <= STAT_ABS_FLOOR and nb <= STAT_ABS_FLOOR:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float((a @ b).item() / (na * nb))


def _statistical_compare(case, tri: _Outcome, tor: _Outcome, ref: _Outcome, interpret: bool = False) -> tuple:
    problems = []
    n = tri.spikes.numel()
    mism = int((tri.spikes != tor.spikes).sum())
    agreement = 1.0 - mism / n if n else 1.0
    if agreement < SPIKE_AGREEMENT:
        problems.append(f"spikes agree with the torch route at {100 * agreement:.4f}% of positions, "
                        f"below {100 * SPIKE_AGREEMENT:.2f}%")
    ref_s = ref.spikes.to(tri.spikes.dtype)
    T, B = tri.spikes.shape[:2]
    flipped = ((tri.spikes != ref_s) | (tor.spikes != ref_s)).reshape(T, B, -1).any(0).any(-1)  # [B]
    clean = ~flipped
    tensors = [("last state", tri.h_last, tor.h_last, ref.h_last, 0)]
    tensors += [(f"grad {k}", g, tor.grads[k], ref.grads[k], {"x": 1, "h0": 0}.get(k)) for k, g in tri.grads.items()
                if g is not None and tor.grads[k] is not None and ref.grads[k] is not None]
    # A parameter's rounding noise scales with its block's gradients, not with its own: a GC block's
    # key bias gradient is one number summed over every (t, b, p) with heavy cancellation, so 1e-5 of
    # its own size is a few float32 roundings of the terms it sums. The floor uses the block's norm.
    block_sq = {}
    for k, g in ref.grads.items():
        if g is not None and "." in k:
            block_sq[k.split(".")[0]] = block_sq.get(k.split(".")[0], 0.0) + g.double().norm().item() ** 2
    min_cos, min_cos_of, max_ratio, max_ratio_of = 1.0, "-", 0.0, "-"
    for name, a, b, r, batch_dim in tensors:
        key = name[len("grad "):] if name.startswith("grad ") else None
        scale = (block_sq[key.split(".")[0]] ** 0.5 if key is not None and "." in key
                 else r.double().norm().item())
        cos = _cosine(a, r)
        if cos < min_cos:
            min_cos, min_cos_of = cos, name
        if cos < MIN_COSINE:
            problems.append(f"{name}: cosine similarity with float64 {cos:.6f} < {MIN_COSINE}")
        if batch_dim is not None:
            idx = clean.nonzero().flatten()
            a, b, r = (t.index_select(batch_dim, idx) for t in (a, b, r))
        elif not bool(clean.all()):
            continue  # a weight gradient sums over the batch: a flip anywhere moves it; the cosine holds it
        if a.numel() == 0:
            continue
        e_tri = (a.double() - r.double()).norm().item()
        e_tor = (b.double() - r.double()).norm().item()
        floor = max(STAT_REL_FLOOR * scale, STAT_ABS_FLOOR)
        if interpret and a.dtype in (torch.bfloat16, torch.float16):
            # the interpreter's float32 -> bfloat16/float16 stores round toward zero where torch and a GPU
            # round to nearest, so there a reduced-precision tensor may sit one step of its dtype from float64
            floor = max(floor, torch.finfo(a.dtype).eps * r.double().norm().item())
        ratio = e_tri / max(e_tor, floor)
        if ratio > max_ratio:
            max_ratio, max_ratio_of = ratio, name
        if e_tri > max(ERROR_RATIO * e_tor, floor):
            problems.append(f"{name}: error vs float64 {e_tri:.2e} > {ERROR_RATIO:g} x the torch route's {e_tor:.2e} "
                            f"(floor {floor:.1e})")
    return problems, {"spikes": n, "spike_mismatches": mism, "spike_agreement": agreement,
                      "min_cosine": min_cos, "min_cosine_of": min_cos_of, "max_error_ratio": max_ratio,
                      "max_error_ratio_of": max_ratio_of, "samples": B, "clean_samples": int(clean.sum())}
