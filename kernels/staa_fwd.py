"""Forward Triton kernels of the STAA-LIF recurrence.

One launch before the time loop (see ``launch.staa_lif_forward``):

* ``staa_plane_reduce_kernel`` (grid ``[T*B + B, NP]``): per-tile GC1 context partials and
  spatial sums of X_t = I_t + PE_t for every step (they do not depend on the recurrence), and
  the same GC2 reductions of the initial state H_{-1} for the first step.

Then two kernels per time step t:

* ``staa_fwd_mlp_kernel`` (grid ``[B]``): sums the per-tile partials of X_t and of H_{t-1}
  (all of a sample's tiles in one block load per channel chunk, ``_sum_partials``),
  runs GC1's and GC2's query/LayerNorm/value MLPs and SA's fc1/fc2, and writes GC1's channel
  delta ``d1[t, b, :]``, GC2's ``d2[b, :]``, the SA gate ``gate[t, b, :]`` and (``STATS``) the
  step's summed reductions, kept for the backward so that it need not re-read x or u.
* ``staa_fwd_elem_kernel`` (grid ``[B, NP]``, one ``[C, BLOCK_P]`` tile of the plane per
  program): recomputes H_{t-1} from the saved ``u[t-1]`` and ``gate[t-1]``, aggregates
  ``u_t``, gates, fires, resets, writes ``u``, spikes (and H), then reduces H_t over its
  tile for the next step's MLP kernel.

For small planes (``launch.loop_path``) ``staa_fwd_persistent_kernel`` (grid ``[B]``)
instead runs the whole time loop of one sample in one program: per step the same MLP code,
a CTA barrier, the elementwise pass over the plane's tiles, and another barrier.

All arithmetic is in ``CD`` (float32, or float64 for float64 input); scalars are cast.
The initial state H_{-1} is either the rest constant ``h0`` (``HAS_H0`` off: nothing to load)
or a ``[B, C, P]`` tensor (``HAS_H0``). A non-finite V gives a NaN spike and a NaN state.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _relu(z):
    """max(z, 0) with NaN kept NaN, as ``torch.relu`` (a plain max would turn NaN into 0)."""
    return tl.maximum(z, 0.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _sum_partials(ptr, NP, C, offs_c, mc, BLOCK_NP: tl.constexpr, BLOCK_CC: tl.constexpr, CD: tl.constexpr):
    """Sum over a sample's NP plane tiles of the per-tile partial C-vectors at ``ptr`` (layout
    [NP, C]), for the channels ``offs_c``: ``[BLOCK_NP, BLOCK_CC]`` blocks of tiles, each summed
    by ``tl.sum`` and added in block order (a fixed order: bitwise repeatable). The launchers
    size ``BLOCK_NP`` (``launch.partial_block``) so one block holds every tile of the shipped
    planes: one load, however large the plane."""
    offs_j = tl.arange(0, BLOCK_NP)
    acc = tl.zeros([BLOCK_CC], dtype=CD)
    for j0 in range(0, NP, BLOCK_NP):
        rows = j0 + offs_j
        blk = tl.load(ptr + rows[:, None] * C + offs_c[None, :], mask=(rows < NP)[:, None] & mc[None, :], other=0.0)
        acc += tl.sum(blk, axis=0)
    return acc


@triton.jit
def _reset(v, v_th, v_reset, HARD: tl.constexpr):
    """H = reset(V): spike where V >= v_th; hard reset to v_reset or soft reset by v_th.

    ``V - V`` is 0 where V is finite and NaN where it is not, so H is NaN wherever V is not
    finite, as the multiplicative reset formula with a NaN spike gives (see ``_spike_value``).
    """
    s = v >= v_th
    if HARD:
        h = tl.where(s, v_reset, v) + (v - v)
    else:
        h = tl.where(s, v - v_th, v) + (v - v)
    return s, h


@triton.jit
def _reset_scalars(v_th, v_reset, h0, CD: tl.constexpr):
    """The threshold, the reset value and the resting state H_{-1} as CD values (kernel scalars
    arrive as Python floats: rounded to fp32 first, as the launchers document)."""
    return (tl.cast(tl.cast(v_th, tl.float32), CD), tl.cast(tl.cast(v_reset, tl.float32), CD),
            tl.cast(tl.cast(h0, tl.float32), CD))


@triton.jit
def _plane_tile(j, C, P, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Tile j of a [C, P] plane: channel offsets ``offs_c`` and mask ``mc`` [BLOCK_C], position
    mask ``mp`` [BLOCK_P], the tile's mask ``m`` and element offsets ``tile`` [BLOCK_C, BLOCK_P]."""
    offs_c = tl.arange(0, BLOCK_C)
    offs_p = j * BLOCK_P + tl.arange(0, BLOCK_P)
    mc = offs_c < C
    mp = offs_p < P
    return offs_c, mc, mp, mc[:, None] & mp[None, :], offs_c[:, None] * P + offs_p[None, :]


@triton.jit
def _spike_value(s, v):
    """The stored spike: 1.0 / 0.0 from the comparison ``s``, NaN where V is not finite."""
    return tl.where(s, 1.0, 0.0) + (v - v)


@triton.jit
def _gc_query_ln(src_ptr, NP, C, qw_ptr, qb_ptr, nw_ptr, nb_ptr, ctx_out_ptr, offs_h, mh, CH,
                 STATS: tl.constexpr, BLOCK_NP: tl.constexpr, BLOCK_CC: tl.constexpr, BLOCK_H: tl.constexpr,
                 CD: tl.constexpr):
    """GC's query and LayerNorm for one sample: the context ``ctx [C]`` is the sum of the ``NP``
    partial C-vectors at ``src_ptr`` (layout [NP, C]; NP = 1 for a summed context), stored at
    ``ctx_out_ptr`` with ``STATS``. Returns ``(qhat, rstd, n)``: the normalised query, 1 / std
    and the LayerNorm output ``n = qhat * norm_weight + norm_bias`` before the relu ([BLOCK_H],
    0 in padded lanes)."""
    q = tl.zeros([BLOCK_H], dtype=CD)
    for c0 in range(0, C, BLOCK_CC):
        offs_c = c0 + tl.arange(0, BLOCK_CC)
        mc = offs_c < C
        ctx = _sum_partials(src_ptr, NP, C, offs_c, mc, BLOCK_NP, BLOCK_CC, CD)
        if STATS:
            tl.store(ctx_out_ptr + offs_c, ctx, mask=mc)
        w = tl.load(qw_ptr + offs_h[:, None] * C + offs_c[None, :], mask=mh[:, None] & mc[None, :], other=0.0)
        q += tl.sum(w.to(CD) * ctx[None, :], axis=1)
    q += tl.load(qb_ptr + offs_h, mask=mh, other=0.0).to(CD)
    mean = tl.sum(q, axis=0) / CH
    diff = tl.where(mh, q - mean, 0.0)
    var = tl.sum(diff * diff, axis=0) / CH
    rstd = 1.0 / tl.sqrt(var + 1e-5)
    nw = tl.load(nw_ptr + offs_h, mask=mh, other=0.0).to(CD)
    nb = tl.load(nb_ptr + offs_h, mask=mh, other=0.0).to(CD)
    return diff * rstd, rstd, diff * rstd * nw + nb


@triton.jit
def _gc_value(vw_ptr, vb_ptr, r, offs_c, mc, offs_h, mh, CH, CD: tl.constexpr):
    """GC's channel delta ``value_weight @ r + value_bias`` for the channels ``offs_c``."""
    wv = tl.load(vw_ptr + offs_c[None, :] * CH + offs_h[:, None], mask=mh[:, None] & mc[None, :], other=0.0)
    return tl.sum(wv.to(CD) * r[:, None], axis=0) + tl.load(vb_ptr + offs_c, mask=mc, other=0.0).to(CD)


@triton.jit(do_not_specialize=["t"])
def staa_fwd_mlp_kernel(
    part_xctx_ptr, part_xsum_ptr,  # [T*B, NP, C]: partial GC1 contexts / spatial sums of X (all steps)
    part_ctx_ptr, part_hsum_ptr,  # [B, NP, C]: partial GC2 contexts / spatial sums of H_{t-1}
    d1_ptr,  # [T, B, C] out: GC1 delta
    d2_ptr,  # [B, C] out: GC2 delta of this step
    gate_ptr,  # [T, B, C] out: SA gate (1 at dropped steps)
    drop_ptr,  # [T] int8
    ctx1_out_ptr, xsum_out_ptr, ctx2_out_ptr, hsum_out_ptr,  # [T, B, C] out (STATS): summed reductions
    qw1_ptr, qb1_ptr, nw1_ptr, nb1_ptr, vw1_ptr, vb1_ptr,  # GC1 weights
    qw2_ptr, qb2_ptr, nw2_ptr, nb2_ptr, vw2_ptr, vb2_ptr,  # GC2 weights
    f1w_ptr, f1b_ptr, f2w_ptr, f2b_ptr,  # SA weights
    t, B, C, P, NP, CHG1, CHG2, CHS, alpha,
    HAS_GCX: tl.constexpr, HAS_GCH: tl.constexpr, HAS_SA: tl.constexpr, STATS: tl.constexpr,
    BLOCK_NP: tl.constexpr, BLOCK_CC: tl.constexpr, BLOCK_HG1: tl.constexpr, BLOCK_HG2: tl.constexpr,
    BLOCK_HS: tl.constexpr, CD: tl.constexpr,
):
    _fwd_mlp_sample(
        tl.program_id(0), t, part_xctx_ptr, part_xsum_ptr, part_ctx_ptr, part_hsum_ptr, d1_ptr, d2_ptr, gate_ptr,
        drop_ptr, ctx1_out_ptr, xsum_out_ptr, ctx2_out_ptr, hsum_out_ptr,
        qw1_ptr, qb1_ptr, nw1_ptr, nb1_ptr, vw1_ptr, vb1_ptr, qw2_ptr, qb2_ptr, nw2_ptr, nb2_ptr, vw2_ptr, vb2_ptr,
        f1w_ptr, f1b_ptr, f2w_ptr, f2b_ptr, B, C, P, NP, CHG1, CHG2, CHS, alpha,
        HAS_GCX, HAS_GCH, HAS_SA, STATS, BLOCK_NP, BLOCK_CC, BLOCK_HG1, BLOCK_HG2, BLOCK_HS, CD,
    )


@triton.jit
def _fwd_mlp_sample(
    b, t, part_xctx_ptr, part_xsum_ptr, part_ctx_ptr, part_hsum_ptr, d1_ptr, d2_ptr, gate_ptr, drop_ptr,
    ctx1_out_ptr, xsum_out_ptr, ctx2_out_ptr, hsum_out_ptr,
    qw1_ptr, qb1_ptr, nw1_ptr, nb1_ptr, vw1_ptr, vb1_ptr, qw2_ptr, qb2_ptr, nw2_ptr, nb2_ptr, vw2_ptr, vb2_ptr,
    f1w_ptr, f1b_ptr, f2w_ptr, f2b_ptr, B, C, P, NP, CHG1, CHG2, CHS, alpha,
    HAS_GCX: tl.constexpr, HAS_GCH: tl.constexpr, HAS_SA: tl.constexpr, STATS: tl.constexpr,
    BLOCK_NP: tl.constexpr, BLOCK_CC: tl.constexpr, BLOCK_HG1: tl.constexpr, BLOCK_HG2: tl.constexpr,
    BLOCK_HS: tl.constexpr, CD: tl.constexpr,
):
    """The channel MLPs of one sample b at step t (body of ``staa_fwd_mlp_kernel``, also
    run in place by the persistent kernel): GC1 on X_t's and GC2 on H_{t-1}'s summed tile
    reductions, then SA. With ``STATS`` it also stores the step's summed reductions (GC1
    context and spatial sum of X_t, GC2 context and spatial sum of H_{t-1}) at ``[t, b, :]``,
    so the backward need not re-read the planes to rebuild them."""
    alpha = tl.cast(tl.cast(alpha, tl.float32), CD)
    dropped = tl.load(drop_ptr + t) != 0
    vec = (t * B + b).to(tl.int64) * C  # offset of the [t, b, :] channel vector
    xpart = vec * NP  # this (t, b)'s [NP, C] partials of X
    part = b.to(tl.int64) * NP * C

    offs_h1 = tl.arange(0, BLOCK_HG1)
    mh1 = offs_h1 < CHG1
    offs_h2 = tl.arange(0, BLOCK_HG2)
    mh2 = offs_h2 < CHG2
    offs_hs = tl.arange(0, BLOCK_HS)
    mhs = offs_hs < CHS

    if HAS_GCX:
        _, _, n1 = _gc_query_ln(part_xctx_ptr + xpart, NP, C, qw1_ptr, qb1_ptr, nw1_ptr, nb1_ptr, ctx1_out_ptr + vec,
                                offs_h1, mh1, CHG1, STATS, BLOCK_NP, BLOCK_CC, BLOCK_HG1, CD)
        r1 = _relu(n1)
    if HAS_GCH:
        _, _, n2 = _gc_query_ln(part_ctx_ptr + part, NP, C, qw2_ptr, qb2_ptr, nw2_ptr, nb2_ptr, ctx2_out_ptr + vec,
                                offs_h2, mh2, CHG2, STATS, BLOCK_NP, BLOCK_CC, BLOCK_HG2, CD)
        r2 = _relu(n2)

    if HAS_SA:
        hid = tl.zeros([BLOCK_HS], dtype=CD)
    for c0 in range(0, C, BLOCK_CC):
        offs_c = c0 + tl.arange(0, BLOCK_CC)
        mc = offs_c < C
        if HAS_GCX:
            d1 = _gc_value(vw1_ptr, vb1_ptr, r1, offs_c, mc, offs_h1, mh1, CHG1, CD)
            tl.store(d1_ptr + vec + offs_c, d1, mask=mc)
        if HAS_GCH:
            d2 = _gc_value(vw2_ptr, vb2_ptr, r2, offs_c, mc, offs_h2, mh2, CHG2, CD)
            tl.store(d2_ptr + b.to(tl.int64) * C + offs_c, d2, mask=mc)
        if HAS_SA:
            xsum = _sum_partials(part_xsum_ptr + xpart, NP, C, offs_c, mc, BLOCK_NP, BLOCK_CC, CD)
            hsum = _sum_partials(part_hsum_ptr + part, NP, C, offs_c, mc, BLOCK_NP, BLOCK_CC, CD)
            if STATS:
                tl.store(xsum_out_ptr + vec + offs_c, xsum, mask=mc)
                tl.store(hsum_out_ptr + vec + offs_c, hsum, mask=mc)
            gx = xsum / P
            if HAS_GCX:
                gx = gx + d1
            gh = hsum / P
            if HAS_GCH:
                gh = gh + d2
            pooled = alpha * (gx + gh)  # alpha * mean_p(U_t)
            w1 = tl.load(f1w_ptr + offs_hs[:, None] * C + offs_c[None, :], mask=mhs[:, None] & mc[None, :], other=0.0)
            hid += tl.sum(w1.to(CD) * pooled[None, :], axis=1)

    if HAS_SA:
        hid = _relu(hid + tl.load(f1b_ptr + offs_hs, mask=mhs, other=0.0).to(CD))
        for c0 in range(0, C, BLOCK_CC):
            offs_c = c0 + tl.arange(0, BLOCK_CC)
            mc = offs_c < C
            w2 = tl.load(f2w_ptr + offs_c[None, :] * CHS + offs_hs[:, None], mask=mhs[:, None] & mc[None, :], other=0.0)
            z = tl.sum(w2.to(CD) * hid[:, None], axis=0) + tl.load(f2b_ptr + offs_c, mask=mc, other=0.0).to(CD)
            g = tl.where(dropped, 1.0, _sigmoid(z))
            tl.store(gate_ptr + vec + offs_c, g, mask=mc)


@triton.jit
def _fwd_u(i, h, pos_ptr, d1_ptr, d2_ptr, t, b, cur, C, offs_c, mc, dropped,
           HAS_POS: tl.constexpr, HAS_GCX: tl.constexpr, HAS_GCH: tl.constexpr):
    """One tile of U_t = GC1(X_t) + GC2(H_{t-1}) with X_t = I_t + PE_t (I_t + H_{t-1} at a dropped
    step), for both loop paths: ``i`` and ``h`` are [BLOCK_C, BLOCK_P] tiles of I_t and H_{t-1} of
    sample b; PE_t and the GC deltas are loaded here, next to the additions (``cur``: the [t, b, :]
    row offset), which keeps the per-step kernel's registers as they were with the code inline."""
    xx = i
    if HAS_POS:
        xx = xx + tl.load(pos_ptr + t * C + offs_c, mask=mc, other=0.0)[:, None]
    if HAS_GCX:
        xx = xx + tl.load(d1_ptr + cur + offs_c, mask=mc, other=0.0)[:, None]
    hh = h
    if HAS_GCH:
        hh = hh + tl.load(d2_ptr + b.to(tl.int64) * C + offs_c, mask=mc, other=0.0)[:, None]
    return tl.where(dropped, i + h, xx + hh)


@triton.jit
def _fwd_fire(u, g, u_ptr, s_ptr, vseq_ptr, cur_plane, m, v_th, v_reset, HARD: tl.constexpr,
              STORE_V: tl.constexpr):
    """V_t = U_t * gate_t, S_t and H_t of one tile (both loop paths); stores U_t, S_t and (with
    STORE_V) H_t at ``cur_plane``, returns H_t."""
    v = u * g[:, None]
    s, hn = _reset(v, v_th, v_reset, HARD)
    tl.store(u_ptr + cur_plane, u, mask=m)
    tl.store(s_ptr + cur_plane, _spike_value(s, v).to(s_ptr.dtype.element_ty), mask=m)
    if STORE_V:
        tl.store(vseq_ptr + cur_plane, hn, mask=m)
    return hn


@triton.jit(do_not_specialize=["t"])
def staa_fwd_elem_kernel(
    x_ptr,  # [T, B, C, P] input currents I, input dtype
    pos_ptr,  # [T, C] CD position encoding
    d1_ptr,  # [T, B, C] GC1 delta
    d2_ptr,  # [B, C] GC2 delta of this step
    gate_ptr,  # [T, B, C]
    u_ptr,  # [T, B, C, P] CD out (saved for backward)
    s_ptr,  # [T, B, C, P] spikes out, input dtype
    vseq_ptr,  # [T, B, C, P] CD out (only with STORE_V)
    hlast_ptr,  # [B, C, P] CD out (written at the last step)
    part_ctx_ptr, part_hsum_ptr,  # [B, NP, C] out: reductions of H_t over this tile
    kw_ptr, kb_ptr,  # GC2 key weight [C] and bias [1]
    drop_ptr,  # [T] int8
    h0_ptr,  # [B, C, P] CD initial state H_{-1} (read at the first step, only with HAS_H0)
    t, B, C, P, NP, v_th, v_reset, h0,
    FIRST: tl.constexpr, LAST: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_POS: tl.constexpr, HAS_GCX: tl.constexpr, HAS_GCH: tl.constexpr, HAS_SA: tl.constexpr,
    HARD: tl.constexpr, STORE_V: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, CD: tl.constexpr,
):
    b = tl.program_id(0)
    j = tl.program_id(1)
    v_th, v_reset, h0 = _reset_scalars(v_th, v_reset, h0, CD)

    offs_c, mc, mp, m, tile = _plane_tile(j, C, P, BLOCK_C, BLOCK_P)
    cur = (t * B + b).to(tl.int64) * C  # [t, b, :] channel vector offset
    cur_plane = cur * P + tile
    dropped = tl.load(drop_ptr + t) != 0

    i = tl.load(x_ptr + cur_plane, mask=m, other=0.0).to(CD)
    if FIRST:
        if HAS_H0:
            h = tl.load(h0_ptr + b.to(tl.int64) * C * P + tile, mask=m, other=0.0)
        else:
            h = tl.zeros([BLOCK_C, BLOCK_P], dtype=CD) + h0
    else:
        # H_{t-1} is recomputed exactly as step t-1 produced it: V = u * gate, then reset.
        prev = ((t - 1) * B + b).to(tl.int64) * C
        up = tl.load(u_ptr + prev * P + tile, mask=m, other=0.0)
        gp = tl.load(gate_ptr + prev + offs_c, mask=mc, other=0.0)
        _, h = _reset(up * gp[:, None], v_th, v_reset, HARD)

    u = _fwd_u(i, h, pos_ptr, d1_ptr, d2_ptr, t, b, cur, C, offs_c, mc, dropped, HAS_POS, HAS_GCX, HAS_GCH)
    g = tl.load(gate_ptr + cur + offs_c, mask=mc, other=0.0)
    hn = _fwd_fire(u, g, u_ptr, s_ptr, vseq_ptr, cur_plane, m, v_th, v_reset, HARD, STORE_V)
    if LAST:
        tl.store(hlast_ptr + b.to(tl.int64) * C * P + tile, hn, mask=m)
    else:
        _tile_reductions(hn, m, mp, mc, offs_c, kw_ptr, kb_ptr, part_ctx_ptr, part_hsum_ptr,
                         (b * NP + j).to(tl.int64) * C, HAS_GCH, HAS_SA, CD)


@triton.jit(do_not_specialize=["T"])
def staa_fwd_persistent_kernel(
    x_ptr, pos_ptr,  # as in the per-step kernels
    part_xctx_ptr, part_xsum_ptr,  # [T*B, NP, C]: tile reductions of X, as in ``staa_fwd_mlp_kernel``
    d1_ptr,  # [T, B, C] out: GC1 delta
    d2_ptr,  # [B, C] scratch: GC2 delta of the current step (only this program's row)
    gate_ptr, u_ptr, s_ptr, vseq_ptr, hlast_ptr,  # outputs, as in ``staa_fwd_elem_kernel``
    part_ctx_ptr, part_hsum_ptr,  # [B, NP, C] scratch: tile reductions of H_{t-1} (row b)
    drop_ptr,  # [T] int8
    h0_ptr,  # [B, C, P] CD initial state H_{-1} (only with HAS_H0)
    ctx1_out_ptr, xsum_out_ptr, ctx2_out_ptr, hsum_out_ptr,  # [T, B, C] out (STATS), as in ``staa_fwd_mlp_kernel``
    qw1_ptr, qb1_ptr, nw1_ptr, nb1_ptr, vw1_ptr, vb1_ptr,  # GC1 weights
    kw_ptr, kb_ptr, qw2_ptr, qb2_ptr, nw2_ptr, nb2_ptr, vw2_ptr, vb2_ptr,  # GC2 weights
    f1w_ptr, f1b_ptr, f2w_ptr, f2b_ptr,  # SA weights
    T, B, C, P, NP, CHG1, CHG2, CHS, alpha, v_th, v_reset, h0,
    HAS_H0: tl.constexpr,
    HAS_POS: tl.constexpr, HAS_GCX: tl.constexpr, HAS_GCH: tl.constexpr, HAS_SA: tl.constexpr, STATS: tl.constexpr,
    HARD: tl.constexpr, STORE_V: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_NP: tl.constexpr, BLOCK_CC: tl.constexpr, BLOCK_HG1: tl.constexpr, BLOCK_HG2: tl.constexpr,
    BLOCK_HS: tl.constexpr, CD: tl.constexpr,
):
    """The whole time loop of one sample b (grid ``[B]``), for small planes.

    Per step: the channel MLPs (``_fwd_mlp_sample``, exactly the per-step MLP kernel), then
    the elementwise pass over the plane's ``NP`` tiles, each as ``staa_fwd_elem_kernel``
    computes it. The scratch rows it reads back were written by this same program;
    ``tl.debug_barrier`` (a CTA barrier, which also makes the block's global writes visible
    to all its threads) stands in for the kernel boundary of the per-step path.
    """
    b = tl.program_id(0)
    v_th, v_reset, h0 = _reset_scalars(v_th, v_reset, h0, CD)
    offs_c = tl.arange(0, BLOCK_C)
    mc = offs_c < C

    for t in range(0, T):
        if HAS_GCX or HAS_GCH or HAS_SA:
            _fwd_mlp_sample(
                b, t, part_xctx_ptr, part_xsum_ptr, part_ctx_ptr, part_hsum_ptr, d1_ptr, d2_ptr, gate_ptr, drop_ptr,
                ctx1_out_ptr, xsum_out_ptr, ctx2_out_ptr, hsum_out_ptr,
                qw1_ptr, qb1_ptr, nw1_ptr, nb1_ptr, vw1_ptr, vb1_ptr, qw2_ptr, qb2_ptr, nw2_ptr, nb2_ptr, vw2_ptr,
                vb2_ptr, f1w_ptr, f1b_ptr, f2w_ptr, f2b_ptr, B, C, P, NP, CHG1, CHG2, CHS, alpha,
                HAS_GCX, HAS_GCH, HAS_SA, STATS, BLOCK_NP, BLOCK_CC, BLOCK_HG1, BLOCK_HG2, BLOCK_HS, CD,
            )
            tl.debug_barrier()
        cur = (t * B + b).to(tl.int64) * C
        prev = (tl.maximum(t - 1, 0) * B + b).to(tl.int64) * C  # a valid row, unused, at t = 0
        dropped = tl.load(drop_ptr + t) != 0
        g = tl.load(gate_ptr + cur + offs_c, mask=mc, other=0.0)
        # Step conditions as [BLOCK_C] tensors (t is a plain int under the interpreter).
        has_prev = (offs_c * 0 + t) > 0
        is_last = (offs_c * 0 + t) == T - 1
        gp = tl.load(gate_ptr + prev + offs_c, mask=mc & has_prev, other=0.0)
        for j in range(0, NP):
            _, _, mp, m, tile = _plane_tile(j, C, P, BLOCK_C, BLOCK_P)
            cur_plane = cur * P + tile
            i = tl.load(x_ptr + cur_plane, mask=m, other=0.0).to(CD)
            up = tl.load(u_ptr + prev * P + tile, mask=m & has_prev[:, None], other=0.0)
            _, hp = _reset(up * gp[:, None], v_th, v_reset, HARD)
            if HAS_H0:
                hi = tl.load(h0_ptr + b.to(tl.int64) * C * P + tile, mask=m & ~has_prev[:, None], other=0.0)
                h = tl.where(has_prev[:, None], hp, hi)
            else:
                h = tl.where(has_prev[:, None], hp, h0)
            u = _fwd_u(i, h, pos_ptr, d1_ptr, d2_ptr, t, b, cur, C, offs_c, mc, dropped, HAS_POS, HAS_GCX, HAS_GCH)
            hn = _fwd_fire(u, g, u_ptr, s_ptr, vseq_ptr, cur_plane, m, v_th, v_reset, HARD, STORE_V)
            tl.store(hlast_ptr + b.to(tl.int64) * C * P + tile, hn, mask=m & is_last[:, None])
            _tile_reductions(hn, m, mp, mc, offs_c, kw_ptr, kb_ptr, part_ctx_ptr, part_hsum_ptr,
                             (b * NP + j).to(tl.int64) * C, HAS_GCH, HAS_SA, CD)
        tl.debug_barrier()


@triton.jit
def _tile_reductions(z, m, mp, mc, offs_c, kw_ptr, kb_ptr, ctx_ptr, sum_ptr, part,
                     HAS_CTX: tl.constexpr, HAS_SUM: tl.constexpr, CD: tl.constexpr):
    """Store a tile's GC context partial sum_p sigmoid(kw . z_p + kb) z_p (``HAS_CTX``) and its
    spatial sum sum_p z_p (``HAS_SUM``) at ``part`` (a [C] row of a partials buffer)."""
    z = tl.where(m, z, 0.0)
    if HAS_CTX:
        kw = tl.load(kw_ptr + offs_c, mask=mc, other=0.0).to(CD)
        kb = tl.load(kb_ptr).to(CD)
        w = tl.where(mp, _sigmoid(tl.sum(z * kw[:, None], axis=0) + kb), 0.0)
        tl.store(ctx_ptr + part + offs_c, tl.sum(z * w[None, :], axis=1), mask=mc)
    if HAS_SUM:
        tl.store(sum_ptr + part + offs_c, tl.sum(z, axis=1), mask=mc)


@triton.jit
def staa_plane_reduce_kernel(
    src_ptr,  # [T, B, C, P]: x (FROM_U=False) or the saved u (FROM_U=True)
    pos_ptr,  # [T, C] CD position encoding (FROM_U=False)
    gate_ptr,  # [T, B, C] saved gate (FROM_U=True)
    kw_ptr, kb_ptr,  # GC key weight [C] and bias [1] of the ROWS planes
    part_ctx_ptr, part_sum_ptr,  # [T*B, NP, C] out: per-tile GC context and spatial sum
    h0_ptr,  # [B, C, P] CD initial state H_{-1} (only with HAS_H0)
    kwh_ptr, kbh_ptr,  # GC2 key weight and bias (INIT_CTX)
    part_hctx_ptr, part_hsum_ptr,  # [B, NP, C] out (INIT_CTX / INIT_SUM): per-tile reductions of H_{-1}
    ROWS, B, C, P, NP, v_th, v_reset, h0,
    FROM_U: tl.constexpr, HAS_H0: tl.constexpr, HAS_POS: tl.constexpr, HAS_CTX: tl.constexpr,
    HAS_SUM: tl.constexpr, INIT_CTX: tl.constexpr, INIT_SUM: tl.constexpr, HARD: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, CD: tl.constexpr,
):
    """Per-tile reductions of planes that do not depend on the recurrence, in one launch
    (grid ``[ROWS + B or ROWS, NP]``). Rows ``r < ROWS`` (``r = t * B + b``): X_t = I_t + PE_t,
    or, with FROM_U, the state H_{t-1} = reset(u_{t-1} * gate_{t-1}) (H_{-1}: the constant
    ``h0``, or the tensor at ``h0_ptr`` with HAS_H0). With INIT_CTX / INIT_SUM, rows
    ``ROWS + b`` reduce sample b's initial state H_{-1} for the first step's MLP kernel."""
    r = tl.program_id(0)
    j = tl.program_id(1)
    v_th, v_reset, h0 = _reset_scalars(v_th, v_reset, h0, CD)

    offs_c, mc, mp, m, tile = _plane_tile(j, C, P, BLOCK_C, BLOCK_P)
    if r < ROWS:
        t = r // B
        if FROM_U:
            prev = tl.maximum(r - B, 0).to(tl.int64) * C  # row of step t-1 (a valid row, unused, at t = 0)
            up = tl.load(src_ptr + prev * P + tile, mask=m, other=0.0)
            gp = tl.load(gate_ptr + prev + offs_c, mask=mc, other=0.0)
            _, h = _reset(up * gp[:, None], v_th, v_reset, HARD)
            if HAS_H0:
                first = (offs_c * 0 + t) == 0  # t as a [BLOCK_C] tensor (a plain int under the interpreter)
                hi = tl.load(h0_ptr + (r - t * B).to(tl.int64) * C * P + tile, mask=m & first[:, None], other=0.0)
                z = tl.where(t > 0, h, hi)
            else:
                z = tl.where(t > 0, h, h0)
        else:
            z = tl.load(src_ptr + r.to(tl.int64) * C * P + tile, mask=m, other=0.0).to(CD)
            if HAS_POS:
                z = z + tl.load(pos_ptr + t * C + offs_c, mask=mc, other=0.0)[:, None]
        _tile_reductions(z, m, mp, mc, offs_c, kw_ptr, kb_ptr, part_ctx_ptr, part_sum_ptr,
                         (r.to(tl.int64) * NP + j) * C, HAS_CTX, HAS_SUM, CD)
    else:
        b = r - ROWS
        if HAS_H0:
            z = tl.load(h0_ptr + b.to(tl.int64) * C * P + tile, mask=m, other=0.0)
        else:
            z = tl.zeros([BLOCK_C, BLOCK_P], dtype=CD) + h0
        _tile_reductions(z, m, mp, mc, offs_c, kwh_ptr, kbh_ptr, part_hctx_ptr, part_hsum_ptr,
                         (b.to(tl.int64) * NP + j) * C, INIT_CTX, INIT_SUM, CD)
