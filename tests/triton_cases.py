"""Case builders and checks of the Triton kernel tests: tests/interpret/test_kernels.py runs them
on the CPU under ``TRITON_INTERPRET=1`` (in its own pytest process, see tests/interpret/conftest.py),
tests/test_triton_cuda.py on a GPU with the compiled kernels.

Each check runs the launchers and the reference on one case and returns what it measured (the
closest distance of a reference potential to a switching point, spike mismatches, the names of
the tensors outside tolerance, the kernels launched); the tests assert on those.
"""
from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MARGIN = 1e-4  # no V within this distance of a point where spikes or the surrogate window switch

# Tolerances per input dtype: (rtol, atol) for fp32/fp64 state and parameter grads, and
# for grad_x, which comes back in the input dtype (one rounding of a value that differs
# from the reference's by float32 reduction-order noise).
TOLERANCES = {
    "float64": dict(state=(1e-12, 1e-12), grad=(1e-10, 1e-10), grad_x=(1e-10, 1e-10)),
    "float32": dict(state=(1e-5, 1e-5), grad=(1e-4, 1e-5), grad_x=(1e-4, 1e-5)),
    # A float32 difference that straddles a rounding boundary moves the rounded value by
    # one ulp, and one ulp is at most 2**-7 (bf16) / 2**-10 (fp16) of the value.
    "bfloat16": dict(state=(1e-5, 1e-5), grad=(1e-4, 1e-5), grad_x=(2.0**-7, 1e-6)),
    "float16": dict(state=(1e-5, 1e-5), grad=(1e-4, 1e-5), grad_x=(2.0**-10, 1e-7)),
}


def _torch():
    import torch

    return torch


def make_params(C, T, *, gc=True, sa=True, pe=True, dtype="float32", seed=0):
    """Random STAA weights (value layers non-zero, unlike the module's zero init, so every
    block really contributes)."""
    torch = _torch()
    from staa.reference import GCParams, SAParams, STAAParams

    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    ch = max(C // 4, 4)

    def rnd(*shape, scale=0.3, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dt)

    def gcp():
        return GCParams(rnd(1, C), rnd(1, scale=0.1), rnd(ch, C), rnd(ch, scale=0.1), rnd(ch, scale=0.1, shift=1.0),
                        rnd(ch, scale=0.1), rnd(C, ch, scale=0.2), rnd(C, scale=0.1))

    return STAAParams(
        rnd(T + 1, C, scale=0.2) if pe else None,
        gcp() if gc else None,
        gcp() if gc else None,
        SAParams(rnd(ch, C), rnd(ch, scale=0.1), rnd(C, ch), rnd(C, scale=0.1)) if sa else None,
    )


def _flat(params):
    out = [params.pos] if params.pos is not None else []
    for blk in (params.gc_x, params.gc_h, params.sa):
        if blk is not None:
            out += list(blk)
    return out


def reference(x, params, drop, kw, h0=None, potentials=False):
    """``staa.reference.staa_lif_reference`` with the launchers' keywords ``kw`` (surrogate kind
    and parameter included); returns ``(spikes, states)`` (and the potentials V with
    ``potentials``), differentiable in x, h0 and the weights."""
    from staa.reference import staa_lif_reference

    kind, p = kw["surrogate"], float(kw["surrogate_param"])
    extra = dict(surrogate_width=p) if kind == "rect" else dict(surrogate_alpha=p)
    return staa_lif_reference(x, params, drop, alpha=kw["alpha"], v_threshold=kw["v_threshold"],
                              v_reset=kw["v_reset"], detach_reset=kw["detach_reset"], h0=h0, return_states=True,
                              return_potentials=potentials, surrogate=kind, **extra)


def _margin(v, v_threshold, width=None):
    """Distance of the closest V to the threshold or (``width`` given: the rectangle's) to an
    edge of the surrogate window."""
    torch = _torch()
    pts = [v_threshold] + ([v_threshold - width / 2, v_threshold + width / 2] if width is not None else [])
    return (v.detach().reshape(-1, 1) - torch.tensor(pts, dtype=v.dtype)).abs().min().item()


def _fp32(value):
    """``value`` rounded to the nearest fp32, as a Python float (None stays None)."""
    import struct

    return None if value is None else struct.unpack("f", struct.pack("f", float(value)))[0]


def build_case(T, B, C, P, *, dtype="float32", param_dtype=None, gc=True, sa=True, pe=True, v_reset=0.0,
               detach_reset=False, drop=(), alpha=2.0, v_threshold=1.0, surrogate="rect", surrogate_param=None,
               surrogate_width=1.0, h0=False, seed=0, tries=40, margin=MARGIN):
    """Inputs, weights, the initial state (``h0``: a random one, else None) and the reference's
    V for one case, re-drawn (deterministically) until no V is within ``margin`` of the
    threshold or (rect) of the surrogate window's edges.

    ``surrogate_param`` defaults to ``surrogate_width`` for rect, the kind's default otherwise.
    Returns ``(x, params, drop mask, launcher keywords, margin, V, h0)``."""
    torch = _torch()
    from staa.reference import compute_dtype
    from staa.surrogate import DEFAULT_PARAM

    dt = getattr(torch, dtype)
    cd = compute_dtype(dt)
    if surrogate_param is None:
        surrogate_param = surrogate_width if surrogate == "rect" else DEFAULT_PARAM[surrogate]
    # Triton passes Python floats to a kernel as fp32 (compiled and interpreted alike), so the
    # kernels see the scalar settings rounded to fp32 (docs/triton.md, "Numerics"). The
    # reference gets the same values; in float64 an unrounded -0.3 would differ by ~1e-8.
    kw = dict(alpha=_fp32(alpha), v_threshold=_fp32(v_threshold), v_reset=_fp32(v_reset), detach_reset=detach_reset,
              surrogate=surrogate, surrogate_param=_fp32(surrogate_param))
    alpha, v_threshold, v_reset = kw["alpha"], kw["v_threshold"], kw["v_reset"]
    mask = torch.zeros(T, dtype=torch.bool)
    for t in drop:
        mask[t] = True
    for k in range(tries):
        s = seed * 1000 + k
        params = make_params(C, T, gc=gc, sa=sa, pe=pe, dtype=param_dtype or ("float64" if dtype == "float64" else "float32"), seed=s)
        g = torch.Generator().manual_seed(s + 7)
        x = (torch.randn(T, B, C, P, generator=g, dtype=torch.float64) * 0.8 + 0.35).to(dt)
        h_init = (torch.randn(B, C, P, generator=g, dtype=torch.float64) * 0.5 + 0.2).to(cd) if h0 else None
        with torch.no_grad():
            _, _, v = reference(x, params, mask, kw, h_init, potentials=True)
        got = _margin(v, v_threshold, surrogate_param if surrogate == "rect" else None)
        if got >= margin:
            break
    return x, params, mask, kw, got, v, h_init


class _Poison:
    """Fills every fresh floating-point ``torch.empty``/``empty_like`` with NaN while active."""

    def __enter__(self):
        torch = _torch()
        self.saved = (torch.empty, torch.empty_like)
        empty, empty_like = self.saved

        def p_empty(*a, **k):
            t = empty(*a, **k)
            if t.is_floating_point():
                t.fill_(float("nan"))
            return t

        def p_empty_like(*a, **k):
            t = empty_like(*a, **k)
            if t.is_floating_point():
                t.fill_(float("nan"))
            return t

        torch.empty, torch.empty_like = p_empty, p_empty_like
        return self

    def __exit__(self, *exc):
        torch = _torch()
        torch.empty, torch.empty_like = self.saved


def _compare(name, got, want, tol, report):
    torch = _torch()
    err = (got.double() - want.double()).abs()
    report["max_err"][name] = err.max().item() if err.numel() else 0.0
    try:
        torch.testing.assert_close(got.double(), want.double(), rtol=tol[0], atol=tol[1])
    except AssertionError as exc:
        report["failures"].append(f"{name}: {exc}")


def _to(device, x, drop, params, h0, *more):
    """The case's tensors on ``device``."""
    torch = _torch()
    if device == "cpu":
        return (x, drop, params, h0) + more
    params = type(params)(*[None if b is None else b.to(device) if isinstance(b, torch.Tensor)
                            else type(b)(*[w.to(device) for w in b]) for b in params])
    move = [t.to(device) if t is not None else None for t in (x, drop, h0) + more]
    return (move[0], move[1], params, move[2]) + tuple(move[3:])


def _forward(launch, x, drop, h0, params, kw, **extra):
    return launch.staa_lif_forward(x, drop, h0, params.pos, params.gc_x, params.gc_h, params.sa, **kw, **extra)


def _backward(launch, gs, ghl, x, drop, h0, params, u, gate, kw, **extra):
    return launch.staa_lif_backward(gs, ghl, x, drop, h0, params.pos, params.gc_x, params.gc_h, params.sa, u, gate,
                                    **kw, **extra)


def _flat_grads(out):
    """grad_x, grad_h0 (if any), grad_pos (if any), then every block's gradients in field order."""
    flat = [out[0]] + [g for g in out[1:3] if g is not None]
    for blk in out[3:]:
        flat += list(blk) if blk is not None else []
    return flat


def parity(T, B, C, P, *, max_tile=None, store_v_seq=True, grads=True, poison=True, device="cpu", fwd_path=None,
           bwd_path=None, grad_h_last=False, keep_stats=True, **case):
    """Launchers vs the reference: forward outputs (and saved u, gate), then every gradient
    (grad_h0 too when the case has an ``h0``; ``grad_h_last``: the loss also uses H_{T-1}).

    ``keep_stats`` (the op's route): the forward keeps its per-step reductions and the backward
    takes them; False: the backward rebuilds them from x and u.

    ``fwd_path`` / ``bwd_path`` are passed to the launchers as ``path`` (None: their rule).
    Returns ``{"margin", "spike_mismatches", "nan_outputs", "failures", "max_err", "np",
    "fwd_kernels", "bwd_kernels", "grads"}``; the kernel lists name what each launcher ran,
    ``grads`` the gradients compared.
    """
    torch = _torch()
    from staa.kernels import launch

    if max_tile is not None:
        launch.MAX_TILE = max_tile
    run = launch._run
    launched = []

    def recording_run(kernel, grid, *args, **kwargs):
        launched.append(kernel.__name__)
        return run(kernel, grid, *args, **kwargs)

    try:
        x, params, drop, kw, margin, v_ref, h0 = build_case(T, B, C, P, **case)
        x, drop, params, h0, v_ref = _to(device, x, drop, params, h0, v_ref)
        tol = TOLERANCES[str(x.dtype).replace("torch.", "")]
        report = dict(margin=margin, failures=[], max_err={}, np=launch.tile_config(C, P).NP)
        leaves = [x.requires_grad_(True)] + ([h0.requires_grad_(True)] if h0 is not None else [])
        leaves += [p.requires_grad_(True) for p in _flat(params)]
        ref_s, ref_h = reference(x, params, drop, kw, h0)

        launch._run = recording_run
        with _Poison() if poison else _nullctx():
            out = _forward(launch, x.detach(), drop, h0.detach() if h0 is not None else None, params, kw,
                           store_v_seq=store_v_seq, path=fwd_path, keep_stats=keep_stats)
        launch._run = run
        report["fwd_kernels"] = sorted(set(launched))
        stats = out[5] if keep_stats else None
        out = out[:5]
        spikes, h_last, v_seq, u, gate = out
        report["nan_outputs"] = [n for n, t in zip(("spikes", "h_last", "v_seq", "u", "gate"), out)
                                 if t is not None and bool(torch.isnan(t).any())]
        report["spike_mismatches"] = int((spikes != ref_s.detach()).sum())
        if spikes.dtype != x.dtype:
            report["failures"].append(f"spikes dtype {spikes.dtype}, expected {x.dtype}")
        _compare("h_last", h_last, ref_h[-1].detach(), tol["state"], report)
        if h0 is not None and h_last.data_ptr() == h0.data_ptr():
            report["failures"].append("h_last aliases h0")
        if store_v_seq:
            _compare("v_seq", v_seq, ref_h.detach(), tol["state"], report)
        # The contract: V_t == u_t * gate_t exactly, and gate == 1 at dropped steps.
        _compare("u*gate", u * gate[..., None], v_ref.to(u.dtype), tol["state"], report)
        if bool(drop.any()) and not bool((gate[drop] == 1).all()):
            report["failures"].append("gate is not exactly 1 at dropped steps")
        if not grads:
            return report

        g = torch.Generator().manual_seed(123)
        gs = torch.randn(ref_s.shape, generator=g, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
        ghl = None
        loss = (ref_s * gs).sum()
        if grad_h_last:
            ghl = torch.randn(ref_h.shape[1:], generator=g, dtype=torch.float64).to(device=x.device,
                                                                                   dtype=ref_h.dtype)
            loss = loss + (ref_h[-1] * ghl).sum()
        want = torch.autograd.grad(loss, leaves)
        launched.clear()
        launch._run = recording_run
        with _Poison() if poison else _nullctx():
            res = _backward(launch, gs, ghl, x.detach(), drop, h0.detach() if h0 is not None else None, params, u,
                            gate, kw, path=bwd_path, stats=stats)
        launch._run = run
        report["bwd_kernels"] = sorted(set(launched))
        gx, gh0, gpos, ggcx, ggch, gsa = res
        if (gh0 is None) != (h0 is None):
            report["failures"].append(f"grad_h0: got {gh0 is not None}, expected {h0 is not None}")
        got = [gx] + ([gh0] if gh0 is not None else []) + ([gpos] if gpos is not None else [])
        names = ["x"] + (["h0"] if gh0 is not None else []) + (["pos"] if gpos is not None else [])
        for bname, blk, ref_blk in (("gcx", ggcx, params.gc_x), ("gch", ggch, params.gc_h), ("sa", gsa, params.sa)):
            if (blk is None) != (ref_blk is None):
                report["failures"].append(f"grad {bname}: got {blk is not None}, expected {ref_blk is not None}")
            if blk is not None:
                if tuple(getattr(blk, "_fields", ref_blk._fields)) != ref_blk._fields or len(blk) != len(ref_blk):
                    report["failures"].append(f"grad {bname}: fields {getattr(blk, '_fields', None)}")
                got += list(blk)
                names += [f"{bname}.{f}" for f in ref_blk._fields]
        report["grads"] = names
        if len(got) != len(leaves):
            report["failures"].append(f"{len(got)} gradients for {len(leaves)} leaves")
        for n, a, b, p in zip(names, got, want, leaves):
            if a.dtype != p.dtype or a.shape != p.shape:
                report["failures"].append(f"grad {n}: {a.dtype}{tuple(a.shape)} vs leaf {p.dtype}{tuple(p.shape)}")
            if bool(torch.isnan(a).any()):
                report["nan_outputs"].append(f"grad {n}")
            _compare(f"grad {n}", a, b, tol["grad_x" if n == "x" else "grad"], report)
        return report
    finally:
        launch._run = run
        launch.MAX_TILE = _DEFAULT_TILE[0]


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_DEFAULT_TILE = [None]


def determinism(T, B, C, P, *, device="cpu", path=None, **case):
    """Backward twice on the same saved tensors (both launchers given ``path``), the second time
    with every fresh allocation NaN-poisoned: are all gradients bitwise identical, and are the
    saved tensors (x, u, gate) unchanged by the backward?"""
    torch = _torch()
    from staa.kernels import launch

    x, params, drop, kw, _, _, h0 = build_case(T, B, C, P, **case)
    x, drop, params, h0 = _to(device, x, drop, params, h0)
    _, _, _, u, gate, stats = _forward(launch, x, drop, h0, params, kw, store_v_seq=False, path=path, keep_stats=True)
    saved = [t.clone() for t in (x, u, gate, stats)]
    gs = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(device=device, dtype=x.dtype)
    runs = []
    for poisoned in (False, True):
        with _Poison() if poisoned and device == "cpu" else _nullctx():
            runs.append(_flat_grads(_backward(launch, gs, None, x, drop, h0, params, u, gate, kw, path=path,
                                              stats=stats)))
    return dict(identical=all(torch.equal(a, b) for a, b in zip(*runs)), n=len(runs[0]),
                saved_unchanged=all(torch.equal(a, b) for a, b in zip(saved, (x, u, gate, stats))))


def path_equivalence(T, B, C, P, *, max_tile=None, grad_h_last=False, **case):
    """Forward and backward with ``path="persistent"`` and ``path="per_step"`` on the same
    inputs: which outputs and gradients are bitwise equal, and which kernels each path ran."""
    torch = _torch()
    from staa.kernels import launch

    x, params, drop, kw, _, _, h0 = build_case(T, B, C, P, **case)
    if max_tile is not None:
        launch.MAX_TILE = max_tile
    run = launch._run
    outs, grads, kernels = {}, {}, {}
    gen = torch.Generator().manual_seed(9)
    gs = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)
    ghl = torch.randn(x.shape[1:], generator=gen, dtype=torch.float64).to(x.dtype) if grad_h_last else None
    try:
        for path in ("persistent", "per_step"):
            names = []
            launch._run = lambda k, g, *a, _n=names, **kwa: (_n.append(k.__name__), run(k, g, *a, **kwa))[1]
            with _Poison():
                outs[path] = _forward(launch, x, drop, h0, params, kw, store_v_seq=True, path=path)
                u, gate = outs[path][3:]
                grads[path] = _flat_grads(_backward(launch, gs, ghl, x, drop, h0, params, u, gate, kw, path=path))
            kernels[path] = sorted(set(names))
    finally:
        launch._run = run
        launch.MAX_TILE = _DEFAULT_TILE[0]
    equal = {n: bool(torch.equal(a, b)) for n, a, b in
             zip(("spikes", "h_last", "v_seq", "u", "gate"), outs["persistent"], outs["per_step"])}
    grads_equal = [bool(torch.equal(a, b)) for a, b in zip(grads["persistent"], grads["per_step"])]
    return dict(fwd_equal=equal, grads_equal=grads_equal, n_grads=len(grads["per_step"]), kernels=kernels)


def path_rule():
    """``launch.loop_path``: the automatic rule, the environment variable, the argument,
    and the errors for unknown values; plus which kernels the launchers run when the variable
    forces the per-step path."""
    from staa.kernels import launch

    env = launch.PATH_ENV
    saved = os.environ.pop(env, None)
    out = {}
    try:
        out["auto"] = {f"{c}x{p}": launch.loop_path(c, p) for c, p in
                       ((512, 16), (1000, 1), (128, 1024), (512, 64), (8192, 1), (8193, 1))}
        os.environ[env] = "per_step"
        out["env_per_step"] = launch.loop_path(512, 16)
        out["arg_over_env"] = launch.loop_path(512, 16, "persistent")
        rep = parity(2, 1, 4, 3)
        out["env_forced_kernels"] = rep["fwd_kernels"]
        out["env_forced_bwd_kernels"] = rep["bwd_kernels"]
        os.environ[env] = "persistent"
        out["env_persistent_big"] = launch.loop_path(128, 1024)
        os.environ[env] = "fast"
        for key, args in (("bad_env", ()), ("bad_arg", ("auto-ish",))):
            try:
                launch.loop_path(4, 4, *args)
                out[key] = None
            except ValueError as exc:
                out[key] = str(exc)
    finally:
        os.environ.pop(env, None)
        if saved is not None:
            os.environ[env] = saved
    return out


def poison_sanity(T=2, B=1, C=5, P=9, path=None):
    """The poison is live, and it catches an element the kernels never write: with a tiling
    that drops the last plane tile, the unwritten outputs must come back NaN."""
    torch = _torch()
    from staa.kernels import launch

    with _Poison():
        fresh = torch.empty(4, 3)
        fresh_like = torch.empty_like(torch.zeros(2, dtype=torch.float32))
    x, params, drop, kw, _, _, h0 = build_case(T, B, C, P)
    orig = launch.tile_config
    launch.MAX_TILE = 8  # BLOCK_C=8 -> BLOCK_P=1: one program per position
    launch.tile_config = lambda c, p: orig(c, p)._replace(NP=orig(c, p).NP - 1)
    try:
        with _Poison():
            _, h_last, _, u, _ = _forward(launch, x, drop, h0, params, kw, store_v_seq=False, path=path)
    finally:
        launch.tile_config = orig
        launch.MAX_TILE = _DEFAULT_TILE[0]
    last = u[..., -1]
    return dict(fresh_all_nan=bool(torch.isnan(fresh).all()), fresh_like_all_nan=bool(torch.isnan(fresh_like).all()),
                unwritten_nan=bool(torch.isnan(last).all()), written_finite=bool(torch.isfinite(u[..., :-1]).all()))


def empty_inputs():
    """Zero-size inputs (T = 0, B = 0), with and without h0 / grad_h_last: shapes and values of
    every output and gradient."""
    torch = _torch()
    from staa.kernels import launch

    out = {}
    params = make_params(4, 2)
    kw = dict(alpha=2.0, v_threshold=1.0, v_reset=-0.5, detach_reset=False, surrogate="rect", surrogate_param=1.0)
    for name, shape in (("T0", (0, 2, 4, 3)), ("B0", (2, 0, 4, 3))):
        for with_h0 in (False, True):
            x = torch.zeros(shape)
            drop = torch.zeros(shape[0], dtype=torch.bool)
            h0 = torch.randn(shape[1:]) if with_h0 else None
            ghl = torch.randn(shape[1:]) if with_h0 else None
            s, h, vs, u, g = _forward(launch, x, drop, h0, params, kw, store_v_seq=True)
            grads = _backward(launch, torch.zeros(shape), ghl, x, drop, h0, params, u, g, kw)
            flat = [grads[0], grads[2]] + list(grads[3]) + list(grads[4]) + list(grads[5])
            rec = dict(shapes=[list(t.shape) for t in (s, h, vs, u, g)],
                       h_ok=bool(torch.equal(h, h0)) if with_h0 else bool((h == -0.5).all()),
                       grads_zero=all(bool((t == 0).all()) for t in flat),
                       grad_shapes_ok=all(list(t.shape) == list(p.shape) for t, p in zip(flat[1:], _flat(params))))
            if with_h0:
                rec["h_fresh"] = h.numel() == 0 or h.data_ptr() != h0.data_ptr()
                rec["grad_h0_is_grad_h_last"] = bool(torch.equal(grads[1], ghl))
                rec["grad_h0_fresh"] = grads[1].numel() == 0 or grads[1].data_ptr() != ghl.data_ptr()
                no_ghl = _backward(launch, torch.zeros(shape), None, x, drop, h0, params, u, g, kw)[1]
                rec["grad_h0_zero_without_grad_h_last"] = bool((no_ghl == 0).all()) and no_ghl.shape == h0.shape
            else:
                rec["grad_h0_none"] = grads[1] is None
            out[f"{name}-{'h0' if with_h0 else 'rest'}"] = rec
    return out


def launcher_errors():
    """Messages of the launchers' argument checks."""
    torch = _torch()
    from staa.kernels import launch

    msgs = {}
    params = make_params(4, 2)
    kw = dict(alpha=2.0, v_threshold=1.0, v_reset=0.0, detach_reset=False, surrogate="rect", surrogate_param=1.0,
              store_v_seq=False)
    x_ok, drop_ok = torch.zeros(2, 1, 4, 3), torch.zeros(2, dtype=torch.bool)
    cases = {
        "x3d": (torch.zeros(2, 1, 4), drop_ok, None, params, kw),
        "drop": (x_ok, torch.zeros(3, dtype=torch.bool), None, params, kw),
        "int": (torch.zeros(2, 1, 4, 3, dtype=torch.int32), drop_ok, None, params, kw),
        "h0": (x_ok, drop_ok, torch.zeros(1, 4, 2), params, kw),
        "plain_tuple": (x_ok, drop_ok, None, params._replace(gc_x=tuple(params.gc_x)), kw),
        "surrogate": (x_ok, drop_ok, None, params, dict(kw, surrogate="triangle")),
    }
    for name, (x, drop, h0, prm, k) in cases.items():
        try:
            _forward(launch, x, drop, h0, prm, k)
            msgs[name] = None
        except (ValueError, TypeError) as exc:
            msgs[name] = str(exc)
    return msgs


def nan_inputs(T=3, B=3, C=5, P=4, *, path=None, gc=True, sa=True, value=float("nan"), where=(1, 1, 2, 3),
               dtype="float32", device="cpu"):
    """A non-finite input at ``where = (t, b, c, p)``: the launchers' spikes against the
    reference's (NaN where V is not finite), NaN positions included. Reports which
    (t, b) rows hold NaN spikes and whether the other samples match the finite run."""
    torch = _torch()
    from staa.kernels import launch

    x, params, drop, kw, _, _, h0 = build_case(T, B, C, P, gc=gc, sa=sa, dtype=dtype)
    x = x.clone()
    x[where] = value
    with torch.no_grad():
        ref_s, ref_h = reference(x, params, drop, kw, h0)
    x, drop, params, h0 = _to(device, x, drop, params, h0)
    with _Poison():
        spikes, h_last, _, u, gate = _forward(launch, x, drop, h0, params, kw, store_v_seq=False, path=path)
    spikes, h_last = spikes.cpu(), h_last.cpu()
    nan = torch.isnan(spikes)
    return dict(
        same_as_reference=bool(torch.equal(nan, torch.isnan(ref_s))) and bool(torch.equal(spikes[~nan], ref_s[~nan])),
        nan_rows=[[t, b] for t in range(T) for b in range(B) if bool(nan[t, b].any())],
        all_nan_rows=[[t, b] for t in range(T) for b in range(B) if bool(nan[t, b].all())],
        h_last_nan_samples=[b for b in range(B) if bool(torch.isnan(h_last[b]).any())],
        spike_values_ok=bool(((spikes == 0) | (spikes == 1) | nan).all()),
        dtype_ok=spikes.dtype == x.dtype,
    )


def grad_h0_finite_difference(T=3, B=2, C=4, P=3, *, path=None, eps=1e-6, **case):
    """dL/dh0 of the launchers against a central finite difference, in float64, for
    L = <h_last, w>. With ``detach_reset`` the backward's reset derivative is the true one
    (1 - S), so away from spike flips L is smooth in h0 and its directional derivative along a
    random d must equal <grad_h0, d>. Returns both numbers and whether a spike flipped."""
    torch = _torch()
    from staa.kernels import launch

    x, params, drop, kw, margin, _, h0 = build_case(T, B, C, P, dtype="float64", h0=True, detach_reset=True, **case)
    g = torch.Generator().manual_seed(11)
    w = torch.randn(h0.shape, generator=g, dtype=torch.float64)
    d = torch.randn(h0.shape, generator=g, dtype=torch.float64)
    s0, _, _, u, gate = _forward(launch, x, drop, h0, params, kw, store_v_seq=False, path=path)
    grads = _backward(launch, torch.zeros_like(x), w, x, drop, h0, params, u, gate, kw, path=path)
    vals, flips = [], 0
    for sign in (1.0, -1.0):
        s, hl, _, _, _ = _forward(launch, x, drop, h0 + sign * eps * d, params, kw, store_v_seq=False, path=path)
        vals.append(float((hl * w).sum()))
        flips += int((s != s0).sum())
    return dict(fd=(vals[0] - vals[1]) / (2 * eps), analytic=float((grads[1] * d).sum()), flips=flips, margin=margin)


def _op_on_new_contract():
    """Whether ``staa.ops`` (its torch implementation) already follows the op contract with h0
    and the surrogate kind; until it does, the tests that go through the op are skipped."""
    import inspect

    from staa.ops import torch_impl

    params = inspect.signature(torch_impl.staa_lif_forward).parameters
    return "h0" in params and "surrogate" in params


def torch_impl_parity(T, B, C, P, *, path=None, grad_h_last=False, **case):
    """The launchers against ``staa.ops.torch_impl`` (same contract): every output and
    gradient. ``{"skipped": reason}`` while torch_impl has the old signature."""
    torch = _torch()
    if not _op_on_new_contract():
        return dict(skipped="staa.ops.torch_impl does not implement the h0/surrogate contract yet")
    from staa.kernels import launch
    from staa.ops import torch_impl

    x, params, drop, kw, margin, _, h0 = build_case(T, B, C, P, **case)
    tol = TOLERANCES[str(x.dtype).replace("torch.", "")]
    gen = torch.Generator().manual_seed(5)
    gs = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    ghl = torch.randn(x.shape[1:], generator=gen, dtype=torch.float64).to(cd) if grad_h_last else None
    rep = dict(margin=margin, failures=[], max_err={})
    res = {}
    for name, mod, extra in (("triton", launch, dict(path=path)), ("torch", torch_impl, {})):
        fwd = _forward(mod, x, drop, h0, params, kw, store_v_seq=True, **extra)
        bwd = _backward(mod, gs, ghl, x, drop, h0, params, fwd[3], fwd[4], kw, **extra)
        res[name] = (fwd, bwd)
    (ft, bt), (fr, br) = res["triton"], res["torch"]
    rep["spike_mismatches"] = int((ft[0] != fr[0]).sum())
    for n, a, b in zip(("h_last", "v_seq", "u", "gate"), ft[1:], fr[1:]):
        if (a is None) != (b is None):
            rep["failures"].append(f"{n}: None on one side only")
        elif a is not None:
            _compare(n, a, b, tol["state"], rep)
    names = ["x", "h0", "pos"]
    for i in range(6):
        a, b = bt[i], br[i]
        if (a is None) != (b is None):
            rep["failures"].append(f"grad {i}: None on one side only")
            continue
        if a is None:
            continue
        blk = (None, None, None, params.gc_x, params.gc_h, params.sa)[i]
        pairs = [(names[i], a, b)] if i < 3 else [(f"{('gcx', 'gch', 'sa')[i - 3]}.{f}", u, v)
                                                  for f, u, v in zip(blk._fields, a, b)]
        if i >= 3 and not (len(a) == len(b) == len(blk)):
            rep["failures"].append(f"grad block {i}: {len(a)} / {len(b)} tensors for {len(blk)} fields")
        for n, u, v in pairs:
            if u.dtype != v.dtype or u.shape != v.shape:
                rep["failures"].append(f"grad {n}: {u.dtype}{tuple(u.shape)} vs {v.dtype}{tuple(v.shape)}")
            _compare(f"grad {n}", u, v, tol["grad_x" if n == "x" else "grad"], rep)
    return rep


def module_parity(shape, *, dtype="float32", v_reset=0.0, detach_reset=False, tsrd=0.5, seed=0, **flags):
    """``STAALIF(backend="triton")`` vs ``STAALIF(backend="torch")`` through the custom op, in
    training mode with TSRD (both see the same drop mask: same RNG seed): spikes, final
    state and every gradient. Inputs are re-drawn until the reference's V keeps ``MARGIN``.
    ``{"skipped": reason}`` while the op does not follow the current launcher contract."""
    torch = _torch()
    if not _op_on_new_contract():
        return dict(skipped="staa.ops does not implement the h0/surrogate contract yet")
    import staa
    from staa.reference import staa_lif_reference

    dt = getattr(torch, dtype)
    T, B, C = shape[0], shape[1], shape[2]
    torch.manual_seed(seed)
    m_t = staa.STAALIF(C, T, v_reset=v_reset, detach_reset=detach_reset, tsrd=tsrd, backend="triton", **flags)
    with torch.no_grad():
        for p in m_t.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # non-zero value layers
    m_r = staa.STAALIF(C, T, v_reset=v_reset, detach_reset=detach_reset, tsrd=tsrd, backend="torch", **flags)
    m_r.load_state_dict(m_t.state_dict())
    m_t.train()
    m_r.train()
    torch.manual_seed(seed + 2)
    drop = m_t._draw_drop(T, 0, torch.device("cpu"))
    g = torch.Generator().manual_seed(seed + 1)
    cfg = dict(alpha=m_t.cfg.alpha, v_threshold=m_t.cfg.v_threshold, v_reset=m_t.cfg.v_reset)
    width = getattr(m_t.cfg, "surrogate_width", 1.0)
    for _ in range(40):
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * 0.8 + 0.35).to(dt)
        x4 = x.reshape(T, B, C, -1)
        with torch.no_grad():
            v = staa_lif_reference(x4, m_t.params(), drop, **cfg, return_potentials=True)[1]
        margin = _margin(v, m_t.cfg.v_threshold, width)
        if margin >= MARGIN:
            break
    results = []
    for m in (m_t, m_r):
        m.reset()
        xx = x.clone().requires_grad_(True)
        torch.manual_seed(seed + 2)  # the same TSRD mask as ``drop`` above
        y = m(xx)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(y.dtype)
        grads = torch.autograd.grad(y, [xx] + list(m.parameters()), gy)
        results.append((y, grads, m.v.detach().clone()))
    (y_t, g_t, v_t), (y_r, g_r, v_r) = results
    out = dict(margin=margin, dropped=int(drop.sum()), failures=[], max_err={},
               spike_mismatches=int((y_t != y_r).sum()), dtype_ok=y_t.dtype == x.dtype,
               backend=staa.backend_for(x, "triton"))
    tol = TOLERANCES[dtype]
    names = ["x"] + [n for n, _ in m_t.named_parameters()]
    for n, a, b in zip(names, g_t, g_r):
        _compare(f"grad {n}", a, b, tol["grad_x" if n == "x" else "grad"], out)
    _compare("v", v_t, v_r, tol["state"], out)
    return out


def exact_edges(v_th, width, v_reset, mode, path):
    """An IF neuron (every block off) on the Triton route, float64 inputs with V exactly on
    v_threshold and v_threshold +- width/2 (``edge_cases.if_edge_input``): spikes, last state
    and dL/dI against the reference, compared with ``torch.equal``. ``mode``: one multi-step
    call, or two single-step calls (the second from the first's state, ``t0=1``)."""
    torch = _torch()
    from edge_cases import if_edge_input, reference_if_neuron, run_if_neuron, upstream_gradient
    from staa.kernels import launch

    saved = os.environ.get(launch.PATH_ENV)
    os.environ[launch.PATH_ENV] = path
    try:
        x = if_edge_input(v_th, width, v_reset).requires_grad_()
        launched = []
        run = launch._run

        def recording_run(kernel, grid, *a, **k):
            launched.append(kernel.fn.__name__ if hasattr(kernel, "fn") else str(kernel))
            return run(kernel, grid, *a, **k)

        launch._run = recording_run
        try:
            spikes, h_last = run_if_neuron(x, v_th, width, v_reset, mode, backend="triton")
            gy = upstream_gradient()
            (g,) = torch.autograd.grad((spikes * gy).sum() + h_last.sum(), x)
        finally:
            launch._run = run
        ref, ref_h_last = reference_if_neuron(x, v_th, width, v_reset)
        (g_ref,) = torch.autograd.grad((ref * gy).sum() + ref_h_last.sum(), x)
        return dict(spikes_equal=torch.equal(spikes, ref), h_equal=torch.equal(h_last, ref_h_last),
                    grad_equal=torch.equal(g, g_ref), first_step=spikes[0, 0].tolist(),
                    grad=g.flatten().tolist(), grad_ref=g_ref.flatten().tolist(), launched=launched)
    finally:
        if saved is None:
            os.environ.pop(launch.PATH_ENV, None)
        else:
            os.environ[launch.PATH_ENV] = saved
