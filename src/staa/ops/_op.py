"""The ``staa::lif_forward`` / ``staa::lif_backward`` custom ops and their autograd.

One ``torch.library`` op runs the whole multi-step recurrence; its backward is a second
op, so ``torch.compile`` sees two opaque nodes (with fake implementations for shape
propagation) and never traces into the time loops. Eager calls run the same two bodies
through :class:`EagerLIF`, a plain ``autograd.Function``, which skips the custom op's
per-call wrapper (it matters to single-step networks, which make one call per step).

Parameters travel as a list of the present tensors plus a list of flags saying which of
``[pos, *gc_x, *gc_h, *sa]`` are there (a disabled block has its flags off); on each side
they are rebuilt into the named tuples of :mod:`staa.reference` (``GCParams``, ``SAParams``).
Autograd of custom ops does not round-trip lists holding ``None``, hence the flags.

The initial state ``h0`` (``None`` = the resting state) is an input and the last state
``h_last`` a differentiable output, so a chain of single-step calls backpropagates through
the state exactly as one multi-step call does.

Autocast: the ops are autocast-neutral. They run on their inputs as given (spikes come
back in ``x``'s dtype) and switch autocast off inside, so the attention MLPs and the
state are always float32 (float64 for float64 input), with or without autocast.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .._checks import past_T_message
from ..reference import GCParams, SAParams, compute_dtype
from . import torch_impl

Tensor = torch.Tensor

_BLOCKS = (("gc_x", GCParams), ("gc_h", GCParams), ("sa", SAParams))
#: Number of weight tensors of [pos, gc_x, gc_h, sa] when every block is on.
N_PARAMS = 1 + sum(len(cls._fields) for _, cls in _BLOCKS)


def _expand(params: Sequence[Tensor], present: Sequence[bool]) -> List[Optional[Tensor]]:
    it = iter(params)
    return [next(it) if here else None for here in present]


def _split(params: Sequence[Optional[Tensor]]):
    """``[pos, *gc_x, *gc_h, *sa]`` (None where absent) -> pos, GCParams/None, GCParams/None, SAParams/None."""
    out, i = [params[0]], 1
    for _, cls in _BLOCKS:
        ws = params[i:i + len(cls._fields)]
        out.append(None if ws[0] is None else cls(*ws))
        i += len(cls._fields)
    return tuple(out)


def _n_stats(present: Sequence[bool]) -> int:
    """Rows of the Triton forward's kept reductions for the blocks in ``present``
    (``staa.kernels.launch.stat_rows``: GC1 context and X's sum, GC2 context and H's sum)."""
    i_gcx, i_gch = 1, 1 + len(GCParams._fields)
    i_sa = i_gch + len(GCParams._fields)
    return int(present[i_gcx]) + int(present[i_gch]) + 2 * int(present[i_sa])


def _backend(use_triton: bool):
    if use_triton:
        from staa.kernels import launch  # imports triton; only on this path

        return launch
    return torch_impl


@torch.library.custom_op("staa::lif_forward", mutates_args=())
def lif_forward(
    x: Tensor,
    drop: Tensor,
    h0: Optional[Tensor],
    params: List[Tensor],
    present: List[bool],
    alpha: float,
    v_threshold: float,
    v_reset: Optional[float],
    detach_reset: bool,
    surrogate: str,
    surrogate_param: float,
    store_v_seq: bool,
    use_triton: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns ``(spikes, h_last, v_seq, u, gate, stats)``; ``v_seq`` is empty unless
    ``store_v_seq``. ``stats`` is what the backward reuses of the forward's reductions: the
    Triton launcher's ``[K, T, B, C]`` (``keep_stats``), empty on the torch route."""
    spikes, h_last, v_seq, u, gate, stats = _forward_impl(
        x, drop, h0, params, present, alpha, v_threshold, v_reset, detach_reset, surrogate, surrogate_param,
        store_v_seq, use_triton)
    empty = lambda t: x.new_empty((0,), dtype=compute_dtype(x.dtype)) if t is None else t  # noqa: E731
    return spikes, h_last, empty(v_seq), u, gate, empty(stats)


def _forward_impl(x, drop, h0, params, present, alpha, v_threshold, v_reset, detach_reset, surrogate,
                  surrogate_param, store_v_seq, use_triton):
    """The body of ``staa::lif_forward`` (also run directly by the eager autograd path), with
    ``None`` for an absent ``v_seq`` / ``stats`` (the op returns empty tensors there)."""
    pos, gcx, gch, sa = _split(_expand(params, present))
    # Only the Triton launcher keeps its reductions for the backward.
    extra = dict(keep_stats=True) if use_triton else {}
    with torch.autocast(x.device.type, enabled=False):
        out = _backend(use_triton).staa_lif_forward(
            x, drop, h0, pos, gcx, gch, sa,
            alpha=alpha, v_threshold=v_threshold, v_reset=v_reset, detach_reset=detach_reset,
            surrogate=surrogate, surrogate_param=surrogate_param, store_v_seq=store_v_seq, **extra,
        )
    spikes, h_last, v_seq, u, gate = out[:5]
    return spikes, h_last, v_seq, u, gate, (out[5] if use_triton else None)


@lif_forward.register_fake
def _(x, drop, h0, params, present, alpha, v_threshold, v_reset, detach_reset, surrogate, surrogate_param,
      store_v_seq, use_triton):
    T, B, C, P = x.shape
    cd = compute_dtype(x.dtype)
    return (
        torch.empty_like(x),
        x.new_empty((B, C, P), dtype=cd),
        x.new_empty((T, B, C, P) if store_v_seq else (0,), dtype=cd),
        x.new_empty((T, B, C, P), dtype=cd),
        x.new_empty((T, B, C), dtype=cd),
        x.new_empty((_n_stats(present), T, B, C) if use_triton else (0,), dtype=cd),
    )


@torch.library.custom_op("staa::lif_backward", mutates_args=())
def lif_backward(
    grad_spikes: Tensor,
    grad_h_last: Optional[Tensor],
    x: Tensor,
    drop: Tensor,
    h0: Optional[Tensor],
    params: List[Tensor],
    present: List[bool],
    u: Tensor,
    gate: Tensor,
    stats: Tensor,
    alpha: float,
    v_threshold: float,
    v_reset: Optional[float],
    detach_reset: bool,
    surrogate: str,
    surrogate_param: float,
    use_triton: bool,
) -> List[Tensor]:
    """Returns ``[grad_x, grad_h0, *grads of params in list order]``; ``grad_h0`` is empty
    when ``h0`` is ``None``."""
    out = _backward_impl(grad_spikes, grad_h_last, x, drop, h0, params, present, u, gate, stats, alpha,
                         v_threshold, v_reset, detach_reset, surrogate, surrogate_param, use_triton)
    if out[1] is None:
        out[1] = x.new_empty((0,), dtype=compute_dtype(x.dtype))
    return out


def _backward_impl(grad_spikes, grad_h_last, x, drop, h0, params, present, u, gate, stats, alpha, v_threshold,
                   v_reset, detach_reset, surrogate, surrogate_param, use_triton):
    """The body of ``staa::lif_backward`` (also run directly by the eager autograd path), with
    ``None`` for the gradient of an absent ``h0`` (the op returns an empty tensor there)."""
    pos, gcx, gch, sa = _split(_expand(params, present))
    extra = dict(stats=stats) if use_triton else {}
    with torch.autocast(x.device.type, enabled=False):
        gx, gh0, gpos, ggcx, ggch, gsa = _backend(use_triton).staa_lif_backward(
            grad_spikes.contiguous() if use_triton else grad_spikes,
            None if grad_h_last is None else grad_h_last.contiguous(),
            x, drop, h0, pos, gcx, gch, sa, u, gate,
            alpha=alpha, v_threshold=v_threshold, v_reset=v_reset, detach_reset=detach_reset,
            surrogate=surrogate, surrogate_param=surrogate_param, **extra,
        )
    out = [gx, gh0]
    if gpos is not None:
        out.append(gpos)
    for g in (ggcx, ggch, gsa):
        if g is not None:
            out.extend(g)
    return out


@lif_backward.register_fake
def _(grad_spikes, grad_h_last, x, drop, h0, params, present, u, gate, stats, *scalars):
    gh0 = x.new_empty((0,), dtype=compute_dtype(x.dtype)) if h0 is None else torch.empty_like(h0)
    return [torch.empty_like(x), gh0] + [torch.empty_like(p) for p in params]


def _setup_context(ctx, inputs, output):
    (x, drop, h0, params, present, alpha, v_threshold, v_reset, detach_reset, surrogate, surrogate_param,
     _, use_triton) = inputs
    _, _, v_seq, u, gate, stats = output
    ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None, not zeros
    ctx.present = list(present)
    ctx.has_h0 = h0 is not None
    ctx.scalars = (alpha, v_threshold, v_reset, detach_reset, surrogate, surrogate_param, use_triton)
    # h_last stays differentiable: single-step chains backpropagate through it.
    ctx.mark_non_differentiable(v_seq, u, gate, stats)
    ctx.save_for_backward(x, drop, u, gate, stats, h0, *params)


def _backward(ctx, grad_spikes, grad_h_last, *_unused):
    x, drop, u, gate, stats, h0, *params = ctx.saved_tensors
    if grad_spikes is None:  # only the last state is used by the loss
        grad_spikes = torch.zeros_like(x)
    grads = lif_backward(grad_spikes, grad_h_last, x, drop, h0, params, ctx.present, u, gate, stats, *ctx.scalars)
    grad_h0 = grads[1] if ctx.has_h0 else None
    return grads[0], None, grad_h0, list(grads[2:]), None, None, None, None, None, None, None, None, None


torch.library.register_autograd("staa::lif_forward", _backward, setup_context=_setup_context)


DOUBLE_BACKWARD_MESSAGE = (
    "staa's fast STAA-LIF op does not support double backward (a gradient of a gradient, e.g. create_graph=True "
    "followed by a second grad): its backward is hand-written and has no derivative of its own. For higher-order "
    "gradients run the plain reference, staa.reference.staa_lif_reference, which is built from differentiable "
    "torch operations."
)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(DOUBLE_BACKWARD_MESSAGE)


def _setup_nothing(ctx, inputs, output):
    pass


# Without a formula torch reports "no autograd formula was registered" for an internal op name;
# this says what is not supported and what to use instead.
torch.library.register_autograd("staa::lif_backward", _no_double_backward, setup_context=_setup_nothing)


# --------------------------------------------------------------------- eager path
class _NoDoubleBackward(torch.autograd.Function):
    """Identity on the first-order gradients when they are built with ``create_graph=True``;
    differentiating them again raises :data:`DOUBLE_BACKWARD_MESSAGE`, as the custom op does."""

    @staticmethod
    def forward(ctx, n_grads, *tensors):
        """``tensors`` = the ``n_grads`` gradients, then the inputs that require grad (which
        connect the outputs to the graph)."""
        return tuple(g.view_as(g) for g in tensors[:n_grads])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(DOUBLE_BACKWARD_MESSAGE)


class EagerLIF(torch.autograd.Function):
    """The same forward and backward as ``staa::lif_forward`` with its registered autograd,
    as a plain ``autograd.Function`` for eager calls.

    Outside ``torch.compile`` the custom op's autograd wrapper (argument flattening, schema
    handling, two dispatcher round trips per call) costs about 0.15 ms per call on a CPU,
    which a single-step network pays at every step; this path runs the same two bodies
    (``_forward_impl``, ``_backward_impl``) without it. Under ``torch.compile`` the custom op
    is used, so the compiled graph holds one opaque node.

    ``apply(x, drop, h0, present, scalars, store_v_seq, *params)`` returns
    ``(spikes, h_last, v_seq)``, ``v_seq`` ``None`` unless ``store_v_seq``.
    """

    @staticmethod
    def forward(ctx, x, drop, h0, present, scalars, store_v_seq, *params):
        alpha, v_threshold, v_reset, detach_reset, surrogate, surrogate_param, use_triton = scalars
        spikes, h_last, v_seq, u, gate, stats = _forward_impl(
            x, drop, h0, list(params), present, alpha, v_threshold, v_reset, detach_reset, surrogate,
            surrogate_param, store_v_seq, use_triton)
        ctx.set_materialize_grads(False)
        ctx.present, ctx.scalars = present, scalars
        if v_seq is not None:
            ctx.mark_non_differentiable(v_seq)
        ctx.save_for_backward(x, drop, u, gate, stats, h0, *params)
        return spikes, h_last, v_seq

    @staticmethod
    def backward(ctx, grad_spikes, grad_h_last, _grad_v_seq):
        x, drop, u, gate, stats, h0, *params = ctx.saved_tensors
        if grad_spikes is None:  # only the last state is used by the loss
            grad_spikes = torch.zeros_like(x)
        with torch.no_grad():
            grads = _backward_impl(grad_spikes, grad_h_last, x, drop, h0, params, ctx.present, u, gate, stats,
                                   *ctx.scalars)
        if torch.is_grad_enabled():  # create_graph=True: a second derivative must fail loudly
            inputs = [t for t in (x, h0, *params) if t is not None and t.requires_grad]
            given = [g for g in grads if g is not None]
            it = iter(_NoDoubleBackward.apply(len(given), *given, *inputs))
            grads = [None if g is None else next(it) for g in grads]
        return (grads[0], None, grads[1], None, None, None, *grads[2:])  # grads[1] is None without h0


# --------------------------------------------------------------------- position rows at a tensor step
def _row_index(t0: Tensor, steps: int, device) -> Tensor:
    return t0.reshape(()).to(device=device, dtype=torch.long) + torch.arange(steps, device=device)


def rows_at(pos: Tensor, t0: Tensor, steps: int, check_on_host: Optional[bool] = None) -> Tensor:
    """``pos[t0 : t0 + steps]`` for a one-element integer tensor ``t0`` (differentiable in ``pos``).

    On the CPU the range is checked on the host and a step past the end raises the same
    ``ValueError`` as an int ``t0``. Elsewhere a host check would synchronise with the device
    (and cannot run inside a CUDA graph), so the rows past the end are NaN: the spikes of those
    steps are NaN and the loss shows it, with no device-side assert. ``check_on_host`` overrides
    the choice (``None``: on the CPU only)."""
    n = pos.shape[0]
    idx = _row_index(t0, steps, pos.device)
    if check_on_host is None:
        check_on_host = pos.device.type == "cpu"
    if check_on_host:
        first = int(idx[0]) if steps else int(t0)
        if first < 0 or first + steps > n:
            raise ValueError(past_T_message(first, steps, n))
        return pos.index_select(0, idx)
    inside = (idx >= 0) & (idx < n)
    rows = pos.index_select(0, idx.clamp(0, max(n - 1, 0)))
    return rows + torch.where(inside, 0.0, float("nan")).to(rows.dtype).unsqueeze(1)


@torch.library.custom_op("staa::pos_rows", mutates_args=())
def pos_rows(pos: Tensor, t0: Tensor, steps: int) -> Tensor:
    """:func:`rows_at` as an opaque op, so that under ``torch.compile`` its range check runs at
    every call (traced, the host check would be a graph break)."""
    return rows_at(pos, t0, steps).clone()


@pos_rows.register_fake
def _(pos, t0, steps):
    return pos.new_empty((steps, pos.shape[1]))


def _pos_rows_setup(ctx, inputs, output):
    pos, t0, steps = inputs
    ctx.n, ctx.steps = pos.shape[0], steps
    ctx.save_for_backward(t0)


def _pos_rows_backward(ctx, grad):
    (t0,) = ctx.saved_tensors
    idx = _row_index(t0, ctx.steps, grad.device)
    inside = ((idx >= 0) & (idx < ctx.n)).to(grad.dtype).unsqueeze(1)
    grad_pos = grad.new_zeros((ctx.n, grad.shape[1])).index_add(0, idx.clamp(0, max(ctx.n - 1, 0)), grad * inside)
    return grad_pos, None, None


torch.library.register_autograd("staa::pos_rows", _pos_rows_backward, setup_context=_pos_rows_setup)


# --------------------------------------------------------------------- check_finite under torch.compile
@torch.library.custom_op("staa::finite_or_raise", mutates_args=())
def finite_or_raise(x: Tensor) -> Tensor:
    """A copy of ``x`` after ``STAALIF(check_finite=True)``'s check (``_checks.finite_input``).
    Under ``torch.compile`` the host read is a graph break; as an opaque op it runs at every call
    (the copy is its output, so the compiled graph cannot drop the op)."""
    from .._checks import finite_input

    finite_input(x)
    return x.clone()


@finite_or_raise.register_fake
def _(x):
    return torch.empty_like(x)


torch.library.register_autograd("staa::finite_or_raise", lambda ctx, grad: grad,
                                setup_context=lambda ctx, inputs, output: None)
