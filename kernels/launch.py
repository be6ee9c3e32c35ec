"""Launchers of the STAA-LIF Triton kernels: the ``backend="triton"`` side of the op contract.

``staa_lif_forward`` / ``staa_lif_backward`` take and return exactly what the torch
implementation of the custom op does (see ``staa.ops``): inputs ``x [T, B, C, P]``, the bool
TSRD mask ``drop [T]``, the initial state ``h0 [B, C, P]`` (or None: the rest constant), the
position encoding and the GC/SA weights as ``staa.reference.GCParams`` / ``SAParams``; saved
tensors ``u [T, B, C, P]`` and ``gate [T, B, C]`` in the compute dtype. The surrogate kind
only changes the backward kernels (a compile-time switch).

The reductions that do not depend on the membrane state (GC1's context and the spatial sum
of X_t = I_t + PE_t on every step, and GC2's of the initial state) run in one plane-reduction
launch before the loop. The time loop launches two kernels per step (channel MLPs, then the
elementwise pass), or, for small planes, one persistent program per sample runs all steps
(``loop_path``). The forward keeps each step's summed reductions (``stats``) so the backward
recomputes the MLP activations without re-reading x or u, and two launches after the reverse
loop build every parameter gradient (row ranges in parallel, then their partials added). Apart from allocations, the only torch operation on
the route is the TSRD mask's cast to int8; see docs/triton.md for the layout and the counts.
"""
from __future__ import annotations

import functools
import os
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from ..reference import GCParams, SAParams, compute_dtype
from ..surrogate import SURROGATE_KINDS
from . import _direct
from .staa_bwd import (WEIGHT_JOBS_FIXED, WEIGHT_OUTPUTS, staa_bwd_elem_kernel, staa_bwd_mlp_kernel,
                       staa_bwd_persistent_kernel, staa_bwd_weights_kernel, staa_bwd_weights_sum_kernel)
from .staa_fwd import (staa_fwd_elem_kernel, staa_fwd_mlp_kernel, staa_fwd_persistent_kernel,
                       staa_plane_reduce_kernel)

Tensor = torch.Tensor

__all__ = ["TileConfig", "tile_config", "mlp_config", "partial_block", "WeightConfig", "weight_config",
           "weight_shared_bytes", "device_smem", "loop_path", "backward_elem_warps", "persistent_backward_warps",
           "staa_lif_forward", "staa_lif_backward"]

# Elements of one [BLOCK_C, BLOCK_P] plane tile held by one program of the elementwise
# kernels; one program always holds every channel of its positions, because GC's key
# logit of a position is a sum over all C channels.
MAX_TILE = 4096
# Elements of one [BLOCK_H, BLOCK_CC] weight tile in the MLP kernels.
MAX_WEIGHT_TILE = 4096


class TileConfig(NamedTuple):
    BLOCK_C: int
    BLOCK_P: int
    NP: int  # programs per sample along the plane
    num_warps: int


def tile_config(C: int, P: int) -> TileConfig:
    """Plane tiling of the elementwise kernels for ``C`` channels and ``P`` positions.

    ``BLOCK_C`` covers every channel; ``BLOCK_P`` is the largest power of two (at most
    ``P`` rounded up) that keeps the tile within ``MAX_TILE`` elements.
    """
    return _tile_config(C, P, MAX_TILE)


# The configurations depend only on the shape and the module's limits (keys of the caches, so a
# changed limit is a new entry): computed once per shape, not on every call.
@functools.lru_cache(maxsize=1024)
def _tile_config(C: int, P: int, max_tile: int) -> TileConfig:
    block_c = triton.next_power_of_2(C)
    block_p = max(1, min(triton.next_power_of_2(P), max_tile // block_c))
    n_p = triton.cdiv(P, block_p)
    tile = block_c * block_p
    num_warps = 2 if tile <= 512 else 4 if tile <= 2048 else 8
    return TileConfig(block_c, block_p, n_p, num_warps)


def mlp_config(C: int, *hidden: int) -> tuple:
    """``(BLOCK_CC, (BLOCK_H...), num_warps)`` of the per-sample MLP kernels."""
    return _mlp_config(C, hidden, MAX_WEIGHT_TILE)


@functools.lru_cache(maxsize=1024)
def _mlp_config(C: int, hidden: tuple, max_weight_tile: int) -> tuple:
    block_h = tuple(triton.next_power_of_2(max(h, 1)) for h in hidden)
    widest = max(block_h) if block_h else 1
    block_cc = max(1, min(triton.next_power_of_2(C), max_weight_tile // widest))
    num_warps = 4 if widest * block_cc >= 2048 else 2
    return block_cc, block_h, num_warps


# Elements of one [BLOCK_NP, BLOCK_CC] block of per-tile partials that the MLP kernels sum with one load
# (at 4096 the [128, 32x32] forward MLP kernel spilled 4 bytes per thread, at 2048 it does not).
MAX_PARTIAL_TILE = 2048


def partial_block(NP: int, block_cc: int) -> int:
    """``BLOCK_NP``: plane tiles per block when the MLP kernels sum a sample's ``NP`` per-tile
    partials (``_sum_partials``): every tile in one block (one load per channel chunk, however
    many tiles) up to ``MAX_PARTIAL_TILE`` elements per block, then blocks added in order."""
    return max(1, min(triton.next_power_of_2(NP), MAX_PARTIAL_TILE // block_cc))


# The parameter gradients (``staa_bwd_weights_kernel`` then ``staa_bwd_weights_sum_kernel``): rows
# of every sum are read in blocks of WEIGHT_ROW_BLOCK (the K of the weight matrices' ``tl.dot``,
# which needs at least 16), each program of pass 1 takes a contiguous range of at least
# WEIGHT_SPLIT_BLOCKS blocks, and the number of ranges grows with the rows up to a cap (more rows
# then lengthen the ranges): MAX_MATRIX_SPLITS for the weight matrices, whose per-split partials
# are whole matrices, MAX_VECTOR_SPLITS for the vectors.
WEIGHT_ROW_BLOCK = 16
WEIGHT_SPLIT_BLOCKS = 2
MAX_MATRIX_SPLITS = 16
MAX_VECTOR_SPLITS = 64
MAX_WEIGHT_HIDDEN_TILE = 128  # hidden rows of one weight-matrix tile
# Warps of pass 1: at 4 its C = 64 and C = 128 configurations spilled 8-48 bytes per thread around the
# weight matrices' tl.dot, at 8 four configurations spill 12 (stores) / 4 (loads) bytes and none more
# (benchmarks/results/kernel_compile_sm90_parallel_sums.md).
WEIGHT_WARPS = 8
# Shared memory one block may use (the opt-in maximum, bytes) per CUDA compute capability, for a
# device whose properties do not report it; benchmarks/compile_kernels.py checks its tables against it.
SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
# The shared memory per block the launchers plan for in place of the device's (None: the CUDA device's,
# no limit elsewhere); set by benchmarks/compile_kernels.py to the architecture it compiles for, and by tests.
smem_limit = None


def weight_shared_bytes(block_hd: int, block_wc: int, itemsize: int) -> int:
    """Estimated shared memory (bytes per block) of ``staa_bwd_weights_kernel`` with a ``[BLOCK_HD,
    BLOCK_WC]`` weight-matrix tile in a compute dtype of ``itemsize`` bytes: the weight matrices'
    ``tl.dot`` loop is software-pipelined, its ``[BLOCK_N, BLOCK_HD]`` and ``[BLOCK_N, BLOCK_WC]``
    row blocks buffered in shared memory. Ten such pairs: the compiled figure for sm_80, sm_89 and
    sm_90 at both goal layers' tiles ([32, 128] and [128, 32], fp32: 102,400 B); tests check it
    bounds every weights-kernel row of the compile tables."""
    return 10 * WEIGHT_ROW_BLOCK * (block_hd + block_wc) * itemsize


def _splits(rows: int, cap: int) -> tuple:
    """``(splits, blocks per split)`` of a sum over ``rows`` rows."""
    rows = max(rows, 1)
    n = max(1, min(triton.cdiv(rows, WEIGHT_ROW_BLOCK * WEIGHT_SPLIT_BLOCKS), cap))
    rb = triton.cdiv(triton.cdiv(rows, n), WEIGHT_ROW_BLOCK)
    return triton.cdiv(rows, rb * WEIGHT_ROW_BLOCK), rb


class WeightConfig(NamedTuple):
    """Launch configuration of the two parameter-gradient passes (see ``weight_config``)."""
    NSM: int  # row ranges (pass-1 programs per output tile) of the weight matrices' sums
    RBM: int  # row blocks per range
    NSV: int  # row ranges of the vectors' sums
    RBV: int
    BLOCK_HD: int  # hidden rows of a weight-matrix tile
    BLOCK_WC: int  # channels of a weight-matrix tile
    BLOCK_WV: int  # channels of a vector tile
    NCT: int  # channel tiles of the weight matrices
    grid1: tuple  # pass 1
    BLOCK_S: int  # pass 2: ranges per block
    BLOCK_E: int  # pass 2: output elements per program
    grid2: tuple  # pass 2


def weight_config(T: int, B: int, NP: int, C: int, hidden: tuple, T_pos: int, *, has_gc: bool,
                  has_pos: bool, smem: Optional[int] = None, itemsize: int = 4) -> WeightConfig:
    """Splits and tiles of the parameter-gradient passes for ``T`` steps, ``B`` samples, ``NP``
    plane tiles, ``C`` channels, hidden widths ``(CH1, CH2, CHS)`` and ``T_pos`` position rows.

    Every sum reads WEIGHT_ROW_BLOCK rows per load; pass-1 programs take ranges of
    ``RBM``/``RBV`` such blocks, so a program's loads do not grow with B or the plane until the
    range count reaches its cap (16 for the matrices: T*B = 512 rows; 64 for the vectors: T*B*NP
    = 2048 rows), and pass 2 adds at most 64 partials per element in one block.

    ``smem``: the device's shared memory per block (None: no limit). Where the weight-matrix tile's
    estimate (``weight_shared_bytes`` for a compute dtype of ``itemsize`` bytes) exceeds it, the
    tile's longer side is halved (down to 16) until it fits: sm_89's 101,376 B takes [32, 64] and
    [64, 32] where sm_80 and sm_90 keep [32, 128] and [128, 32]. Same sums in the same row order,
    in more programs."""
    return _weight_config(T, B, NP, C, tuple(hidden), T_pos, has_gc, has_pos, smem, itemsize,
                          (WEIGHT_SPLIT_BLOCKS, MAX_MATRIX_SPLITS, MAX_VECTOR_SPLITS, MAX_WEIGHT_TILE))


@functools.lru_cache(maxsize=1024)
def _weight_config(T, B, NP, C, hidden, T_pos, has_gc, has_pos, smem, itemsize, limits) -> WeightConfig:
    # ``limits``: the module's split and tile limits, part of the cache key (tests change them)
    rows_v = max(T * B, T * B * NP if has_gc else 0, B * NP if has_pos else 0)
    nsm, rbm = _splits(T * B, MAX_MATRIX_SPLITS)
    nsv, rbv = _splits(rows_v, MAX_VECTOR_SPLITS)
    widest = max(hidden)
    block_hd = max(16, min(triton.next_power_of_2(widest), MAX_WEIGHT_HIDDEN_TILE))
    block_wc = max(16, min(triton.next_power_of_2(C), MAX_WEIGHT_TILE // block_hd))
    while smem is not None and max(block_hd, block_wc) > 16 and weight_shared_bytes(block_hd, block_wc,
                                                                                    itemsize) > smem:
        if block_wc >= block_hd:
            block_wc //= 2
        else:
            block_hd //= 2
    block_wv = max(16, min(triton.next_power_of_2(C), MAX_WEIGHT_TILE // WEIGHT_ROW_BLOCK))
    nct = triton.cdiv(C, block_wc)
    tiles = max(nct * triton.cdiv(widest, block_hd), triton.cdiv(C, block_wv), 1)
    block_s = triton.next_power_of_2(max(nsm, nsv))
    block_e = max(16, MAX_WEIGHT_TILE // block_s)
    largest = max(widest * C, T_pos * C, C)
    return WeightConfig(nsm, rbm, nsv, rbv, block_hd, block_wc, block_wv, nct,
                        (tiles, WEIGHT_JOBS_FIXED + T_pos, max(nsm, nsv)), block_s, block_e,
                        (triton.cdiv(largest, block_e), WEIGHT_OUTPUTS))


def device_smem(device) -> Optional[int]:
    """Shared memory per block the launchers plan for on ``device``: ``smem_limit`` when set, else a
    CUDA device's opt-in maximum (its properties, or ``SMEM_LIMIT`` by compute capability), else
    None (the interpreter: no limit)."""
    if smem_limit is not None:
        return smem_limit
    if device.type != "cuda":
        return None
    return _cuda_smem(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_smem(index: int) -> Optional[int]:
    props = torch.cuda.get_device_properties(index)
    return (getattr(props, "shared_memory_per_block_optin", None)
            or SMEM_LIMIT.get(10 * props.major + props.minor))


# Planes of at most this many elements (C * P) run the time loop (forward and backward) in one
# persistent program per sample: that is at most two MAX_TILE tiles, so the per-step path would launch
# at most two programs per sample per step anyway and gains no parallelism for its 2 T launches.
PERSISTENT_MAX_PLANE = 2 * MAX_TILE
LOOP_PATHS = ("per_step", "persistent")
PATH_ENV = "STAA_TRITON_PATH"


def loop_path(C: int, P: int, path: Optional[str] = None) -> str:
    """Which time-loop path the launchers run for a ``[C, P]`` plane: ``"persistent"`` (one
    program per sample runs all steps) or ``"per_step"`` (two launches per step).

    ``path`` (the launcher's argument) wins, then the ``STAA_TRITON_PATH`` environment
    variable (``auto``, ``per_step`` or ``persistent``); ``auto`` picks ``"persistent"``
    when ``C * P <= PERSISTENT_MAX_PLANE`` (8192 elements, e.g. ``[512, 4, 4]``).
    """
    choice = path if path is not None else os.environ.get(PATH_ENV, "auto")
    if choice == "auto" or choice == "":
        return "persistent" if C * P <= PERSISTENT_MAX_PLANE else "per_step"
    if choice not in LOOP_PATHS:
        src = "path" if path is not None else PATH_ENV
        raise ValueError(f"{src} must be 'auto', 'per_step' or 'persistent', got {choice!r}")
    return choice


def persistent_warps(tc: TileConfig) -> int:
    """Warps of the persistent forward program: twice the per-step tile's (at most 16). The
    program is alone on its SM, so more warps hide more latency; at 8 warps the
    ``[512, 8]`` tile spilled (benchmarks/results/kernel_compile_sm90_persistent.md)."""
    return min(16, 2 * tc.num_warps)


def persistent_backward_warps(tc: TileConfig) -> int:
    """Warps of the persistent backward program: twice the per-step tile's, at most 8. Its body
    holds more tile-sized values than the forward's; at 16 warps a thread may use at most 128
    registers and the ``[512, 8]`` tile spilled, at 8 it compiles without spills, while the
    per-step tile's own warps (2 or 4) spilled the ``[512, 1]`` and ``[1024, 1]`` tiles
    (benchmarks/results/kernel_compile_sm90_persistent.md)."""
    return min(8, 2 * tc.num_warps)


def backward_elem_warps(tc: TileConfig) -> int:
    """Warps of the per-step backward elementwise kernel: one per 256 tile elements (8 per
    thread), at least the forward's. Its body holds about ten tile-sized values at once; at 16
    elements per thread (the forward's 8 warps on a 4096 tile) that compiled to ~150 registers,
    one 8-warp block per SM, and at 8 per thread to ~90 (benchmarks/results/kernel_compile_sm90.md)."""
    return max(tc.num_warps, min(16, tc.BLOCK_C * tc.BLOCK_P // 256))


# Set by benchmarks/compile_kernels.py to record launches instead of running them.
launch_hook = None


class _Launch:
    """A kernel's launches within one launcher call: ``launch(grid, *varying)`` runs it with the
    positional arguments ``head + varying + tail`` and the keywords given here. ``head`` and
    ``tail`` are fixed for the call, so with direct launching (``_direct``) their part of the key
    is built once, at the first launch; ``variant`` shares it with other keywords."""

    __slots__ = ("kernel", "fixed", "kwargs", "base", "parent")

    def __init__(self, kernel, head: tuple = (), tail: tuple = (), *, _fixed=None, _parent=None, **kwargs):
        # No FMA contraction: V = u * gate must round exactly as the backward (and the torch
        # recomputation of H) evaluates it, e.g. soft reset's V - v_th must not fuse into the product.
        kwargs.setdefault("enable_fp_fusion", False)
        self.kernel, self.kwargs, self.base, self.parent = kernel, kwargs, None, _parent
        self.fixed = [head, tail, None] if _fixed is None else _fixed

    def variant(self, **changes) -> "_Launch":
        """The same launch with some keywords changed (its key: this one's and the changes)."""
        return _Launch(self.kernel, _fixed=self.fixed, _parent=(self, tuple(changes.items())),
                       **dict(self.kwargs, **changes))

    def _fixed_key(self):
        parent = None
        if self.parent is not None:
            up, changes = self.parent
            if up.base is None:
                up.base = up._fixed_key()
            parent = (up.base, changes)
        return _direct.fixed_key(self.kernel, self.fixed, self.kwargs, parent)

    def __call__(self, grid, *varying):
        head, tail = self.fixed[0], self.fixed[1]
        args = head + varying + tail if tail else head + varying
        if launch_hook is not None:
            return launch_hook(self.kernel, grid, args, self.kwargs)
        base = self.base
        if base is None:
            base = self.base = self._fixed_key()
        if base is False:
            self.kernel[grid](*args, **self.kwargs)
        else:
            _direct.launch(base[0], base[1], self.kernel, grid, args, varying, self.kwargs)


def _run(kernel, grid, *args, **kwargs):
    """One launch of ``kernel`` (every argument specialised for it alone)."""
    _Launch(kernel, args, **kwargs)(grid)


def _compute_dtype(dtype: torch.dtype):
    """(torch, triton) compute dtype for an input dtype, by the reference's rule."""
    cd = compute_dtype(dtype)
    return cd, (tl.float64 if cd == torch.float64 else tl.float32)


def _check(x: Tensor, drop: Optional[Tensor], h0: Optional[Tensor], pos, gcx, gch, sa):
    if x.dim() != 4:
        raise ValueError(f"x must be [T, B, C, P], got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"x must be float16/bfloat16/float32/float64, got {x.dtype}")
    T, B, C, P = x.shape
    if drop is not None and tuple(drop.shape) != (T,):
        raise ValueError(f"drop must be a bool mask of shape [{T}], got {tuple(drop.shape)}")
    if h0 is not None and tuple(h0.shape) != (B, C, P):
        raise ValueError(f"h0 must be [B, C, P] = [{B}, {C}, {P}] or None, got {tuple(h0.shape)}")
    if pos is not None and (pos.dim() != 2 or pos.shape[0] < T or pos.shape[1] != C):
        raise ValueError(f"pos must be [T_pos >= {T}, {C}], got {tuple(pos.shape)}")
    for name, blk, cls in (("gcx", gcx, GCParams), ("gch", gch, GCParams), ("sa", sa, SAParams)):
        if blk is not None and not isinstance(blk, cls):
            raise TypeError(f"{name} must be a staa.reference.{cls.__name__} or None, got {type(blk).__name__}")


def _surrogate_index(surrogate: str) -> int:
    """The kernels' ``SURROGATE`` constexpr: the kind's index in ``SURROGATE_KINDS``."""
    if surrogate not in SURROGATE_KINDS:
        raise ValueError(f"surrogate must be one of {', '.join(map(repr, SURROGATE_KINDS))}, got {surrogate!r}")
    return SURROGATE_KINDS.index(surrogate)


def _drop_i8(drop: Optional[Tensor], T: int, device) -> Tensor:
    if drop is None:
        return torch.zeros(T, dtype=torch.int8, device=device)
    return drop.to(device=device, dtype=torch.int8).contiguous()


def _vec(p: Tensor) -> Tensor:
    # A kernel only needs the pointer: a contiguous tensor outside autograd is passed as it is.
    return p if not p.requires_grad and p.is_contiguous() else p.detach().contiguous()


def _block(blk, cls):
    """The block's weights detached and contiguous (same named tuple)."""
    return cls(*(_vec(w) for w in blk))


def _or_dummy(blk, cls, dummy: Tensor):
    """A prepared block (``_prepare``: already contiguous) as it is, or ``dummy`` in every field."""
    return cls(*([dummy] * len(cls._fields))) if blk is None else blk


@functools.lru_cache(maxsize=1024)
def _layout(shapes: tuple, item: int) -> tuple:
    """``(elements, ((shape, strides, offset) or None, ...))``: contiguous pieces of one flat buffer
    for ``shapes`` (None: no piece), each starting on a 16-byte boundary as a fresh allocation
    does, so the kernels' pointer specialisation (divisible by 16) is the same."""
    align = max(1, 16 // item)
    total, pieces = 0, []
    for shape in shapes:
        if shape is None:
            pieces.append(None)
            continue
        strides, n = [], 1
        for d in reversed(shape):
            strides.append(n)
            n *= d
        pieces.append((shape, tuple(reversed(strides)), total))
        total += -(-n // align) * align
    return total, tuple(pieces)


def _carve(shapes: tuple, dtype: torch.dtype, device) -> list:
    """One fresh ``torch.empty`` for several scratch buffers of one dtype: a contiguous view per
    shape (None where the shape is None). Only for buffers that do not leave the launcher (a view
    keeps the whole allocation alive)."""
    total, pieces = _layout(shapes, dtype.itemsize)
    if total == 0:
        return [None] * len(pieces)
    flat = torch.empty((total,), dtype=dtype, device=device)
    return [None if pc is None else flat.as_strided(*pc) for pc in pieces]


def _rest(v_reset: Optional[float]) -> float:
    """The constant H_{-1} when no initial state is given: v_reset (hard reset) or 0 (soft)."""
    return 0.0 if v_reset is None else float(v_reset)


def _reduce(src: Tensor, pos, gate, gc: Optional[GCParams], *, rows: bool, from_u: bool, want_sum: bool,
            init_gc: Optional[GCParams], init_ctx: bool, init_sum: bool,
            v_threshold: float, v_reset: Optional[float], h0: Optional[Tensor], CD):
    """One launch of ``staa_plane_reduce_kernel``: per-tile reductions of every (t, b) plane of
    ``src`` (``rows``; X or, ``from_u``, H_{t-1}) and of the initial state H_{-1} (``init_ctx``/
    ``init_sum``, GC2's key ``init_gc``). Returns ``(part_ctx, part_sum)`` ``[T*B, NP, C]`` and
    ``(init_part_ctx, init_part_sum)`` ``[B, NP, C]``, None where not asked for."""
    T, B, C, P = src.shape
    cd = torch.float64 if CD == tl.float64 else torch.float32
    tc = tile_config(C, P)
    n_rows = T * B if rows else 0

    def buf(on, n):
        return (n, tc.NP, C) if on else None

    part_ctx, part_sum, ipart_ctx, ipart_sum = _carve(
        (buf(rows and gc is not None, n_rows), buf(rows and want_sum, n_rows), buf(init_ctx, B), buf(init_sum, B)),
        cd, src.device)
    dummy = next(t for t in (part_ctx, part_sum, ipart_ctx, ipart_sum, src) if t is not None)
    rest = _rest(v_reset)
    has_h0 = h0 is not None and (from_u or init_ctx or init_sum)
    pick = lambda t: t if t is not None else dummy  # noqa: E731
    _run(staa_plane_reduce_kernel, (n_rows + (B if init_ctx or init_sum else 0), tc.NP),
         src, pick(pos), pick(gate), gc.key_weight if gc is not None else dummy, gc.key_bias if gc is not None else dummy,
         pick(part_ctx), pick(part_sum), h0 if has_h0 else dummy,
         init_gc.key_weight if init_ctx else dummy, init_gc.key_bias if init_ctx else dummy,
         pick(ipart_ctx), pick(ipart_sum),
         n_rows, B, C, P, tc.NP, float(v_threshold), rest, rest,
         FROM_U=from_u, HAS_H0=has_h0, HAS_POS=pos is not None, HAS_CTX=rows and gc is not None,
         HAS_SUM=rows and want_sum, INIT_CTX=init_ctx, INIT_SUM=init_sum,
         HARD=v_reset is not None, BLOCK_C=tc.BLOCK_C, BLOCK_P=tc.BLOCK_P, CD=CD, num_warps=tc.num_warps)
    return (part_ctx, part_sum), (ipart_ctx, ipart_sum)


def plane_partials(src: Tensor, pos, gate, gc: Optional[GCParams], *, from_u: bool, want_sum: bool,
                   v_threshold: float, v_reset: Optional[float], h0: Optional[Tensor], CD):
    """Per-tile GC context (``gc`` given: its key) and spatial sum (``want_sum``) of every (t, b)
    plane, each ``[T*B, NP, C]`` in the layout the MLP kernels read, or None.

    The plane is ``X = src + pos`` or, with ``from_u``, ``H_{t-1} = reset(u_{t-1} * gate_{t-1})``
    (``src = u``; H_{-1} is ``h0``, a ``[B, C, P]`` tensor, or the rest constant). One read of ``src``.
    """
    return _reduce(src, pos, gate, gc, rows=True, from_u=from_u, want_sum=want_sum, init_gc=None,
                   init_ctx=False, init_sum=False, v_threshold=v_threshold, v_reset=v_reset, h0=h0, CD=CD)[0]


def plane_reductions(src: Tensor, pos, gate, gc: Optional[GCParams], *, from_u: bool, want_sum: bool,
                     v_threshold: float, v_reset: Optional[float], h0: Optional[Tensor], CD):
    """``plane_partials`` summed over the tiles in a fixed order: ``[T*B, C]`` each, or None."""
    part_ctx, part_sum = plane_partials(src, pos, gate, gc, from_u=from_u, want_sum=want_sum,
                                        v_threshold=v_threshold, v_reset=v_reset, h0=h0, CD=CD)
    return tuple(None if part is None else part.sum(1) for part in (part_ctx, part_sum))


def stat_rows(has_gcx: bool, has_gch: bool, has_sa: bool) -> dict:
    """Rows of the forward's kept reductions ``stats [K, T, B, C]`` (``keep_stats=True``): the
    GC1 context of X (``ctx1``), the spatial sum of X (``xsum``), the GC2 context of H_{t-1}
    (``ctx2``) and the spatial sum of H_{t-1} (``hsum``), those of the blocks present, in that order."""
    names = [n for n, on in (("ctx1", has_gcx), ("xsum", has_sa), ("ctx2", has_gch), ("hsum", has_sa)) if on]
    return {n: k for k, n in enumerate(names)}


def _on_device(fn):
    """Run ``fn`` with x's CUDA device current, so the kernels launch where the data is."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        i = 0 if fn.__name__ == "staa_lif_forward" else 2  # backward: (grad_spikes, grad_h_last, x, ...)
        x = args[i] if len(args) > i else kwargs["x"]
        prev = _direct.entered()  # the launch mode, device and JIT knobs are read once per call
        try:
            if x.device.type == "cuda":
                with torch.cuda.device(x.device):
                    return fn(*args, **kwargs)
            return fn(*args, **kwargs)
        finally:
            _direct.left(prev)

    return wrapper



def _mlp_weights(gcx, gch, sa, dummy) -> tuple:
    """The channel MLPs' weights in the kernels' argument order: GC1 and GC2 query, LayerNorm
    and value weights and biases, then SA's fc1 and fc2 (``dummy`` for a disabled block)."""
    g1, g2, s4 = _or_dummy(gcx, GCParams, dummy), _or_dummy(gch, GCParams, dummy), _or_dummy(sa, SAParams, dummy)
    return tuple(g1[2:]) + tuple(g2[2:]) + tuple(s4)


def _hidden(gcx, gch, sa) -> tuple:
    """Hidden widths ``(CHG1, CHG2, CHS)`` of the channel MLPs (1 for a disabled block)."""
    return (gcx.query_weight.shape[0] if gcx is not None else 1, gch.query_weight.shape[0] if gch is not None else 1,
            sa.fc1_weight.shape[0] if sa is not None else 1)


def _prepare(x, drop, h0, pos, gcx, gch, sa, cd):
    """Contiguous inputs in the kernels' dtypes: ``(x, drop8, h0c, posc, gcx, gch, sa)``."""
    T = x.shape[0]
    h0c = h0.detach().to(cd).contiguous() if h0 is not None else None
    posc = pos.detach()[:T].to(cd).contiguous() if pos is not None else None
    blocks = (None if blk is None else _block(blk, cls)
              for blk, cls in ((gcx, GCParams), (gch, GCParams), (sa, SAParams)))
    return (x.contiguous(), _drop_i8(drop, T, x.device), h0c, posc, *blocks)


def _empty_forward(x, h0c, rest, cd, store_v_seq, stats):
    """The forward of a zero-step (or zero-size) call: the state after zero steps is H_{-1} (a fresh tensor)."""
    T, B, C, P = x.shape
    dev = x.device
    h_last = h0c.clone() if h0c is not None else torch.full((B, C, P), rest, dtype=cd, device=dev)
    out = (torch.empty_like(x), h_last, torch.zeros((T, B, C, P), dtype=cd, device=dev) if store_v_seq else None,
           torch.zeros((T, B, C, P), dtype=cd, device=dev), torch.ones((T, B, C), dtype=cd, device=dev))
    return out + ((stats.zero_(),) if stats is not None else ())


@_on_device
def staa_lif_forward(
    x: Tensor,
    drop: Optional[Tensor],
    h0: Optional[Tensor],
    pos: Optional[Tensor],
    gcx: Optional[GCParams],
    gch: Optional[GCParams],
    sa: Optional[SAParams],
    *,
    alpha: float,
    v_threshold: float,
    v_reset: Optional[float],
    detach_reset: bool,
    surrogate: str,
    surrogate_param: float,
    store_v_seq: bool,
    path: Optional[str] = None,
    keep_stats: bool = False,
):
    """Multi-step STAA-LIF forward with the Triton kernels.

    Args:
        x: input currents ``[T, B, C, P]`` (fp16/bf16/fp32/fp64), on CUDA or on the CPU
            under ``TRITON_INTERPRET=1``.
        drop: bool TSRD mask ``[T]`` (True: aggregator skipped, V_t = I_t + H_{t-1}); any step,
            the first included.
        h0: initial state H_{-1} ``[B, C, P]`` or ``None`` (v_reset for hard reset, 0 for soft).
        pos: position encoding ``[T_pos >= T, C]`` (row t at local step t) or ``None``.
        gcx, gch: GC1 / GC2 ``GCParams`` or ``None``; sa: ``SAParams`` or ``None``.
        surrogate, surrogate_param: checked, otherwise unused (only the backward depends on them).
        path: ``"per_step"``, ``"persistent"`` or ``"auto"``/``None`` (see ``loop_path``);
            both give the same results.
        keep_stats: also return the per-step reductions the forward computed (``stats``
            ``[K, T, B, C]``, rows named by ``stat_rows``), which ``staa_lif_backward`` takes
            instead of re-reading x and u to rebuild them.

    Returns:
        ``(spikes [T, B, C, P] x.dtype, h_last [B, C, P], v_seq [T, B, C, P] or None,
        u [T, B, C, P], gate [T, B, C])``, all but spikes in the compute dtype, then ``stats``
        with ``keep_stats``. Spikes are NaN where V is not finite.
    """
    _check(x, drop, h0, pos, gcx, gch, sa)
    _surrogate_index(surrogate)
    T, B, C, P = x.shape
    persistent = loop_path(C, P, path) == "persistent"
    cd, CD = _compute_dtype(x.dtype)
    dev = x.device
    x, drop8, h0c, posc, gcx, gch, sa = _prepare(x, drop, h0, pos, gcx, gch, sa, cd)
    rest = _rest(v_reset)
    rows = stat_rows(gcx is not None, gch is not None, sa is not None)
    stats = torch.empty((len(rows), T, B, C), dtype=cd, device=dev) if keep_stats else None
    if x.numel() == 0:
        return _empty_forward(x, h0c, rest, cd, store_v_seq, stats)

    tc = tile_config(C, P)
    u = torch.empty((T, B, C, P), dtype=cd, device=dev)
    spikes = torch.empty((T, B, C, P), dtype=x.dtype, device=dev)
    h_last = torch.empty((B, C, P), dtype=cd, device=dev)
    v_seq = torch.empty((T, B, C, P), dtype=cd, device=dev) if store_v_seq else None
    gate = (torch.empty if sa is not None else torch.ones)((T, B, C), dtype=cd, device=dev)
    d1, d2 = _carve(((T, B, C) if gcx is not None else None, (B, C) if gch is not None else None), cd, dev)
    # One launch reduces X_t for every step (GC1, SA) and H_{-1} for step 0 (GC2, SA); the
    # elementwise kernels overwrite the H rows with H_t's reductions as the loop goes.
    pxc = pxs = pc = phs = None
    if gcx is not None or gch is not None or sa is not None:
        (pxc, pxs), (pc, phs) = _reduce(x, posc, None, gcx, rows=gcx is not None or sa is not None, from_u=False,
                                        want_sum=sa is not None, init_gc=gch, init_ctx=gch is not None,
                                        init_sum=sa is not None, v_threshold=v_threshold, v_reset=v_reset, h0=h0c,
                                        CD=CD)

    dummy = u  # stands in for pointers of disabled blocks; never dereferenced
    pick = lambda t: t if t is not None else dummy  # noqa: E731
    kept = [stats[rows[n]] if keep_stats and n in rows else dummy for n in ("ctx1", "xsum", "ctx2", "hsum")]
    weights = _mlp_weights(gcx, gch, sa, dummy)
    g2 = _or_dummy(gch, GCParams, dummy)
    hidden = _hidden(gcx, gch, sa)
    block_cc, (bh1, bh2, bhs), mlp_warps = mlp_config(C, *hidden)
    flags = dict(HAS_GCX=gcx is not None, HAS_GCH=gch is not None, HAS_SA=sa is not None)
    mlp_blocks = dict(BLOCK_NP=partial_block(tc.NP, block_cc), BLOCK_CC=block_cc, BLOCK_HG1=bh1, BLOCK_HG2=bh2,
                      BLOCK_HS=bhs, CD=CD)
    scal = (float(v_threshold), rest, rest)  # v_th, v_reset, the constant H_{-1}
    if persistent:
        _run(staa_fwd_persistent_kernel, (B,),
            x, pick(posc), pick(pxc), pick(pxs), pick(d1), pick(d2), gate, u, spikes, pick(v_seq), h_last,
            pick(pc), pick(phs), drop8, pick(h0c), *kept, *weights[:6], g2.key_weight, g2.key_bias, *weights[6:],
            T, B, C, P, tc.NP, *hidden, float(alpha), *scal,
            HAS_H0=h0c is not None, HAS_POS=posc is not None, **flags, STATS=keep_stats, HARD=v_reset is not None,
            STORE_V=store_v_seq, BLOCK_C=tc.BLOCK_C, BLOCK_P=tc.BLOCK_P, **mlp_blocks,
            num_warps=persistent_warps(tc),
        )
        return (spikes, h_last, v_seq, u, gate) + ((stats,) if keep_stats else ())
    # The per-step launches differ only in t and the first/last step's flags: their arguments are built once.
    has_mlp = gcx is not None or gch is not None or sa is not None
    mlp_head = (pick(pxc), pick(pxs), pick(pc), pick(phs), pick(d1), pick(d2), gate, drop8, *kept, *weights)
    mlp_tail = (B, C, P, tc.NP, *hidden, float(alpha))
    mlp = _Launch(staa_fwd_mlp_kernel, mlp_head, mlp_tail, **flags, STATS=keep_stats, **mlp_blocks,
                  num_warps=mlp_warps)
    elem_head = (x, pick(posc), pick(d1), pick(d2), gate, u, spikes, pick(v_seq), h_last, pick(pc), pick(phs),
                 g2.key_weight, g2.key_bias, drop8)
    middle = _Launch(staa_fwd_elem_kernel, elem_head, (B, C, P, tc.NP, *scal), FIRST=False, LAST=False, HAS_H0=False,
                     HAS_POS=posc is not None, **flags, HARD=v_reset is not None, STORE_V=store_v_seq,
                     BLOCK_C=tc.BLOCK_C, BLOCK_P=tc.BLOCK_P, CD=CD, num_warps=tc.num_warps)
    for t in range(T):
        if has_mlp:
            mlp((B,), t)
        first, last = t == 0, t == T - 1
        elem = middle if not (first or last) else middle.variant(FIRST=first, LAST=last,
                                                                 HAS_H0=h0c is not None and first)
        elem((B, tc.NP), h0c if h0c is not None and first else dummy, t)
    return (spikes, h_last, v_seq, u, gate) + ((stats,) if keep_stats else ())


def _zero_grads(blk):
    return None if blk is None else type(blk)(*(torch.zeros_like(p) for p in blk))


def _empty_backward(x, h0, pos, gcx, gch, sa, grad_h_last):
    """The backward of a zero-size call: H_{T-1} is H_{-1}, so grad_h0 is grad_h_last."""
    grad_h0 = None
    if h0 is not None:
        grad_h0 = grad_h_last.detach().to(h0.dtype, copy=True) if grad_h_last is not None else torch.zeros_like(h0)
    return (torch.zeros_like(x), grad_h0, torch.zeros_like(pos) if pos is not None else None,
            _zero_grads(gcx), _zero_grads(gch), _zero_grads(sa))


def _kept_reductions(stats, x, u, gate, posc, h0c, gcx, gch, sa, red) -> dict:
    """The forward's summed reductions ``{"ctx1", "xsum", "ctx2", "hsum"}`` (each ``[T*B, C]``
    contiguous, or None for a disabled block): the rows of ``stats``, or, without them,
    rebuilt by two plane reductions over x and u (H_{t-1} = reset(u_{t-1} * gate_{t-1}) needs no
    recurrence)."""
    T, B, C, P = x.shape
    rows = stat_rows(gcx is not None, gch is not None, sa is not None)
    if stats is not None:
        if tuple(stats.shape) != (len(rows), T, B, C):
            raise ValueError(f"stats must be the forward's kept reductions [K, T, B, C] = [{len(rows)}, {T}, {B}, {C}] "
                             f"({', '.join(rows) or 'none'} for these blocks), got {tuple(stats.shape)}")
        return {n: stats[rows[n]].detach().to(u.dtype).contiguous() if n in rows else None
                for n in ("ctx1", "xsum", "ctx2", "hsum")}
    out = dict(ctx1=None, xsum=None, ctx2=None, hsum=None)
    if gcx is not None or sa is not None:
        out["ctx1"], out["xsum"] = plane_reductions(x, posc, None, gcx, from_u=False, want_sum=sa is not None,
                                                    h0=None, **red)
    if gch is not None or sa is not None:
        out["ctx2"], out["hsum"] = plane_reductions(u, None, gate, gch, from_u=True, want_sum=sa is not None,
                                                    h0=h0c, **red)
    return out


class _BwdBuffers(NamedTuple):
    """Scratch and per-(t, b) factor buffers of the backward (``dummy`` for a disabled block)."""

    gv: Tensor  # [2, B, C, P] dL/dV of two consecutive steps
    part_a: Tensor  # [B, NP, C] per-tile sum_p gV u
    part_b: Tensor  # [B, NP, C] per-tile sum_p gV
    vecs: tuple  # gm, gctx1, gctx2: [B, C] each
    rows: tuple  # gz, gsum, pooled [T, B, C]; hid, ghid [T, B, CHS]; r, gq, gn, gnq [T, B, CHG] per GC block
    acc: tuple  # key-gradient partials: kw1 [T, B, NP, C], kb1 [T, B, NP], kw2, kb2
    gpos: Tensor  # [T, B, NP, C] position-encoding gradient partials


def _bwd_buffers(T, B, C, P, NP, hidden, has, cd, dev, dummy) -> _BwdBuffers:
    chg1, chg2, chs = hidden
    has_gcx, has_gch, has_sa, has_pos = has

    def e(on, *shape):
        return shape if on else None

    mlp = has_gcx or has_gch or has_sa
    shapes = (e(True, B, NP, C), e(True, B, NP, C), *(e(True, B, C) for _ in range(3)),
              e(has_sa, T, B, C), e(mlp, T, B, C), e(has_sa, T, B, C), e(has_sa, T, B, chs), e(has_sa, T, B, chs),
              *(e(has_gcx, T, B, chg1) for _ in range(4)), *(e(has_gch, T, B, chg2) for _ in range(4)),
              e(has_gcx, T, B, NP, C), e(has_gcx, T, B, NP), e(has_gch, T, B, NP, C), e(has_gch, T, B, NP),
              e(has_pos, T, B, NP, C))
    # The dL/dV carry has a storage of its own (the plane-sized one; the meter classes storages by the
    # shapes using them), every other buffer is a view of one more allocation.
    b = [torch.empty((2, B, C, P), dtype=cd, device=dev)] + [dummy if t is None else t for t in _carve(shapes, cd, dev)]
    return _BwdBuffers(b[0], b[1], b[2], tuple(b[3:6]), tuple(b[6:19]), tuple(b[19:23]), b[23])


def _weight_grads(bufs: _BwdBuffers, kept, pos, gcx, gch, sa, T, B, NP, C, hidden, dummy, CD):
    """Every parameter gradient from the loop's per-(t, b) factors and per-tile partials, by two
    launches: ``staa_bwd_weights_kernel`` sums each row range of every sum into per-range
    partials, ``staa_bwd_weights_sum_kernel`` adds the ranges (``weight_config``). Returns
    ``(grad_pos, grad_gcx, grad_gch, grad_sa)``."""
    outs = [None if blk is None else type(blk)(*(torch.empty_like(w) for w in blk)) for blk in (gcx, gch, sa)]
    grad_pos = torch.empty_like(pos) if pos is not None else None
    if pos is None and all(o is None for o in outs):
        return None, None, None, None
    g1, g2, s4 = (_or_dummy(o, cls, dummy) for o, cls in zip(outs, (GCParams, GCParams, SAParams)))
    chg1, chg2, chs = hidden
    t_pos = pos.shape[0] if pos is not None else T
    wc = weight_config(T, B, NP, C, hidden, t_pos, has_gc=gcx is not None or gch is not None,
                       has_pos=pos is not None, smem=device_smem(dummy.device), itemsize=dummy.element_size())
    tm = 2 * C * (chg1 + chg2 + chs)
    tv = (5 + t_pos) * C + 2 + 3 * (chg1 + chg2) + chs
    has_mat = gcx is not None or gch is not None or sa is not None
    part_m, part_v = _carve(((wc.NSM, tm) if has_mat else None, (wc.NSV, tv)), dummy.dtype, dummy.device)
    part_m = dummy if part_m is None else part_m
    block_h = mlp_config(C, *hidden)[1]
    flags = dict(HAS_POS=pos is not None, HAS_GCX=gcx is not None, HAS_GCH=gch is not None, HAS_SA=sa is not None)
    gz, gsum, pooled, hid, ghid = bufs.rows[:5]
    _run(staa_bwd_weights_kernel, wc.grid1,
         kept["ctx1"] if kept["ctx1"] is not None else dummy, kept["ctx2"] if kept["ctx2"] is not None else dummy,
         gsum, gz, pooled, hid, ghid, *bufs.rows[5:], *bufs.acc, bufs.gpos, part_m, part_v,
         T * B, T, t_pos, B * NP, C, *hidden, wc.NCT, wc.NSM, wc.RBM, wc.NSV, wc.RBV, **flags,
         BLOCK_N=WEIGHT_ROW_BLOCK, BLOCK_HD=wc.BLOCK_HD, BLOCK_WC=wc.BLOCK_WC, BLOCK_WV=wc.BLOCK_WV,
         BLOCK_HG1=block_h[0], BLOCK_HG2=block_h[1], BLOCK_HS=block_h[2], CD=CD, num_warps=WEIGHT_WARPS)
    # Outputs in the pass-2 job order: the six matrices, the C-sized vectors and PE, the rest.
    o = [g1.query_weight, g1.value_weight, g2.query_weight, g2.value_weight, s4.fc1_weight, s4.fc2_weight,
         g1.key_weight, g1.value_bias, g2.key_weight, g2.value_bias, s4.fc2_bias,
         grad_pos if grad_pos is not None else dummy,
         g1.key_bias, g1.query_bias, g1.norm_weight, g1.norm_bias, g2.key_bias, g2.query_bias, g2.norm_weight,
         g2.norm_bias, s4.fc1_bias]
    _run(staa_bwd_weights_sum_kernel, wc.grid2, part_m, part_v, *o, t_pos, C, *hidden, wc.NSM, wc.NSV, **flags,
         BLOCK_S=wc.BLOCK_S, BLOCK_E=wc.BLOCK_E, CD=CD, num_warps=4)
    return (grad_pos, *outs)


@_on_device
def staa_lif_backward(
    grad_spikes: Tensor,
    grad_h_last: Optional[Tensor],
    x: Tensor,
    drop: Optional[Tensor],
    h0: Optional[Tensor],
    pos: Optional[Tensor],
    gcx: Optional[GCParams],
    gch: Optional[GCParams],
    sa: Optional[SAParams],
    u: Tensor,
    gate: Tensor,
    *,
    alpha: float,
    v_threshold: float,
    v_reset: Optional[float],
    detach_reset: bool,
    surrogate: str,
    surrogate_param: float,
    path: Optional[str] = None,
    stats: Optional[Tensor] = None,
):
    """Backward of ``staa_lif_forward`` in reverse time, through the ``surrogate`` kind's dS/dV
    (``staa.surrogate``) with parameter ``surrogate_param``.

    Args:
        grad_spikes: dL/dspikes ``[T, B, C, P]``.
        grad_h_last: dL/dH_{T-1} ``[B, C, P]`` or ``None`` (the last state is not used).
        x, drop, h0, pos, gcx, gch, sa: the forward's inputs.
        u, gate: the tensors saved by the forward (``[T, B, C, P]``, ``[T, B, C]``).
        path: ``"per_step"``, ``"persistent"`` or ``"auto"``/``None`` (see ``loop_path``);
            both give the same gradients, whichever path the forward took.
        stats: the forward's kept reductions (``keep_stats=True``), or ``None``: then two
            plane reductions re-read x and u to rebuild them.

    Returns:
        ``(grad_x [T, B, C, P] x.dtype, grad_h0 [B, C, P] h0.dtype or None, grad_pos (pos's
        shape) or None, grad_gcx GCParams or None, grad_gch GCParams or None, grad_sa SAParams
        or None)``; parameter gradients are in the parameters' dtypes, rows ``>= T`` of
        grad_pos are zero.
    """
    _check(x, drop, h0, pos, gcx, gch, sa)
    kind = _surrogate_index(surrogate)
    T, B, C, P = x.shape
    if grad_h_last is not None and tuple(grad_h_last.shape) != (B, C, P):
        raise ValueError(f"grad_h_last must be [B, C, P] = [{B}, {C}, {P}] or None, got {tuple(grad_h_last.shape)}")
    cd, CD = _compute_dtype(x.dtype)
    dev = x.device
    if x.numel() == 0:
        return _empty_backward(x, h0, pos, gcx, gch, sa, grad_h_last)
    param_blocks = (gcx, gch, sa)
    x, drop8, h0c, posc, gcx, gch, sa = _prepare(x, drop, h0, pos, gcx, gch, sa, cd)
    u = u.detach().to(cd).contiguous()
    gate = gate.detach().to(cd).contiguous()
    grad_spikes = grad_spikes.contiguous()
    rest = _rest(v_reset)
    ghl = grad_h_last.detach().to(cd).contiguous() if grad_h_last is not None else None
    has_mlp = gcx is not None or gch is not None or sa is not None
    persistent = loop_path(C, P, path) == "persistent"
    tc = tile_config(C, P)
    red = dict(v_threshold=v_threshold, v_reset=v_reset, CD=CD)
    kept = _kept_reductions(stats, x, u, gate, posc, h0c, gcx, gch, sa, red)

    grad_x = torch.empty((T, B, C, P), dtype=x.dtype, device=dev)
    grad_h0 = torch.empty((B, C, P), dtype=cd, device=dev) if h0c is not None else None
    dummy = u
    hidden = _hidden(gcx, gch, sa)
    bufs = _bwd_buffers(T, B, C, P, tc.NP, hidden, (gcx is not None, gch is not None, sa is not None, posc is not None),
                        cd, dev, dummy)
    block_cc, (bh1, bh2, bhs), mlp_warps = mlp_config(C, *hidden)
    g1 = _or_dummy(gcx, GCParams, dummy)
    g2 = _or_dummy(gch, GCParams, dummy)
    weights = _mlp_weights(gcx, gch, sa, dummy)
    kept_args = tuple(kept[n] if kept[n] is not None else dummy for n in ("ctx1", "xsum", "ctx2", "hsum"))
    flags = dict(HAS_GCX=gcx is not None, HAS_GCH=gch is not None, HAS_SA=sa is not None)
    mlp_blocks = dict(BLOCK_NP=partial_block(tc.NP, block_cc), BLOCK_CC=block_cc, BLOCK_HG1=bh1, BLOCK_HG2=bh2,
                      BLOCK_HS=bhs, CD=CD)
    scal = (float(v_threshold), rest, rest, float(surrogate_param))  # v_th, v_reset, constant H_{-1}, p
    states = (h0c if h0c is not None else dummy, grad_h0 if grad_h0 is not None else dummy,
              ghl if ghl is not None else dummy)
    tile_args = (grad_spikes, x, posc if posc is not None else dummy, u, gate, drop8)
    key_args = (g1.key_weight, g1.key_bias, g2.key_weight, g2.key_bias, *bufs.acc, bufs.gpos, bufs.part_a, bufs.part_b)

    elem_launch = _Launch(staa_bwd_elem_kernel, (*tile_args, *bufs.vecs, grad_x, *key_args, *states),
                          (B, C, P, tc.NP, *scal), HAS_POS=posc is not None, **flags, HARD=v_reset is not None,
                          DETACH=bool(detach_reset), BLOCK_C=tc.BLOCK_C, BLOCK_P=tc.BLOCK_P, CD=CD,
                          num_warps=backward_elem_warps(tc))
    elem_variants = {}  # (finish, start) -> the launch with that step kind's keywords

    def elem(t, finish, start, gv_in, gv_out):
        # Specialise only where it matters: the surrogate where a step starts, h0 at t = 0,
        # grad_h_last at t = T.
        e = elem_variants.get((finish, start))
        if e is None:
            e = elem_variants[(finish, start)] = elem_launch.variant(
                FINISH=finish, START=start, SURROGATE=kind if start else 0,
                HAS_H0=h0c is not None and finish and not start, HAS_GHL=ghl is not None and not finish)
        e((B, tc.NP), gv_in, gv_out, t)

    if persistent:
        _run(staa_bwd_persistent_kernel, (B,),
            *tile_args, bufs.gv, *bufs.vecs, grad_x, *key_args, *kept_args, *weights, *bufs.rows, *states,
            T, B, C, P, tc.NP, *hidden, float(alpha), *scal,
            SURROGATE=kind, HAS_H0=h0c is not None, HAS_GHL=ghl is not None,
            HAS_POS=posc is not None, **flags, HARD=v_reset is not None, DETACH=bool(detach_reset),
            BLOCK_C=tc.BLOCK_C, BLOCK_P=tc.BLOCK_P, **mlp_blocks, num_warps=persistent_backward_warps(tc),
        )
    else:
        gv = bufs.gv.unbind(0)
        elem(T, False, True, gv[1], gv[0])  # dL/dV_{T-1} (dL/dH_{T-1} = grad_h_last or 0)
        mlp_head = (bufs.part_a, bufs.part_b, gate, drop8, *kept_args, *weights, *bufs.vecs, *bufs.rows)
        mlp = _Launch(staa_bwd_mlp_kernel, mlp_head, (B, C, P, tc.NP, *hidden, float(alpha)), **flags,
                      **mlp_blocks, num_warps=mlp_warps)
        for t in range(T - 1, -1, -1):
            k = (T - 1 - t) % 2
            if has_mlp:
                mlp((B,), t)
            elem(t, True, t > 0, gv[k], gv[1 - k])

    grad_pos, grad_gcx, grad_gch, grad_sa = _weight_grads(bufs, kept, pos, *param_blocks, T, B, tc.NP, C, hidden,
                                                          dummy, CD)
    if grad_h0 is not None:
        grad_h0 = grad_h0.to(h0.dtype)
    return grad_x, grad_h0, grad_pos, grad_gcx, grad_gch, grad_sa
