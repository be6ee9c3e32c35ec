"""Backward Triton kernels of the STAA-LIF recurrence (reverse time).

Every forward activation is a pure function of the saved ``u``/``gate``, the input and the
forward's per-step summed reductions (``stats``: GC contexts and spatial sums of X_t and
H_{t-1}), so nothing is re-read to rebuild them. What stays sequential is the gradient flowing
into the membrane state, dL/dH_{t-1}; per step t (from T-1 down to 0) two kernels run:

* ``staa_bwd_mlp_kernel`` (grid ``[B]``): recomputes the step's MLP activations from the
  stats rows, and from the per-tile sums ``sum_p gV_t u_t`` and ``sum_p gV_t`` back-propagates
  through SA (gate -> fc2 -> relu -> fc1 -> mean) and the GC1/GC2 value/LayerNorm/query MLPs,
  giving the channel vectors ``gm_t`` (gradient of U_t's spatial mean) and ``gctx1_t``/
  ``gctx2_t`` (of the GC contexts), and stores the per-(t, b) factors the weight gradients
  are built from (``gz``, ``gsum``, ``pooled``, ``hid``, ``ghid``; per GC block ``r``, ``gq``,
  ``gn``, ``gn * qhat``).
* ``staa_bwd_elem_kernel`` (grid ``[B, NP]``, a ``[C, BLOCK_P]`` tile per program): FINISHes
  step t (dL/dU_t, dL/dI_t through GC1 and the position encoding, dL/dH_{t-1} through GC2's
  key attention and the residual) and STARTs step t-1 (dL/dV_{t-1} through the surrogate
  and the reset, and its per-tile sums for the next MLP kernel). Key-weight and
  position-encoding gradients are stored as per-(step, sample, tile) partials: each is
  written once, never read back and updated.

After the loop two launches reduce the factors and partials into every parameter gradient:
``staa_bwd_weights_kernel`` sums fixed row ranges of each sum (the weight matrices as ``tl.dot``
products over 16-row blocks), one range per program, and ``staa_bwd_weights_sum_kernel`` adds the
ranges' partials; both orders are fixed (no atomics), and no program's loads grow with the batch
or the plane (see the comment above the two kernels).

The MLP kernel sums a sample's per-tile partials in ``[BLOCK_NP, BLOCK_CC]`` blocks
(``_sum_partials``), one load per channel chunk for the shipped planes.

For small planes (``launch.loop_path``) ``staa_bwd_persistent_kernel`` (grid ``[B]``) runs
the loop's launch sequence for one sample in one program, the two kernels' bodies
(``_bwd_mlp_sample``, ``_bwd_elem_tile``) separated by CTA barriers.

The surrogate derivative dS/dV is a compile-time switch ``SURROGATE`` (the index of the kind
in ``staa.surrogate.SURROGATE_KINDS``) with one parameter ``sg_param``; only the elementwise
passes that start a step use it. With ``HAS_H0`` the initial state is a tensor: it is read
at step 0 and dL/dH_{-1} is written to ``grad_h0``; with ``HAS_GHL`` an incoming dL/dH_{T-1}
starts the reverse loop.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .staa_fwd import _gc_query_ln, _gc_value, _plane_tile, _relu, _reset, _reset_scalars, _sigmoid, _sum_partials


@triton.jit
def _ln_relu_bwd(gr, n, qh, rstd, nw_ptr, offs_h, mh, CH, CD: tl.constexpr):
    """Backward of relu(LayerNorm(q)) for one sample given dL/d(relu output) ``gr`` and the
    recomputed ``n`` (LayerNorm output), ``qh`` (normalised query), ``rstd`` ([BLOCK_H]).
    Returns ``(dL/dq, dL/dn)``, dL/dn with the relu mask applied."""
    nw = tl.load(nw_ptr + offs_h, mask=mh, other=0.0).to(CD)
    gn = tl.where(n > 0, gr, 0.0)
    gqh = gn * nw
    m1 = tl.sum(gqh, axis=0) / CH
    m2 = tl.sum(gqh * qh, axis=0) / CH
    return tl.where(mh, rstd * (gqh - m1 - qh * m2), 0.0), gn


@triton.jit
def _store_gc_rows(row_h, r_ptr, gq_ptr, gn_ptr, gnq_ptr, r, gq, gn, qh, offs_h, mh):
    """One (t, b)'s rows of GC's weight-gradient factors (``staa_bwd_weights_kernel``): the
    relu output ``r``, dL/dq, dL/dn and dL/dn * qhat, each [T, B, CH]."""
    tl.store(r_ptr + row_h + offs_h, r, mask=mh)
    tl.store(gq_ptr + row_h + offs_h, gq, mask=mh)
    tl.store(gn_ptr + row_h + offs_h, gn, mask=mh)
    tl.store(gnq_ptr + row_h + offs_h, gn * qh, mask=mh)


@triton.jit(do_not_specialize=["t"])
def staa_bwd_mlp_kernel(
    part_a_ptr, part_b_ptr,  # [B, NP, C]: per-tile sum_p gV*u and sum_p gV of step t
    gate_ptr, drop_ptr,  # [T, B, C], [T] int8
    ctx1_ptr, xsum_ptr, ctx2_ptr, hsum_ptr,  # [T, B, C]: the forward's summed reductions
    qw1_ptr, qb1_ptr, nw1_ptr, nb1_ptr, vw1_ptr, vb1_ptr,  # GC1 weights
    qw2_ptr, qb2_ptr, nw2_ptr, nb2_ptr, vw2_ptr, vb2_ptr,  # GC2 weights
    f1w_ptr, f1b_ptr, f2w_ptr, f2b_ptr,  # SA weights
    gm_ptr, gctx1_ptr, gctx2_ptr,  # [B, C] out
    gz_ptr, gsum_ptr, pooled_ptr,  # [T, B, C] out (gz, gsum zero at dropped steps)
    hid_ptr, ghid_ptr,  # [T, B, CHS] out
    r1_ptr, gq1_ptr, gn1_ptr, gnq1_ptr,  # [T, B, CHG1] out
    r2_ptr, gq2_ptr, gn2_ptr, gnq2_ptr,  # [T, B, CHG2] out
    t, B, C, P, NP, CHG1, CHG2, CHS, alpha,
    HAS_GCX: tl.constexpr, HAS_GCH: tl.constexpr, HAS_SA: tl.constexpr,
    BLOCK_NP: tl.constexpr, BLOCK_CC: tl.constexpr, BLOCK_HG1: tl.constexpr, BLOCK_HG2: tl.constexpr,
    BLOCK_HS: tl.constexpr, CD: tl.constexpr,
):
    _bwd_mlp_sample(
        tl.program_id(0), t, part_a_ptr, part_b_ptr, gate_ptr, drop_ptr, ctx1_ptr, xsum_ptr, ctx2_ptr, hsum_ptr,
        qw1_ptr, qb1_ptr, nw1_ptr, nb1_ptr, vw1_ptr, vb1_ptr, qw2_ptr, qb2_ptr, nw2_ptr, nb2_ptr, vw2_ptr, vb2_ptr,
        f1w_ptr, f1b_ptr, f2w_ptr, f2b_ptr, gm_ptr, gctx1_ptr, gctx2_ptr, gz_ptr, gsum_ptr, pooled_ptr,
        hid_ptr, ghid_ptr, r1_ptr, gq1_ptr, gn1_ptr, gnq1_ptr, r2_ptr, gq2_ptr, gn2_ptr, gnq2_ptr,
        B, C, P, NP, CHG1, CHG2, CHS, alpha, HAS_GCX, HAS_GCH, HAS_SA, BLOCK_NP, BLOCK_CC, BLOCK_HG1, BLOCK_HG2,
        BLOCK_HS, CD,
    )


@triton.jit
def _bwd_mlp_sample(
    b, t, part_a_ptr, part_b_ptr, gate_ptr, drop_ptr, ctx1_ptr, xsum_ptr, ctx2_ptr, hsum_ptr,
    qw1_ptr, qb1_ptr, nw1_ptr, nb1_ptr, vw1_ptr, vb1_ptr, qw2_ptr, qb2_ptr, nw2_ptr, nb2_ptr, vw2_ptr, vb2_ptr,
    f1w_ptr, f1b_ptr, f2w_ptr, f2b_ptr, gm_ptr, gctx1_ptr, gctx2_ptr, gz_ptr, gsum_ptr, pooled_ptr,
    hid_ptr, ghid_ptr, r1_ptr, gq1_ptr, gn1_ptr, gnq1_ptr, r2_ptr, gq2_ptr, gn2_ptr, gnq2_ptr,
    B, C, P, NP, CHG1, CHG2, CHS, alpha,
    HAS_GCX: tl.constexpr, HAS_GCH: tl.constexpr, HAS_SA: tl.constexpr,
    BLOCK_NP: tl.constexpr, BLOCK_CC: tl.constexpr, BLOCK_HG1: tl.constexpr, BLOCK_HG2: tl.constexpr,
    BLOCK_HS: tl.constexpr, CD: tl.constexpr,
):
    """The channel-MLP backward of one sample b at step t (body of ``staa_bwd_mlp_kernel``,
    also run in place by the persistent kernel). It recomputes the step's MLP activations from
    the forward's summed reductions exactly as ``_fwd_mlp_sample`` computed them, back-propagates,
    and stores the per-(t, b) factors of the weight gradients for ``staa_bwd_weights_kernel``."""
    alpha = tl.cast(tl.cast(alpha, tl.float32), CD)
    dropped = tl.load(drop_ptr + t) != 0
    row = t * B + b
    vec = row.to(tl.int64) * C
    part = b.to(tl.int64) * NP * C
    out = b.to(tl.int64) * C

    offs_hs = tl.arange(0, BLOCK_HS)
    mhs = offs_hs < CHS
    offs_h1 = tl.arange(0, BLOCK_HG1)
    mh1 = offs_h1 < CHG1
    offs_h2 = tl.arange(0, BLOCK_HG2)
    mh2 = offs_h2 < CHG2

    # The forward's activations of this (t, b).
    if HAS_GCX:
        qh1, rstd1, n1 = _gc_query_ln(ctx1_ptr + vec, 1, C, qw1_ptr, qb1_ptr, nw1_ptr, nb1_ptr, ctx1_ptr,
                                      offs_h1, mh1, CHG1, False, 1, BLOCK_CC, BLOCK_HG1, CD)
        r1 = _relu(n1)
    if HAS_GCH:
        qh2, rstd2, n2 = _gc_query_ln(ctx2_ptr + vec, 1, C, qw2_ptr, qb2_ptr, nw2_ptr, nb2_ptr, ctx2_ptr,
                                      offs_h2, mh2, CHG2, False, 1, BLOCK_CC, BLOCK_HG2, CD)
        r2 = _relu(n2)
    if HAS_SA:
        hid = tl.zeros([BLOCK_HS], dtype=CD)
        for c0 in range(0, C, BLOCK_CC):
            offs_c = c0 + tl.arange(0, BLOCK_CC)
            mc = offs_c < C
            gx = tl.load(xsum_ptr + vec + offs_c, mask=mc, other=0.0) / P
            if HAS_GCX:
                gx = gx + _gc_value(vw1_ptr, vb1_ptr, r1, offs_c, mc, offs_h1, mh1, CHG1, CD)
            gh = tl.load(hsum_ptr + vec + offs_c, mask=mc, other=0.0) / P
            if HAS_GCH:
                gh = gh + _gc_value(vw2_ptr, vb2_ptr, r2, offs_c, mc, offs_h2, mh2, CHG2, CD)
            pooled = alpha * (gx + gh)
            tl.store(pooled_ptr + vec + offs_c, pooled, mask=mc)
            w1 = tl.load(f1w_ptr + offs_hs[:, None] * C + offs_c[None, :], mask=mhs[:, None] & mc[None, :], other=0.0)
            hid += tl.sum(w1.to(CD) * pooled[None, :], axis=1)
        hid = _relu(hid + tl.load(f1b_ptr + offs_hs, mask=mhs, other=0.0).to(CD))
        tl.store(hid_ptr + row.to(tl.int64) * CHS + offs_hs, hid, mask=mhs)

        # gate = sigmoid(z): dL/dz = (sum_p gV u) g (1 - g); dL/dhid = fc2^T dL/dz, masked by relu.
        ghid = tl.zeros([BLOCK_HS], dtype=CD)
        for c0 in range(0, C, BLOCK_CC):
            offs_c = c0 + tl.arange(0, BLOCK_CC)
            mc = offs_c < C
            ga = _sum_partials(part_a_ptr + part, NP, C, offs_c, mc, BLOCK_NP, BLOCK_CC, CD)
            g = tl.load(gate_ptr + vec + offs_c, mask=mc, other=0.0)
            gz = tl.where(dropped, 0.0, ga * g * (1.0 - g))
            tl.store(gz_ptr + vec + offs_c, gz, mask=mc)
            w2 = tl.load(f2w_ptr + offs_c[None, :] * CHS + offs_hs[:, None], mask=mhs[:, None] & mc[None, :], other=0.0)
            ghid += tl.sum(w2.to(CD) * gz[None, :], axis=1)
        ghid = tl.where(hid > 0, ghid, 0.0)
        tl.store(ghid_ptr + row.to(tl.int64) * CHS + offs_hs, ghid, mask=mhs)

    if HAS_GCX:
        gr1 = tl.zeros([BLOCK_HG1], dtype=CD)
    if HAS_GCH:
        gr2 = tl.zeros([BLOCK_HG2], dtype=CD)
    for c0 in range(0, C, BLOCK_CC):
        offs_c = c0 + tl.arange(0, BLOCK_CC)
        mc = offs_c < C
        gb = _sum_partials(part_b_ptr + part, NP, C, offs_c, mc, BLOCK_NP, BLOCK_CC, CD)
        if HAS_SA:
            g = tl.load(gate_ptr + vec + offs_c, mask=mc, other=0.0)
            w1 = tl.load(f1w_ptr + offs_hs[:, None] * C + offs_c[None, :], mask=mhs[:, None] & mc[None, :], other=0.0)
            gm = tl.where(dropped, 0.0, alpha * tl.sum(w1.to(CD) * ghid[:, None], axis=0))
            tl.store(gm_ptr + out + offs_c, gm, mask=mc)
            gsum = g * gb + gm  # sum_p dL/dU_t = sum_p (gV g + gm / P)
        else:
            gsum = gb
        gsum = tl.where(dropped, 0.0, gsum)
        tl.store(gsum_ptr + vec + offs_c, gsum, mask=mc)
        if HAS_GCX:
            wv1 = tl.load(vw1_ptr + offs_c[None, :] * CHG1 + offs_h1[:, None], mask=mh1[:, None] & mc[None, :], other=0.0)
            gr1 += tl.sum(wv1.to(CD) * gsum[None, :], axis=1)
        if HAS_GCH:
            wv2 = tl.load(vw2_ptr + offs_c[None, :] * CHG2 + offs_h2[:, None], mask=mh2[:, None] & mc[None, :], other=0.0)
            gr2 += tl.sum(wv2.to(CD) * gsum[None, :], axis=1)

    if HAS_GCX:
        gq1, gn1 = _ln_relu_bwd(gr1, n1, qh1, rstd1, nw1_ptr, offs_h1, mh1, CHG1, CD)
        _store_gc_rows(row.to(tl.int64) * CHG1, r1_ptr, gq1_ptr, gn1_ptr, gnq1_ptr, r1, gq1, gn1, qh1, offs_h1, mh1)
    if HAS_GCH:
        gq2, gn2 = _ln_relu_bwd(gr2, n2, qh2, rstd2, nw2_ptr, offs_h2, mh2, CHG2, CD)
        _store_gc_rows(row.to(tl.int64) * CHG2, r2_ptr, gq2_ptr, gn2_ptr, gnq2_ptr, r2, gq2, gn2, qh2, offs_h2, mh2)
    if HAS_GCX or HAS_GCH:
        for c0 in range(0, C, BLOCK_CC):
            offs_c = c0 + tl.arange(0, BLOCK_CC)
            mc = offs_c < C
            if HAS_GCX:
                wq1 = tl.load(qw1_ptr + offs_h1[:, None] * C + offs_c[None, :], mask=mh1[:, None] & mc[None, :], other=0.0)
                tl.store(gctx1_ptr + out + offs_c, tl.sum(wq1.to(CD) * gq1[:, None], axis=0), mask=mc)
            if HAS_GCH:
                wq2 = tl.load(qw2_ptr + offs_h2[:, None] * C + offs_c[None, :], mask=mh2[:, None] & mc[None, :], other=0.0)
                tl.store(gctx2_ptr + out + offs_c, tl.sum(wq2.to(CD) * gq2[:, None], axis=0), mask=mc)


@triton.jit
def _surrogate_bwd(gs, x, p, SURROGATE: tl.constexpr):
    """dL/dV = gs * dS/dV at ``x = V - v_th`` for the surrogate kind ``SURROGATE`` with
    parameter ``p`` (see ``staa.surrogate``): 0 rect (width p), 1 atan, 2 sigmoid (alpha p),
    3 fast_sigmoid (slope p). ``x`` and ``p`` are in the compute dtype."""
    if SURROGATE == 0:
        g = tl.where(tl.abs(x) < p * 0.5, gs / p, 0.0)
    elif SURROGATE == 1:
        kx = (1.5707963267948966 * p) * x  # pi/2 p x
        g = gs * (p / (2.0 * (1.0 + kx * kx)))
    elif SURROGATE == 2:
        sg = _sigmoid(p * x)
        g = gs * (p * sg * (1.0 - sg))
    else:
        d = p * tl.abs(x) + 1.0
        g = gs * (1.0 / (d * d))
    return g


@triton.jit
def _gc_key_bwd(z, gctx, kw, kb, mp):
    """Gradient into GC's input ``z`` [BLOCK_C, BLOCK_P] from dL/dcontext ``gctx`` [BLOCK_C]
    (context = sum_p sigmoid(kw . z_p + kb) z_p), not counting the residual.

    Returns ``(dz, dlogit)``; dlogit [BLOCK_P] is 0 in padded positions.
    """
    w = _sigmoid(tl.sum(z * kw[:, None], axis=0) + kb)
    gl = tl.sum(z * gctx[:, None], axis=0) * w * (1.0 - w)
    gl = tl.where(mp, gl, 0.0)
    return w[None, :] * gctx[:, None] + gl[None, :] * kw[:, None], gl


@triton.jit(do_not_specialize=["t"])
def staa_bwd_elem_kernel(
    gs_ptr,  # [T, B, C, P] dL/dspikes
    x_ptr, pos_ptr, u_ptr, gate_ptr, drop_ptr,
    gm_ptr, gctx1_ptr, gctx2_ptr,  # [B, C] from the MLP kernel of step t
    gx_ptr,  # [T, B, C, P] out dL/dI, input dtype
    kw1_ptr, kb1_ptr, kw2_ptr, kb2_ptr,
    acc_kw1_ptr, acc_kb1_ptr, acc_kw2_ptr, acc_kb2_ptr,  # [T, B, NP, C], [T, B, NP] out: key-grad partials
    gpos_ptr,  # [T, B, NP, C] out: per-tile sum_p dL/dX_t
    part_a_ptr, part_b_ptr,  # [B, NP, C] out: per-tile sum_p gV_{t-1} u_{t-1}, sum_p gV_{t-1}
    h0_ptr, gh0_ptr,  # [B, C, P] CD: initial state H_{-1} and dL/dH_{-1} out (only with HAS_H0)
    ghl_ptr,  # [B, C, P] CD: incoming dL/dH_{T-1} (only with HAS_GHL)
    gv_in_ptr, gv_out_ptr,  # [B, C, P] CD: dL/dV_t in, dL/dV_{t-1} out (with t, what changes between launches)
    t, B, C, P, NP, v_th, v_reset, h0, sg_param,
    FINISH: tl.constexpr, START: tl.constexpr, SURROGATE: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_GHL: tl.constexpr, HAS_POS: tl.constexpr, HAS_GCX: tl.constexpr, HAS_GCH: tl.constexpr, HAS_SA: tl.constexpr,
    HARD: tl.constexpr, DETACH: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, CD: tl.constexpr,
):
    _bwd_elem_tile(
        tl.program_id(0), tl.program_id(1), t, gs_ptr, x_ptr, pos_ptr, u_ptr, gate_ptr, drop_ptr,
        gv_in_ptr, gv_out_ptr, gm_ptr, gctx1_ptr, gctx2_ptr, gx_ptr, kw1_ptr, kb1_ptr, kw2_ptr, kb2_ptr,
        acc_kw1_ptr, acc_kb1_ptr, acc_kw2_ptr, acc_kb2_ptr, gpos_ptr, part_a_ptr, part_b_ptr,
        h0_ptr, gh0_ptr, ghl_ptr, B, C, P, NP, v_th, v_reset, h0, sg_param, FINISH, START, SURROGATE, HAS_H0, HAS_GHL,
        HAS_POS, HAS_GCX, HAS_GCH, HAS_SA, HARD, DETACH, BLOCK_C, BLOCK_P, CD,
    )


@triton.jit
def _bwd_elem_tile(
    b, j, t, gs_ptr, x_ptr, pos_ptr, u_ptr, gate_ptr, drop_ptr,
    gv_in_ptr, gv_out_ptr, gm_ptr, gctx1_ptr, gctx2_ptr, gx_ptr, kw1_ptr, kb1_ptr, kw2_ptr, kb2_ptr,
    acc_kw1_ptr, acc_kb1_ptr, acc_kw2_ptr, acc_kb2_ptr, gpos_ptr, part_a_ptr, part_b_ptr,
    h0_ptr, gh0_ptr, ghl_ptr, B, C, P, NP, v_th, v_reset, h0, sg_param,
    FINISH: tl.constexpr, START: tl.constexpr, SURROGATE: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_GHL: tl.constexpr, HAS_POS: tl.constexpr, HAS_GCX: tl.constexpr, HAS_GCH: tl.constexpr, HAS_SA: tl.constexpr,
    HARD: tl.constexpr, DETACH: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, CD: tl.constexpr,
):
    """Tile j of sample b at step t (body of ``staa_bwd_elem_kernel``, also run in place by
    the persistent kernel). FINISH: step t's gradients down to dL/dH_{t-1} (written to
    ``grad_h0`` at t = 0 with HAS_H0); START: dL/dV_{t-1} through the surrogate and the reset."""
    v_th, v_reset, h0 = _reset_scalars(v_th, v_reset, h0, CD)
    sg_param = tl.cast(tl.cast(sg_param, tl.float32), CD)

    offs_c, mc, mp, m, tile = _plane_tile(j, C, P, BLOCK_C, BLOCK_P)
    state = b.to(tl.int64) * C * P + tile
    part = (b * NP + j).to(tl.int64) * C
    part_s = (b * NP + j).to(tl.int64)

    if START:
        prev = ((t - 1) * B + b).to(tl.int64) * C
        up = tl.load(u_ptr + prev * P + tile, mask=m, other=0.0)
        gp = tl.load(gate_ptr + prev + offs_c, mask=mc, other=0.0)
        vp = up * gp[:, None]
        sp, hp = _reset(vp, v_th, v_reset, HARD)
    elif HAS_H0:
        hp = tl.load(h0_ptr + state, mask=m, other=0.0)
    else:
        hp = tl.zeros([BLOCK_C, BLOCK_P], dtype=CD) + h0
    hp = tl.where(m, hp, 0.0)

    if FINISH:
        cur = (t * B + b).to(tl.int64) * C
        step = (t * B * NP).to(tl.int64)  # this step's first (sample, tile) partial
        dropped = tl.load(drop_ptr + t) != 0
        gv = tl.load(gv_in_ptr + state, mask=m, other=0.0)
        gu = gv
        if HAS_SA:
            g = tl.load(gate_ptr + cur + offs_c, mask=mc, other=0.0)
            gm = tl.load(gm_ptr + b.to(tl.int64) * C + offs_c, mask=mc, other=0.0)
            gu = gv * g[:, None] + (gm / P)[:, None]
        gu = tl.where(dropped, gv, gu)
        gxx = gu
        if HAS_GCX:
            xx = tl.load(x_ptr + cur * P + tile, mask=m, other=0.0).to(CD)
            if HAS_POS:
                xx = xx + tl.load(pos_ptr + t * C + offs_c, mask=mc, other=0.0)[:, None]
            xx = tl.where(m, xx, 0.0)
            gctx1 = tl.load(gctx1_ptr + b.to(tl.int64) * C + offs_c, mask=mc, other=0.0)
            kw1 = tl.load(kw1_ptr + offs_c, mask=mc, other=0.0).to(CD)
            kb1 = tl.load(kb1_ptr).to(CD)
            dz, gl = _gc_key_bwd(xx, gctx1, kw1, kb1, mp)
            gl = tl.where(dropped, 0.0, gl)
            gxx = tl.where(dropped, gv, gu + dz)
            tl.store(acc_kw1_ptr + step * C + part + offs_c, tl.sum(xx * gl[None, :], axis=1), mask=mc)
            tl.store(acc_kb1_ptr + step + part_s, tl.sum(gl, axis=0))
        tl.store(gx_ptr + cur * P + tile, gxx.to(gx_ptr.dtype.element_ty), mask=m)
        if HAS_POS:
            gp_sum = tl.sum(tl.where(m, gxx, 0.0), axis=1)
            tl.store(gpos_ptr + step * C + part + offs_c, tl.where(dropped, 0.0, gp_sum), mask=mc)
        gh = gu
        if HAS_GCH:
            gctx2 = tl.load(gctx2_ptr + b.to(tl.int64) * C + offs_c, mask=mc, other=0.0)
            kw2 = tl.load(kw2_ptr + offs_c, mask=mc, other=0.0).to(CD)
            kb2 = tl.load(kb2_ptr).to(CD)
            dz2, gl2 = _gc_key_bwd(hp, gctx2, kw2, kb2, mp)
            gl2 = tl.where(dropped, 0.0, gl2)
            gh = tl.where(dropped, gv, gu + dz2)
            tl.store(acc_kw2_ptr + step * C + part + offs_c, tl.sum(hp * gl2[None, :], axis=1), mask=mc)
            tl.store(acc_kb2_ptr + step + part_s, tl.sum(gl2, axis=0))
        if HAS_H0:
            if not START:  # t = 0: dL/dH_{-1}
                tl.store(gh0_ptr + state, gh, mask=m)
    elif HAS_GHL:  # t = T: dL/dH_{T-1} comes from the caller
        gh = tl.load(ghl_ptr + state, mask=m, other=0.0).to(CD)
    else:
        gh = tl.zeros([BLOCK_C, BLOCK_P], dtype=CD)

    if START:
        # dL/dV_{t-1}: spikes and reset through the surrogate, the rest of H_{t-1}.
        gs = tl.load(gs_ptr + prev * P + tile, mask=m, other=0.0).to(CD)
        if not DETACH:
            if HARD:
                gs = gs + gh * (v_reset - vp)
            else:
                gs = gs - gh * v_th
        gvp = _surrogate_bwd(gs, vp - v_th, sg_param, SURROGATE)
        if HARD:
            gvp = gvp + tl.where(sp, 0.0, gh)
        else:
            gvp = gvp + gh
        gvp = tl.where(m, gvp, 0.0)
        tl.store(gv_out_ptr + state, gvp, mask=m)
        if HAS_SA:
            tl.store(part_a_ptr + part + offs_c, tl.sum(gvp * up, axis=1), mask=mc)
        tl.store(part_b_ptr + part + offs_c, tl.sum(gvp, axis=1), mask=mc)


@triton.jit(do_not_specialize=["T"])
def staa_bwd_persistent_kernel(
    gs_ptr, x_ptr, pos_ptr, u_ptr, gate_ptr, drop_ptr,
    gv_ptr,  # [2, B, C, P] CD scratch: dL/dV of the current and the previous step (ping-pong)
    gm_ptr, gctx1_ptr, gctx2_ptr, gx_ptr, kw1_ptr, kb1_ptr, kw2_ptr, kb2_ptr,
    acc_kw1_ptr, acc_kb1_ptr, acc_kw2_ptr, acc_kb2_ptr, gpos_ptr, part_a_ptr, part_b_ptr,
    ctx1_ptr, xsum_ptr, ctx2_ptr, hsum_ptr,  # as in ``staa_bwd_mlp_kernel``
    qw1_ptr, qb1_ptr, nw1_ptr, nb1_ptr, vw1_ptr, vb1_ptr, qw2_ptr, qb2_ptr, nw2_ptr, nb2_ptr, vw2_ptr, vb2_ptr,
    f1w_ptr, f1b_ptr, f2w_ptr, f2b_ptr,
    gz_ptr, gsum_ptr, pooled_ptr, hid_ptr, ghid_ptr,
    r1_ptr, gq1_ptr, gn1_ptr, gnq1_ptr, r2_ptr, gq2_ptr, gn2_ptr, gnq2_ptr,
    h0_ptr, gh0_ptr, ghl_ptr,  # as in ``staa_bwd_elem_kernel``
    T, B, C, P, NP, CHG1, CHG2, CHS, alpha, v_th, v_reset, h0, sg_param,
    SURROGATE: tl.constexpr, HAS_H0: tl.constexpr, HAS_GHL: tl.constexpr, HAS_POS: tl.constexpr, HAS_GCX: tl.constexpr, HAS_GCH: tl.constexpr, HAS_SA: tl.constexpr,
    HARD: tl.constexpr, DETACH: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_NP: tl.constexpr,
    BLOCK_CC: tl.constexpr, BLOCK_HG1: tl.constexpr, BLOCK_HG2: tl.constexpr, BLOCK_HS: tl.constexpr,
    CD: tl.constexpr,
):
    """The whole reverse time loop of one sample b (grid ``[B]``), for small planes: the
    per-step path's launch sequence (START-only elementwise pass, then per step the MLP
    backward and the elementwise pass over the plane's ``NP`` tiles) run in one program, with
    CTA barriers (``tl.debug_barrier``) where the per-step path has kernel boundaries. Every
    scratch row it reads back was written by this program; weight-gradient partials are
    per (sample, tile) or per (step, sample), as in the per-step path."""
    b = tl.program_id(0)
    plane = (b.to(tl.int64) * 0 + B) * C * P  # elements of one [B, C, P] gv buffer, in int64
    # dL/dV_{T-1} into buffer 0 (dL/dH_{T-1} is grad_h_last with HAS_GHL, else 0).
    for j in range(0, NP):
        _bwd_elem_tile(
            b, j, T, gs_ptr, x_ptr, pos_ptr, u_ptr, gate_ptr, drop_ptr, gv_ptr + plane, gv_ptr,
            gm_ptr, gctx1_ptr, gctx2_ptr, gx_ptr, kw1_ptr, kb1_ptr, kw2_ptr, kb2_ptr,
            acc_kw1_ptr, acc_kb1_ptr, acc_kw2_ptr, acc_kb2_ptr, gpos_ptr, part_a_ptr, part_b_ptr,
            h0_ptr, gh0_ptr, ghl_ptr, B, C, P, NP, v_th, v_reset, h0, sg_param, False, True, SURROGATE, HAS_H0,
            HAS_GHL, HAS_POS, HAS_GCX, HAS_GCH, HAS_SA, HARD, DETACH, BLOCK_C, BLOCK_P, CD,
        )
    tl.debug_barrier()
    for k in range(1, T + 1):
        t = T - k  # T-1 down to 0; step t reads dL/dV_t from buffer (k-1) % 2
        par = (k - 1) % 2
        gv_in = gv_ptr + par * plane
        gv_out = gv_ptr + (1 - par) * plane
        if HAS_GCX or HAS_GCH or HAS_SA:
            _bwd_mlp_sample(
                b, t, part_a_ptr, part_b_ptr, gate_ptr, drop_ptr, ctx1_ptr, xsum_ptr, ctx2_ptr, hsum_ptr,
                qw1_ptr, qb1_ptr, nw1_ptr, nb1_ptr, vw1_ptr, vb1_ptr, qw2_ptr, qb2_ptr, nw2_ptr, nb2_ptr, vw2_ptr,
                vb2_ptr, f1w_ptr, f1b_ptr, f2w_ptr, f2b_ptr, gm_ptr, gctx1_ptr, gctx2_ptr, gz_ptr, gsum_ptr,
                pooled_ptr, hid_ptr, ghid_ptr, r1_ptr, gq1_ptr, gn1_ptr, gnq1_ptr, r2_ptr, gq2_ptr, gn2_ptr, gnq2_ptr,
                B, C, P, NP, CHG1, CHG2, CHS, alpha, HAS_GCX, HAS_GCH, HAS_SA,
                BLOCK_NP, BLOCK_CC, BLOCK_HG1, BLOCK_HG2, BLOCK_HS, CD,
            )
            tl.debug_barrier()
        if k < T:
            for j in range(0, NP):
                _bwd_elem_tile(
                    b, j, t, gs_ptr, x_ptr, pos_ptr, u_ptr, gate_ptr, drop_ptr, gv_in, gv_out,
                    gm_ptr, gctx1_ptr, gctx2_ptr, gx_ptr, kw1_ptr, kb1_ptr, kw2_ptr, kb2_ptr,
                    acc_kw1_ptr, acc_kb1_ptr, acc_kw2_ptr, acc_kb2_ptr, gpos_ptr, part_a_ptr, part_b_ptr,
                    h0_ptr, gh0_ptr, ghl_ptr, B, C, P, NP, v_th, v_reset, h0, sg_param, True, True, SURROGATE, HAS_H0,
                    HAS_GHL, HAS_POS, HAS_GCX, HAS_GCH, HAS_SA, HARD, DETACH, BLOCK_C, BLOCK_P, CD,
                )
        else:
            for j in range(0, NP):
                _bwd_elem_tile(
                    b, j, t, gs_ptr, x_ptr, pos_ptr, u_ptr, gate_ptr, drop_ptr, gv_in, gv_out,
                    gm_ptr, gctx1_ptr, gctx2_ptr, gx_ptr, kw1_ptr, kb1_ptr, kw2_ptr, kb2_ptr,
                    acc_kw1_ptr, acc_kb1_ptr, acc_kw2_ptr, acc_kb2_ptr, gpos_ptr, part_a_ptr, part_b_ptr,
                    h0_ptr, gh0_ptr, ghl_ptr, B, C, P, NP, v_th, v_reset, h0, sg_param, True, False, SURROGATE, HAS_H0,
                    HAS_GHL, HAS_POS, HAS_GCX, HAS_GCH, HAS_SA, HARD, DETACH, BLOCK_C, BLOCK_P, CD,
                )
        tl.debug_barrier()


# ----------------------------------------------------------------------------- parameter gradients
# Every parameter gradient is a sum over rows: over the N = T*B (step, sample) rows of the MLP
# factors, over the T*B*NP (step, sample, tile) rows of the key-gradient partials, over the B*NP
# rows of one step's position-encoding partials. No program walks all rows of a sum: pass 1
# (``staa_bwd_weights_kernel``) splits the rows into contiguous ranges of RB blocks of BLOCK_N rows,
# one range per program (the grid's split axis), and writes each range's partial result; pass 2
# (``staa_bwd_weights_sum_kernel``) adds the ranges' partials of each output element with one
# ``tl.sum`` over a ``[BLOCK_S, BLOCK_E]`` block. Both orders are fixed by the launch
# configuration (no atomics), so gradients are bitwise repeatable.
#
# Layout of one split's partials (row s of ``part_m [NSM, TM]`` and ``part_v [NSV, TV]``), CH1, CH2
# and CHS the hidden widths (1 for a disabled block, whose slots are never written or read):
#   part_m: qw1 [CH1, C] | vw1 [C, CH1] | qw2 [CH2, C] | vw2 [C, CH2] | f1w [CHS, C] | f2w [C, CHS]
#   part_v: kw1 [C] | vb1 [C] | kw2 [C] | vb2 [C] | f2b [C] | pos [T_pos, C] |
#           kb1 [1] | qb1, nw1, nb1 [CH1] | kb2 [1] | qb2, nw2, nb2 [CH2] | f1b [CHS]
# Position-encoding rows t >= T (not used by the call) get zero partials.
WEIGHT_JOBS_FIXED = 19  # pass-1 jobs before the T_pos position-encoding rows (a literal in the kernel)
WEIGHT_OUTPUTS = 21  # pass-2 jobs: one per gradient tensor


@triton.jit
def _row_range(s, RB, rows, BLOCK_N: tl.constexpr):
    """Rows ``[lo, hi)`` of split ``s`` (RB blocks of BLOCK_N rows each) of a sum over ``rows`` rows."""
    lo = s * (RB * BLOCK_N)
    return lo, tl.minimum(lo + RB * BLOCK_N, rows)


@triton.jit
def _outer_part(a_ptr, A, b_ptr, C, dst_ptr, lo, hi, RB, ph, pc, TRANS: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_HD: tl.constexpr, BLOCK_WC: tl.constexpr, CD: tl.constexpr):
    """``sum_{n in [lo, hi)} a[n, h] b[n, c]`` for hidden tile ``ph`` and channel tile ``pc`` of
    ``a [N, A]`` and ``b [N, C]``: one ``tl.dot`` per block of BLOCK_N rows, accumulated in row
    order, with IEEE fp32 products (no tf32: the gradients match the torch path to fp32 rounding).
    Stored at ``dst`` as ``[A, C]`` (``[C, A]`` with TRANS)."""
    offs_h = ph * BLOCK_HD + tl.arange(0, BLOCK_HD)
    mh = offs_h < A
    offs_c = pc * BLOCK_WC + tl.arange(0, BLOCK_WC)
    mc = offs_c < C
    if ph * BLOCK_HD < A:
        offs_n = tl.arange(0, BLOCK_N)
        acc = tl.zeros([BLOCK_HD, BLOCK_WC], dtype=CD)
        for k in range(0, RB):
            n = lo + k * BLOCK_N + offs_n
            mn = n < hi
            rows = n.to(tl.int64)
            a = tl.load(a_ptr + rows[:, None] * A + offs_h[None, :], mask=mn[:, None] & mh[None, :], other=0.0)
            b = tl.load(b_ptr + rows[:, None] * C + offs_c[None, :], mask=mn[:, None] & mc[None, :], other=0.0)
            acc = tl.dot(tl.trans(a), b, acc, input_precision="ieee")
        m = mh[:, None] & mc[None, :]
        if TRANS:
            tl.store(dst_ptr + offs_c[None, :] * A + offs_h[:, None], acc, mask=m)
        else:
            tl.store(dst_ptr + offs_h[:, None] * C + offs_c[None, :], acc, mask=m)


@triton.jit
def _col_part(src_ptr, W, lo, hi, RB, offs, m, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, CD: tl.constexpr):
    """``sum_{n in [lo, hi)} src[n, offs]`` of ``src [rows, W]``: BLOCK_N-row blocks added in row
    order into a ``[BLOCK_N, BLOCK_W]`` accumulator, then one ``tl.sum`` over its rows."""
    offs_n = tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_N, BLOCK_W], dtype=CD)
    for k in range(0, RB):
        n = lo + k * BLOCK_N + offs_n
        acc += tl.load(src_ptr + n.to(tl.int64)[:, None] * W + offs[None, :], mask=(n < hi)[:, None] & m[None, :],
                       other=0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def staa_bwd_weights_kernel(
    ctx1_ptr, ctx2_ptr,  # [T, B, C]: GC contexts (the forward's reductions)
    gsum_ptr, gz_ptr, pooled_ptr,  # [T, B, C] from the MLP backward
    hid_ptr, ghid_ptr,  # [T, B, CHS]
    r1_ptr, gq1_ptr, gn1_ptr, gnq1_ptr, r2_ptr, gq2_ptr, gn2_ptr, gnq2_ptr,  # [T, B, CHG*]
    akw1_ptr, akb1_ptr, akw2_ptr, akb2_ptr,  # [T, B, NP, C], [T, B, NP]: key-gradient partials
    gpos_ptr,  # [T, B, NP, C]: per-tile position-encoding gradient partials
    part_m_ptr, part_v_ptr,  # [NSM, TM], [NSV, TV] out: per-split partials (layout above)
    N, T, T_pos, BNP, C, CHG1, CHG2, CHS, NCT, NSM, RBM, NSV, RBV,
    HAS_POS: tl.constexpr, HAS_GCX: tl.constexpr, HAS_GCH: tl.constexpr, HAS_SA: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_HD: tl.constexpr, BLOCK_WC: tl.constexpr, BLOCK_WV: tl.constexpr,
    BLOCK_HG1: tl.constexpr, BLOCK_HG2: tl.constexpr, BLOCK_HS: tl.constexpr, CD: tl.constexpr,
):
    """Pass 1 of the parameter gradients (grid ``[tiles, 19 + T_pos, splits]``): program
    ``(p, job, s)`` sums split s's rows of one output's tile. Jobs 0-5 are the weight matrices (GC1
    query and value, GC2 query and value, SA fc1 and fc2; tile p = hidden tile p // NCT x channel
    tile p % NCT; splits s < NSM of RBM blocks), the rest vectors (splits s < NSV of RBV blocks):
    6 value biases (sum of gsum), 7 fc2's bias, 8 and 9 the key weights (channel tile p < cdiv(C,
    BLOCK_WV)); in program p = 0 only, 10-13 GC1's key bias, query bias, LayerNorm weight and bias,
    14-17 GC2's, 18 fc1's bias; 19 + t position-encoding row t."""
    pid = tl.program_id(0)
    job = tl.program_id(1)
    s = tl.program_id(2)
    TM = 2 * C * (CHG1 + CHG2 + CHS)
    HV = (5 + T_pos) * C  # start of the hidden-sized vectors in part_v
    TV = HV + 2 + 3 * (CHG1 + CHG2) + CHS
    if job < 6:
        if s < NSM:
            pc = pid % NCT
            ph = pid // NCT
            lo, hi = _row_range(s, RBM, N, BLOCK_N)
            dst = part_m_ptr + s.to(tl.int64) * TM
            o2 = 2 * CHG1 * C  # GC2's matrices
            o3 = o2 + 2 * CHG2 * C  # SA's
            if job == 0:
                if HAS_GCX:
                    _outer_part(gq1_ptr, CHG1, ctx1_ptr, C, dst, lo, hi, RBM, ph, pc, False,
                                BLOCK_N, BLOCK_HD, BLOCK_WC, CD)
            elif job == 1:
                if HAS_GCX:
                    _outer_part(r1_ptr, CHG1, gsum_ptr, C, dst + CHG1 * C, lo, hi, RBM, ph, pc, True,
                                BLOCK_N, BLOCK_HD, BLOCK_WC, CD)
            elif job == 2:
                if HAS_GCH:
                    _outer_part(gq2_ptr, CHG2, ctx2_ptr, C, dst + o2, lo, hi, RBM, ph, pc, False,
                                BLOCK_N, BLOCK_HD, BLOCK_WC, CD)
            elif job == 3:
                if HAS_GCH:
                    _outer_part(r2_ptr, CHG2, gsum_ptr, C, dst + o2 + CHG2 * C, lo, hi, RBM, ph, pc, True,
                                BLOCK_N, BLOCK_HD, BLOCK_WC, CD)
            elif job == 4:
                if HAS_SA:
                    _outer_part(ghid_ptr, CHS, pooled_ptr, C, dst + o3, lo, hi, RBM, ph, pc, False,
                                BLOCK_N, BLOCK_HD, BLOCK_WC, CD)
            else:
                if HAS_SA:
                    _outer_part(hid_ptr, CHS, gz_ptr, C, dst + o3 + CHS * C, lo, hi, RBM, ph, pc, True,
                                BLOCK_N, BLOCK_HD, BLOCK_WC, CD)
    elif s < NSV:
        dst = part_v_ptr + s.to(tl.int64) * TV
        NK = T * BNP  # (step, sample, tile) rows of the key-gradient partials
        if job < 10:
            offs_c = pid * BLOCK_WV + tl.arange(0, BLOCK_WV)
            mc = offs_c < C
            if pid * BLOCK_WV < C:
                if job == 6:
                    if HAS_GCX or HAS_GCH:
                        lo, hi = _row_range(s, RBV, N, BLOCK_N)
                        gsum = _col_part(gsum_ptr, C, lo, hi, RBV, offs_c, mc, BLOCK_N, BLOCK_WV, CD)
                        if HAS_GCX:
                            tl.store(dst + C + offs_c, gsum, mask=mc)
                        if HAS_GCH:
                            tl.store(dst + 3 * C + offs_c, gsum, mask=mc)
                elif job == 7:
                    if HAS_SA:
                        lo, hi = _row_range(s, RBV, N, BLOCK_N)
                        tl.store(dst + 4 * C + offs_c, _col_part(gz_ptr, C, lo, hi, RBV, offs_c, mc, BLOCK_N,
                                                                BLOCK_WV, CD), mask=mc)
                elif job == 8:
                    if HAS_GCX:
                        lo, hi = _row_range(s, RBV, NK, BLOCK_N)
                        tl.store(dst + offs_c, _col_part(akw1_ptr, C, lo, hi, RBV, offs_c, mc, BLOCK_N, BLOCK_WV,
                                                         CD), mask=mc)
                else:
                    if HAS_GCH:
                        lo, hi = _row_range(s, RBV, NK, BLOCK_N)
                        tl.store(dst + 2 * C + offs_c, _col_part(akw2_ptr, C, lo, hi, RBV, offs_c, mc, BLOCK_N,
                                                                 BLOCK_WV, CD), mask=mc)
        elif job < 19:
            if pid == 0:
                offs_1 = tl.arange(0, 1)
                m1 = offs_1 < 1
                offs_h1 = tl.arange(0, BLOCK_HG1)
                mh1 = offs_h1 < CHG1
                offs_h2 = tl.arange(0, BLOCK_HG2)
                mh2 = offs_h2 < CHG2
                offs_hs = tl.arange(0, BLOCK_HS)
                mhs = offs_hs < CHS
                g2 = HV + 1 + 3 * CHG1  # GC2's hidden-sized slots
                lo, hi = _row_range(s, RBV, N, BLOCK_N)
                if job == 10:
                    if HAS_GCX:
                        lk, hk = _row_range(s, RBV, NK, BLOCK_N)
                        tl.store(dst + HV + offs_1, _col_part(akb1_ptr, 1, lk, hk, RBV, offs_1, m1, BLOCK_N, 1, CD))
                elif job == 11:
                    if HAS_GCX:
                        tl.store(dst + HV + 1 + offs_h1, _col_part(gq1_ptr, CHG1, lo, hi, RBV, offs_h1, mh1, BLOCK_N,
                                                                   BLOCK_HG1, CD), mask=mh1)
                elif job == 12:
                    if HAS_GCX:
                        tl.store(dst + HV + 1 + CHG1 + offs_h1, _col_part(gnq1_ptr, CHG1, lo, hi, RBV, offs_h1, mh1,
                                                                          BLOCK_N, BLOCK_HG1, CD), mask=mh1)
                elif job == 13:
                    if HAS_GCX:
                        tl.store(dst + HV + 1 + 2 * CHG1 + offs_h1, _col_part(gn1_ptr, CHG1, lo, hi, RBV, offs_h1, mh1,
                                                                              BLOCK_N, BLOCK_HG1, CD), mask=mh1)
                elif job == 14:
                    if HAS_GCH:
                        lk, hk = _row_range(s, RBV, NK, BLOCK_N)
                        tl.store(dst + g2 + offs_1, _col_part(akb2_ptr, 1, lk, hk, RBV, offs_1, m1, BLOCK_N, 1, CD))
                elif job == 15:
                    if HAS_GCH:
                        tl.store(dst + g2 + 1 + offs_h2, _col_part(gq2_ptr, CHG2, lo, hi, RBV, offs_h2, mh2, BLOCK_N,
                                                                   BLOCK_HG2, CD), mask=mh2)
                elif job == 16:
                    if HAS_GCH:
                        tl.store(dst + g2 + 1 + CHG2 + offs_h2, _col_part(gnq2_ptr, CHG2, lo, hi, RBV, offs_h2, mh2,
                                                                          BLOCK_N, BLOCK_HG2, CD), mask=mh2)
                elif job == 17:
                    if HAS_GCH:
                        tl.store(dst + g2 + 1 + 2 * CHG2 + offs_h2, _col_part(gn2_ptr, CHG2, lo, hi, RBV, offs_h2, mh2,
                                                                              BLOCK_N, BLOCK_HG2, CD), mask=mh2)
                else:
                    if HAS_SA:
                        tl.store(dst + g2 + 1 + 3 * CHG2 + offs_hs, _col_part(ghid_ptr, CHS, lo, hi, RBV, offs_hs, mhs,
                                                                              BLOCK_N, BLOCK_HS, CD), mask=mhs)
        else:
            if HAS_POS:
                t = job - 19  # position-encoding row t: the B*NP partials of step t
                offs_c = pid * BLOCK_WV + tl.arange(0, BLOCK_WV)
                mc = offs_c < C
                if pid * BLOCK_WV < C:
                    lo, hi = _row_range(s, RBV, tl.where(t < T, BNP, 0), BLOCK_N)
                    src = gpos_ptr + tl.minimum(t, T - 1).to(tl.int64) * BNP * C
                    tl.store(dst + (5 + t) * C + offs_c, _col_part(src, C, lo, hi, RBV, offs_c, mc, BLOCK_N,
                                                                   BLOCK_WV, CD), mask=mc)


@triton.jit
def _sum_splits(part_ptr, NS, STRIDE, off, numel, out_ptr, pe, BLOCK_S: tl.constexpr, BLOCK_E: tl.constexpr,
                CD: tl.constexpr):
    """``out[e] = sum_s part[s, off + e]`` over the NS splits, for elements ``e`` of block ``pe``:
    ``[BLOCK_S, BLOCK_E]`` blocks of splits, each summed by ``tl.sum``, added in split order."""
    offs_e = pe * BLOCK_E + tl.arange(0, BLOCK_E)
    me = offs_e < numel
    if pe * BLOCK_E < numel:
        offs_s = tl.arange(0, BLOCK_S)
        acc = tl.zeros([BLOCK_E], dtype=CD)
        for s0 in range(0, NS, BLOCK_S):
            sp = s0 + offs_s
            blk = tl.load(part_ptr + sp.to(tl.int64)[:, None] * STRIDE + off + offs_e[None, :],
                          mask=(sp < NS)[:, None] & me[None, :], other=0.0)
            acc += tl.sum(blk, axis=0)
        tl.store(out_ptr + offs_e, acc.to(out_ptr.dtype.element_ty), mask=me)


@triton.jit
def staa_bwd_weights_sum_kernel(
    part_m_ptr, part_v_ptr,  # [NSM, TM], [NSV, TV]: pass 1's per-split partials
    oqw1_ptr, ovw1_ptr, oqw2_ptr, ovw2_ptr, of1w_ptr, of2w_ptr,  # weight-matrix gradients out
    okw1_ptr, ovb1_ptr, okw2_ptr, ovb2_ptr, of2b_ptr, opos_ptr,  # C-sized (and [T_pos, C]) gradients out
    okb1_ptr, oqb1_ptr, onw1_ptr, onb1_ptr, okb2_ptr, oqb2_ptr, onw2_ptr, onb2_ptr, of1b_ptr,  # the rest
    T_pos, C, CHG1, CHG2, CHS, NSM, NSV,
    HAS_POS: tl.constexpr, HAS_GCX: tl.constexpr, HAS_GCH: tl.constexpr, HAS_SA: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_E: tl.constexpr, CD: tl.constexpr,
):
    """Pass 2 of the parameter gradients (grid ``[element blocks, 21]``): program ``(pe, job)`` adds
    the split partials of element block pe of gradient ``job`` (in the argument order of the
    outputs) and stores it in the gradient's dtype."""
    pe = tl.program_id(0)
    job = tl.program_id(1)
    TM = 2 * C * (CHG1 + CHG2 + CHS)
    HV = (5 + T_pos) * C
    TV = HV + 2 + 3 * (CHG1 + CHG2) + CHS
    g2 = HV + 1 + 3 * CHG1
    if job < 6:
        o2 = 2 * CHG1 * C
        o3 = o2 + 2 * CHG2 * C
        if job == 0:
            if HAS_GCX:
                _sum_splits(part_m_ptr, NSM, TM, 0, CHG1 * C, oqw1_ptr, pe, BLOCK_S, BLOCK_E, CD)
        elif job == 1:
            if HAS_GCX:
                _sum_splits(part_m_ptr, NSM, TM, CHG1 * C, CHG1 * C, ovw1_ptr, pe, BLOCK_S, BLOCK_E, CD)
        elif job == 2:
            if HAS_GCH:
                _sum_splits(part_m_ptr, NSM, TM, o2, CHG2 * C, oqw2_ptr, pe, BLOCK_S, BLOCK_E, CD)
        elif job == 3:
            if HAS_GCH:
                _sum_splits(part_m_ptr, NSM, TM, o2 + CHG2 * C, CHG2 * C, ovw2_ptr, pe, BLOCK_S, BLOCK_E, CD)
        elif job == 4:
            if HAS_SA:
                _sum_splits(part_m_ptr, NSM, TM, o3, CHS * C, of1w_ptr, pe, BLOCK_S, BLOCK_E, CD)
        else:
            if HAS_SA:
                _sum_splits(part_m_ptr, NSM, TM, o3 + CHS * C, CHS * C, of2w_ptr, pe, BLOCK_S, BLOCK_E, CD)
    elif job < 12:
        if job == 6:
            if HAS_GCX:
                _sum_splits(part_v_ptr, NSV, TV, 0, C, okw1_ptr, pe, BLOCK_S, BLOCK_E, CD)
        elif job == 7:
            if HAS_GCX:
                _sum_splits(part_v_ptr, NSV, TV, C, C, ovb1_ptr, pe, BLOCK_S, BLOCK_E, CD)
        elif job == 8:
            if HAS_GCH:
                _sum_splits(part_v_ptr, NSV, TV, 2 * C, C, okw2_ptr, pe, BLOCK_S, BLOCK_E, CD)
        elif job == 9:
            if HAS_GCH:
                _sum_splits(part_v_ptr, NSV, TV, 3 * C, C, ovb2_ptr, pe, BLOCK_S, BLOCK_E, CD)
        elif job == 10:
            if HAS_SA:
                _sum_splits(part_v_ptr, NSV, TV, 4 * C, C, of2b_ptr, pe, BLOCK_S, BLOCK_E, CD)
        else:
            if HAS_POS:
                _sum_splits(part_v_ptr, NSV, TV, 5 * C, T_pos * C, opos_ptr, pe, BLOCK_S, BLOCK_E, CD)
    elif job < 16:
        if HAS_GCX:
            if job == 12:
                _sum_splits(part_v_ptr, NSV, TV, HV, 1, okb1_ptr, pe, BLOCK_S, BLOCK_E, CD)
            elif job == 13:
                _sum_splits(part_v_ptr, NSV, TV, HV + 1, CHG1, oqb1_ptr, pe, BLOCK_S, BLOCK_E, CD)
            elif job == 14:
                _sum_splits(part_v_ptr, NSV, TV, HV + 1 + CHG1, CHG1, onw1_ptr, pe, BLOCK_S, BLOCK_E, CD)
            else:
                _sum_splits(part_v_ptr, NSV, TV, HV + 1 + 2 * CHG1, CHG1, onb1_ptr, pe, BLOCK_S, BLOCK_E, CD)
    elif job < 20:
        if HAS_GCH:
            if job == 16:
                _sum_splits(part_v_ptr, NSV, TV, g2, 1, okb2_ptr, pe, BLOCK_S, BLOCK_E, CD)
            elif job == 17:
                _sum_splits(part_v_ptr, NSV, TV, g2 + 1, CHG2, oqb2_ptr, pe, BLOCK_S, BLOCK_E, CD)
            elif job == 18:
                _sum_splits(part_v_ptr, NSV, TV, g2 + 1 + CHG2, CHG2, onw2_ptr, pe, BLOCK_S, BLOCK_E, CD)
            else:
                _sum_splits(part_v_ptr, NSV, TV, g2 + 1 + 2 * CHG2, CHG2, onb2_ptr, pe, BLOCK_S, BLOCK_E, CD)
    else:
        if HAS_SA:
            _sum_splits(part_v_ptr, NSV, TV, g2 + 1 + 3 * CHG2, CHS, of1b_ptr, pe, BLOCK_S, BLOCK_E, CD)
