"""Memory traffic and operation count of the Triton route, measured on the CPU.

Runs one STAA-LIF layer (``staa.STAALIF(C, T, backend="triton")``, GC1, GC2, SA and the
position encoding on, TSRD off) forward and backward under ``TRITON_INTERPRET=1`` and counts,
separately for the forward and the backward launcher (``staa.kernels.launch.staa_lif_forward``
/ ``staa_lif_backward``):

launches
    Triton kernel launches (one per ``kernel[grid](...)`` call).
ops
    Other torch operations the launcher dispatches outside the kernels, seen by a
    ``TorchDispatchMode`` entered inside the launcher. Left out: views (every aten op whose
    schema marks it a view, ``OpOverload.is_view``, e.g. ``view``, ``select``, ``slice``, ``t``,
    ``expand``, ``detach``, plus ``aten._unsafe_view``, which ``reshape`` of a fresh result
    dispatches) and bare allocations (``aten.empty``, ``empty_like``, ``empty_strided``,
    ``new_empty``, ``new_empty_strided``): neither touches device memory nor launches
    anything. ``zeros``/``ones``/``full`` are counted (they fill memory). Nothing is counted
    while a kernel runs: the interpreter's own host copies of the arguments are not ours.
distinct bytes
    For each launch, the addresses its programs load or store, each counted once per launch,
    times the element size; summed over launches. What a GPU must move at least if every
    launch hit each address once.
total bytes
    Every load and store lane of every program, re-reads included (masked-off lanes left out).

Per kernel it also counts what bounds a launch's latency rather than its bytes (``chains``):

grid
    The launch's programs (the largest grid over the kernel's launches).
block loads per program
    The ``tl.load`` calls one program issues, each a block of addresses fetched together; the
    largest over the kernel's programs and launches. The interpreter runs a launch's programs one
    after another (``InterpreterBuilder.set_grid_idx`` marks each start), so this is the chain of
    memory round trips one program makes in order on a GPU, the part of its latency that more
    programs cannot hide.
atomics
    Atomic operations (``create_atomic_*``); the route must issue none (``measure`` raises).

``chain_rows`` measures these at a base shape and with B and the plane each x16
(``CHAIN_SHAPES``); ``--chains`` writes that table.

"Glue ops" are the torch operations the module itself dispatches around the op (drawing the
TSRD mask, reshapes, autograd), counted the same way, outside the launchers.

The meter also records host synchronisations on the route outside the kernels (during the
module's forward and backward, launchers included): calls of ``Tensor.item/tolist/numpy/cpu/
__array__/__bool__/__int__/__float__/__index__`` (patched on ``torch.Tensor``, so seen
everywhere, inside the custom op too) and of ``torch.cuda.synchronize``/``Stream.synchronize``/
``Event.synchronize``; and, where the dispatch modes see them (module glue and launchers, not the
few lines of ``staa/ops/_op.py`` around the launcher call), aten ops that read a device value on
the host (``_local_scalar_dense``, ``item``, ``equal``, ``is_nonzero``, ``allclose``) or whose
output size depends on device values (``nonzero``, ``masked_select``, ``unique``, boolean
indexing, ``repeat_interleave`` without ``output_size``). A copy by ``.to(device)`` cannot be
told from a no-op on a CPU-only run (every tensor is on the CPU) and is not detected.

The counts come from hooks on triton's interpreter (``GridExecutor.__call__`` and the
``InterpreterBuilder`` load/store/atomic methods of ``triton/runtime/interpreter.py``), which
differ between triton releases. ``Meter`` raises ``MeterHookError`` when one is missing, when
a calibration kernel with known traffic is not counted exactly, or when a launch records no
traffic; it never reports zeros.

    TRITON_INTERPRET=1 python benchmarks/meter.py                 # -> benchmarks/results/traffic.{md,json}
    TRITON_INTERPRET=1 python benchmarks/meter.py --shapes test --dtypes float32 --out -   # one row, to stdout
    TRITON_INTERPRET=1 python benchmarks/meter.py --chains        # -> benchmarks/results/chains.{md,json}
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import traceback
from collections import Counter

if "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from _machine import cpu_name  # noqa: E402  (benchmarks/ is on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# name -> (T, B, C, spatial...)
SHAPES = {
    "cifar": (4, 2, 64, 16, 16),
    "deep": (4, 2, 256, 4, 4),
    "deep-b32": (4, 32, 256, 4, 4),  # the deep shape at a training batch: weights per neuron-step shrink as 1/B
    "fc": (4, 2, 1024),
    "test": (4, 1, 8, 3, 3),  # the shape tests/test_meter.py re-measures against the committed table
}
# The shapes of the chain table: a base where every reduction whose length grows with B or the
# plane spans more than one block (2 plane tiles per sample in the MLP kernels' tile sums; T*B = 18
# rows, 2 blocks of 16, in the weight-matrix and bias sums; T*B*NP = 36 key-gradient rows in 2 row
# ranges; B*NP = 18 rows, 2 blocks, per position-encoding row), then B x16 and the plane x16
# (17x17 -> 68x68). T*B is kept small because the interpreter's time grows with T*B*NP.
CHAIN_SHAPES = {
    "base": (2, 9, 16, 17, 17),
    "B x16": (2, 144, 16, 17, 17),
    "P x16": (2, 9, 16, 68, 68),
}
CHAIN_LIMIT = 1.5  # largest allowed growth of a kernel's block loads per program at x16
PERSISTENT_KERNELS = ("staa_fwd_persistent_kernel", "staa_bwd_persistent_kernel")
DTYPES = ("float32", "bfloat16")
PATHS = ("per_step", "persistent")
PHASES = ("forward", "backward")
FIGURES = ("launches", "ops", "distinct_bytes", "total_bytes", "plane_bytes")


class MeterHookError(RuntimeError):
    """The interpreter internals the meter hooks are missing or do not see the kernels' traffic."""


class AtomicsError(RuntimeError):
    """An atomic operation ran on the Triton route (the gradients must not depend on program order)."""


aten = torch.ops.aten
ALLOCATIONS = frozenset({aten.empty.memory_format, aten.empty_like.default, aten.empty_strided.default,
                         aten.new_empty.default, aten.new_empty_strided.default})
EXTRA_VIEWS = frozenset({aten._unsafe_view.default})
SYNC_OPS = frozenset(getattr(aten, n) for n in (
    "_local_scalar_dense", "item", "equal", "is_nonzero", "nonzero", "nonzero_static", "masked_select",
    "_unique", "_unique2", "unique_dim", "unique_consecutive", "allclose") if hasattr(aten, n))
SYNC_METHODS = ("item", "tolist", "numpy", "cpu", "__array__", "__bool__", "__int__", "__float__", "__index__")


def _packet(func):
    return getattr(func, "overloadpacket", func)


def _composite(func) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd")


def _excluded(func) -> str | None:
    """Why ``func`` is not counted as an operation (None: it is counted)."""
    if func in ALLOCATIONS:
        return "allocation"
    if getattr(func, "is_view", False) or func in EXTRA_VIEWS:
        return "view"
    return None


def _is_sync_op(func, args, kwargs) -> bool:
    if func in SYNC_OPS or _packet(func) in {_packet(f) for f in SYNC_OPS}:
        return True
    if _packet(func) in (aten.index, aten._unsafe_index, aten.index_put, aten.index_put_):
        idx = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (idx or ()))
    if _packet(func) is aten.repeat_interleave:
        return kwargs.get("output_size") is None and (len(args) < 4 or args[3] is None)
    return False


def _where() -> str:
    """The innermost frame of staa's own code (or the caller's) on the stack."""
    frames = traceback.extract_stack()[:-2]
    mine = [f for f in frames if os.sep + "staa" + os.sep in f.filename and "meter.py" not in f.filename]
    f = (mine or frames)[-1]
    path = f.filename
    for marker in (os.sep + "src" + os.sep, os.sep + "kernels" + os.sep, os.sep + "site-packages" + os.sep):
        if marker in path:
            path = path[path.index(marker) + 1:]
            break
    return f"{path}:{f.lineno} ({f.name}): {(f.line or '').strip()}"


class _Tally:
    def __init__(self):
        self.launches = 0
        self.kernels = Counter()
        self.ops = Counter()
        self.excluded = Counter()
        self.distinct_bytes = 0
        self.total_bytes = 0
        self.plane_bytes = 0  # distinct bytes in plane storages (see _storages)
        self.kernel_bytes = {}  # kernel -> [distinct, plane] bytes over its launches
        self.chains = {}  # kernel -> dict(launches, grid, programs, max_loads)
        self.atomics = Counter()  # kernel -> atomic operations

    def figures(self) -> dict:
        return dict(launches=self.launches, ops=sum(self.ops.values()), distinct_bytes=self.distinct_bytes,
                    total_bytes=self.total_bytes, plane_bytes=self.plane_bytes)

    def detail(self) -> dict:
        return dict(kernels=dict(sorted(self.kernels.items())), ops=dict(sorted(self.ops.items())),
                    kernel_bytes={k: dict(distinct=v[0], plane=v[1]) for k, v in sorted(self.kernel_bytes.items())},
                    chains=dict(sorted(self.chains.items())), atomics=dict(sorted(self.atomics.items())),
                    excluded=dict(sorted(self.excluded.items())))


class _OpMode(TorchDispatchMode):
    """Counts the torch operations dispatched while it is on, except inside a launch."""

    def __init__(self, meter, tally_fn, phase):
        super().__init__()
        self.meter = meter
        self.tally_fn = tally_fn
        self.phase = phase

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        m = self.meter
        if m.phase != self.phase:
            # An op of a launcher reaches this (outer) mode again after the launcher's own mode
            # counted it: the module runs the op's body directly in eager mode, not behind the
            # custom op's dispatch.
            return func(*args, **kwargs)
        if not m.in_launch:
            name = str(_packet(func))
            if not name.startswith("staa.") and _composite(func):
                # Below autograd (inside the custom op) composite ops such as linear, matmul or to
                # reach the mode whole; count what they decompose into (a ``to`` may be a copy).
                with self:
                    r = func.decompose(*args, **kwargs)
                if r is not NotImplemented:
                    return r
            if name.startswith("staa."):  # the op itself (seen by the outer mode): its inside is counted apart
                pass
            else:
                why = _excluded(func)
                tally = self.tally_fn()
                if why is None:
                    tally.ops[str(func)] += 1
                else:
                    tally.excluded[f"{why}: {func}"] += 1
                if _is_sync_op(func, args, kwargs):
                    m.syncs.append(f"aten {func} at {_where()}")
        return func(*args, **kwargs)


class Meter:
    """Installs the interpreter hooks (``with Meter() as m``) and counts ``m.measure(...)``."""

    def __init__(self, calibrate: bool = True, count_bytes: bool = True):
        """``count_bytes=False``: count launches, grids, block loads and atomics only (much faster
        on large shapes; the byte figures are then 0)."""
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise MeterHookError("the meter needs TRITON_INTERPRET=1 set before triton is imported")
        self.calibrate_on_enter = calibrate
        self.count_bytes = count_bytes
        self.in_launch = False
        self.watching = False
        self.syncs: list[str] = []
        self.tallies: dict[str, _Tally] = {}
        self.phase: str | None = None
        self._launch = None
        self._undo = []
        self.plane_shape = None  # (B, C, P) of the measured layer: storages of [..., B, C, P] tensors are planes

    # ------------------------------------------------------------------ hooks
    def _hook_targets(self):
        try:
            from triton.runtime import interpreter as interp
        except Exception as exc:  # pragma: no cover - triton missing altogether
            raise MeterHookError(f"cannot import triton.runtime.interpreter: {exc!r}") from exc
        targets = [(interp, "GridExecutor", "__call__")] + [
            (interp, "InterpreterBuilder", n) for n in
            ("create_masked_load", "create_masked_store", "create_atomic_rmw", "create_atomic_cas", "set_grid_idx",
             "set_grid_dim")]
        missing = [f"{c}.{n}" for mod, c, n in targets
                   if not hasattr(mod, c) or not callable(getattr(getattr(mod, c), n, None))]
        if missing:
            import triton
            raise MeterHookError(
                f"triton {triton.__version__}: the meter's hook targets are missing from "
                f"triton/runtime/interpreter.py: {', '.join(missing)}; adapt benchmarks/meter.py to this release")
        return interp

    def __enter__(self):
        interp = self._hook_targets()
        meter = self
        GE, IB = interp.GridExecutor, interp.InterpreterBuilder

        def patch(cls, name, make):
            orig = cls.__dict__[name] if name in cls.__dict__ else getattr(cls, name)
            setattr(cls, name, make(orig))
            self._undo.append((cls, name, orig))

        def grid_call(orig):
            def __call__(ex, *args, **kwargs):
                if meter.in_launch:
                    raise MeterHookError("nested launch")
                name = getattr(ex.fn, "__name__", "?")
                meter.in_launch = True
                meter._launch = dict(addrs={}, total=0, storages=meter._storages(args, kwargs) if meter.count_bytes
                                     else [], grid=None, loads=0, max_loads=0, programs=0, atomics=0)
                try:
                    return orig(ex, *args, **kwargs)
                finally:
                    rec, meter._launch = meter._launch, None
                    meter.in_launch = False
                    meter._finish_launch(name, rec)
            return __call__

        def load(orig):
            def create_masked_load(b, ptrs, mask, *args, **kwargs):
                meter._access(ptrs, mask, 1)
                meter._launch["loads"] += 1
                return orig(b, ptrs, mask, *args, **kwargs)
            return create_masked_load

        def grid_idx(orig):
            def set_grid_idx(b, *idx):
                meter._next_program()
                return orig(b, *idx)
            return set_grid_idx

        def grid_dim(orig):
            def set_grid_dim(b, *dims):
                if meter._launch is not None:
                    meter._launch["grid"] = [int(d) for d in dims]
                return orig(b, *dims)
            return set_grid_dim

        def atomic(orig, name):
            def counted(b, *args, **kwargs):
                if meter._launch is not None:
                    meter._launch["atomics"] += 1
                return orig(b, *args, **kwargs)
            counted.__name__ = name
            return counted

        def store(orig):
            def create_masked_store(b, ptrs, value, mask, *args, **kwargs):
                meter._access(ptrs, mask, 1)
                return orig(b, ptrs, value, mask, *args, **kwargs)
            return create_masked_store

        def rmw(orig):
            def create_atomic_rmw(b, op, ptr, val, mask, *args, **kwargs):
                meter._access(ptr, mask, 2)  # read and write
                return orig(b, op, ptr, val, mask, *args, **kwargs)
            return atomic(create_atomic_rmw, "create_atomic_rmw")

        def cas(orig):
            def create_atomic_cas(b, ptr, *args, **kwargs):
                meter._access(ptr, None, 2)
                return orig(b, ptr, *args, **kwargs)
            return atomic(create_atomic_cas, "create_atomic_cas")

        patch(GE, "__call__", grid_call)
        patch(IB, "create_masked_load", load)
        patch(IB, "create_masked_store", store)
        patch(IB, "create_atomic_rmw", rmw)
        patch(IB, "create_atomic_cas", cas)
        for name in ("create_atomic_load", "create_atomic_store", "create_atomic_poll"):  # newer releases
            if callable(getattr(IB, name, None)):
                patch(IB, name, lambda orig, _n=name: atomic(orig, _n))
        patch(IB, "set_grid_idx", grid_idx)
        patch(IB, "set_grid_dim", grid_dim)
        self._skip_repatching(interp)
        self._patch_cuda_sync()
        try:
            if self.calibrate_on_enter:
                self.calibrate()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        while self._undo:
            obj, name, orig = self._undo.pop()
            setattr(obj, name, orig)
        return False

    def _patch_cuda_sync(self):
        meter = self

        def wrap(orig, label):
            def sync(*args, **kwargs):
                if not meter.in_launch and meter.watching:
                    meter.syncs.append(f"{label} at {_where()}")
                return orig(*args, **kwargs)
            return sync

        for obj, name in ((torch.cuda, "synchronize"), (torch.cuda.Stream, "synchronize"),
                          (torch.cuda.Event, "synchronize")):
            orig = getattr(obj, name)
            setattr(obj, name, wrap(orig, f"torch.cuda.{getattr(obj, '__name__', 'cuda')}.{name}"))
            self._undo.append((obj, name, orig))
        # Tensor methods that read values on the host. Patched on the class (not a torch-function
        # mode, which is off inside custom ops), so they are seen everywhere outside launches.
        for name in SYNC_METHODS:
            orig = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, wrap(orig, f"Tensor.{name}"))
            self._undo.append((torch.Tensor, name, orig))

    def _skip_repatching(self, interp):
        """Speed only: the interpreter re-patches triton.language on every call of a
        ``@triton.jit`` helper inside a kernel (``_patch_lang``, about a third of its time here).
        Within a launch the language modules are already patched, and the nested scopes are never
        restored, so a repeated patch of the same modules changes nothing: skip it."""
        orig = getattr(interp, "_patch_lang", None)
        scope_cls = getattr(interp, "_LangPatchScope", None)
        if orig is None or scope_cls is None:
            return  # another release: no shortcut, the counts are the same
        meter = self

        def _patch_lang(fn):
            rec = meter._launch
            langs = {id(v) for v in fn.__globals__.values()
                     if isinstance(v, type(os)) and v in (interp.tl, interp.tl.core)}
            if rec is not None and langs and langs <= rec.setdefault("patched", set()):
                return scope_cls()  # nothing to restore
            scope = orig(fn)
            if rec is not None:
                rec["patched"] |= langs
            return scope

        interp._patch_lang = _patch_lang
        self._undo.append((interp, "_patch_lang", orig))

    def _next_program(self):
        """A program of the current launch starts: close the previous one's load count."""
        rec = self._launch
        if rec is None:
            raise MeterHookError("a program started outside a counted launch: the launch hook is not live")
        if rec["programs"]:
            rec["max_loads"] = max(rec["max_loads"], rec["loads"])
        rec["loads"] = 0
        rec["programs"] += 1

    def _access(self, ptrs, mask, times: int):
        rec = self._launch
        if rec is None:
            raise MeterHookError("a kernel load/store ran outside a counted launch: the launch hook is not live")
        if not self.count_bytes:
            rec["total"] += 1  # only whether the launch touched memory at all
            return
        p = np.asarray(ptrs.data)
        if mask is not None:
            m = np.broadcast_to(np.asarray(mask.data, dtype=bool), p.shape)
            p = p[m]
        p = p.reshape(-1).astype(np.uint64, copy=False)
        size = max(1, ptrs.get_element_ty().primitive_bitwidth // 8)
        rec["addrs"].setdefault(size, []).append(p)
        rec["total"] += times * size * p.size

    def _storages(self, args, kwargs):
        """(start, end, plane?) of the storages of a launch's tensor arguments; a storage is a
        plane storage when a tensor of shape ``[..., B, C, P]`` uses it (x, u, spikes, gradients,
        h_last, the dL/dV carry), not weights, partials or ``[T, B, C]`` vectors."""
        out = {}
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, torch.Tensor):
                st = a.untyped_storage()
                plane = self.plane_shape is not None and a.dim() >= 3 and tuple(a.shape[-3:]) == self.plane_shape
                old = out.get(st.data_ptr())
                out[st.data_ptr()] = (st.data_ptr(), st.data_ptr() + st.nbytes(), plane or bool(old and old[2]))
        return sorted(out.values())

    def _finish_launch(self, name, rec):
        rec["max_loads"] = max(rec["max_loads"], rec["loads"])
        distinct = plane = 0
        starts = np.array([s for s, _, _ in rec["storages"]], dtype=np.uint64)
        ends = np.array([e for _, e, _ in rec["storages"]], dtype=np.uint64)
        is_plane = np.array([p for _, _, p in rec["storages"]], dtype=bool)
        for size, parts in rec["addrs"].items():
            u = np.unique(np.concatenate(parts))
            distinct += size * u.size
            if starts.size:
                i = np.searchsorted(starts, u, side="right").astype(np.int64) - 1
                ok = i >= 0
                inside = np.zeros(u.size, dtype=bool)
                inside[ok] = (u[ok] < ends[i[ok]]) & is_plane[i[ok]]
                plane += size * int(inside.sum())
        if (distinct if self.count_bytes else rec["total"]) == 0:
            raise MeterHookError(f"launch of {name} recorded no loads or stores: the load/store hooks are not live")
        if rec["grid"] is None or rec["programs"] != int(np.prod(rec["grid"])):
            raise MeterHookError(f"launch of {name}: {rec['programs']} programs counted for grid {rec['grid']}: "
                                 "the set_grid_idx/set_grid_dim hooks are not live")
        if self.phase is None:
            raise MeterHookError(f"launch of {name} outside a metered phase")
        t = self.tallies[self.phase]
        t.launches += 1
        t.kernels[name] += 1
        t.distinct_bytes += int(distinct)
        t.total_bytes += int(rec["total"])
        t.plane_bytes += int(plane)
        kb = t.kernel_bytes.setdefault(name, [0, 0])
        kb[0] += int(distinct)
        kb[1] += int(plane)
        ch = t.chains.setdefault(name, dict(launches=0, grid=rec["grid"], programs=0, max_loads=0))
        ch["launches"] += 1
        if int(np.prod(rec["grid"])) > ch["programs"]:
            ch["programs"], ch["grid"] = int(np.prod(rec["grid"])), rec["grid"]
        ch["max_loads"] = max(ch["max_loads"], rec["max_loads"])
        if rec["atomics"]:
            t.atomics[name] += rec["atomics"]

    # ------------------------------------------------------------------ calibration
    def calibrate(self):
        """Run a kernel with known traffic; raise if the hooks do not count it exactly.

        ``n`` float32 elements over ``G`` programs: two masked loads of ``x`` (a re-read) and a
        masked store to ``y``; per program an unmasked load of the scalar ``s`` (the same address
        in every program), an unmasked load of one int8 flag and an unmasked store of one
        float32. Distinct bytes ``8 n + 4 + G + 4 G``; total ``12 n + 4 G + G + 4 G``."""
        import triton
        import triton.language as tl

        @triton.jit
        def _meter_calibration_kernel(x_ptr, y_ptr, s_ptr, f_ptr, w_ptr, n, BLOCK: tl.constexpr):
            pid = tl.program_id(0)
            offs = pid * BLOCK + tl.arange(0, BLOCK)
            ok = offs < n
            a = tl.load(x_ptr + offs, mask=ok, other=0.0)
            b = tl.load(x_ptr + offs, mask=ok, other=0.0)
            tl.store(y_ptr + offs, a + b, mask=ok)
            s = tl.load(s_ptr)
            f = tl.load(f_ptr + pid).to(tl.float32)
            tl.store(w_ptr + pid, s + f)

        n, block = 37, 16
        grid = triton.cdiv(n, block)
        x = torch.arange(n, dtype=torch.float32)
        y = torch.zeros(n, dtype=torch.float32)
        s = torch.full((1,), 0.5)
        f = torch.arange(grid, dtype=torch.int8)
        w = torch.zeros(grid)
        @triton.jit
        def _meter_atomic_calibration_kernel(c_ptr):
            tl.atomic_add(c_ptr + tl.program_id(0) * 0, 1.0)

        counter = torch.zeros(1)
        saved, self.phase = self.phase, "_calibration"
        saved_bytes, self.count_bytes = self.count_bytes, True
        self.tallies["_calibration"] = _Tally()
        try:
            _meter_calibration_kernel[(grid,)](x, y, s, f, w, n, BLOCK=block)
            t = self.tallies.pop("_calibration")
            self.tallies["_calibration"] = _Tally()
            _meter_atomic_calibration_kernel[(3,)](counter)
            ta = self.tallies.pop("_calibration")
        finally:
            self.phase = saved
            self.count_bytes = saved_bytes
            self.tallies.pop("_calibration", None)
        want = dict(launches=1, distinct_bytes=8 * n + 4 + grid + 4 * grid, total_bytes=12 * n + 9 * grid)
        got = {k: t.figures()[k] for k in want}
        if got != want or not torch.equal(y, 2 * x) or not torch.equal(w, f.float() + 0.5):
            raise MeterHookError(f"calibration kernel counted {got}, expected {want}: the interpreter's "
                                 "load/store path no longer goes through the hooked methods")
        chain = t.chains.get("_meter_calibration_kernel")
        want_chain = dict(launches=1, grid=[grid, 1, 1], programs=grid, max_loads=4)
        if chain != want_chain:
            raise MeterHookError(f"calibration kernel's programs and loads counted {chain}, expected {want_chain}: "
                                 "the interpreter no longer starts programs through set_grid_idx")
        if sum(ta.atomics.values()) != 3 or float(counter[0]) != 3.0:
            raise MeterHookError(f"atomic calibration kernel counted {dict(ta.atomics)} atomics, expected 3: "
                                 "the interpreter's atomics no longer go through the hooked methods")

    # ------------------------------------------------------------------ measurement
    @contextlib.contextmanager
    def _phase(self, name):
        saved, self.phase = self.phase, name
        self.tallies.setdefault(name, _Tally())
        try:
            with _OpMode(self, lambda: self.tallies[name], name):
                yield
        finally:
            self.phase = saved

    def _wrap_launchers(self, launch):
        meter = self
        saved = {}
        for fn_name, phase in (("staa_lif_forward", "forward"), ("staa_lif_backward", "backward")):
            orig = getattr(launch, fn_name)
            saved[fn_name] = orig

            def wrapped(*args, _orig=orig, _phase=phase, **kwargs):
                with meter._phase(_phase):
                    return _orig(*args, **kwargs)

            setattr(launch, fn_name, wrapped)
        return saved

    def measure(self, shape, dtype: str, path: str, seed: int = 0, blocks: dict | None = None) -> dict:
        """One layer ``STAALIF(C, T, backend="triton", **blocks)`` forward + backward on ``x`` of
        ``shape``; ``blocks`` switches GC, PE and SA (``gc``/``pe``/``sa``; all on by default)."""
        import staa
        from staa.kernels import launch

        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        T, B, C = shape[:3]
        dt = getattr(torch, dtype)
        torch.manual_seed(seed)
        m = staa.STAALIF(C, T, tsrd=0.0, backend="triton", **(blocks or {}))
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        m.train()
        g = torch.Generator().manual_seed(seed + 1)
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * 0.8 + 0.35).to(dt).requires_grad_(True)
        gy = torch.randn(shape, generator=g, dtype=torch.float64).to(dt)
        params = [x] + list(m.parameters())
        self.plane_shape = (B, C, int(np.prod(shape[3:])))
        weight_bytes = sum(p.numel() * p.element_size() for p in m.parameters())
        saved_env = os.environ.get(launch.PATH_ENV)
        os.environ[launch.PATH_ENV] = path
        saved = self._wrap_launchers(launch)
        try:
            if self.count_bytes:
                m.reset()
                self.tallies = {}
                self.phase = "_warmup"
                m(x)  # materialises nothing here (channels given), but warms the interpreter's caches
            self.tallies, self.syncs = {"glue": _Tally()}, []
            self.phase = "glue"
            m.reset()
            self.watching = True
            try:
                with _OpMode(self, lambda: self.tallies["glue"], "glue"):
                    y = m(x)
                    grads = torch.autograd.grad(y, params, gy)
            finally:
                self.watching = False
                self.phase = None
        finally:
            for k, v in saved.items():
                setattr(launch, k, v)
            if saved_env is None:
                os.environ.pop(launch.PATH_ENV, None)
            else:
                os.environ[launch.PATH_ENV] = saved_env
        for ph in PHASES:
            if ph not in self.tallies or self.tallies[ph].launches == 0:
                raise MeterHookError(f"no Triton launch counted in the {ph}: did the route reach the kernels?")
        if any(gr is None for gr in grads):
            raise RuntimeError("a gradient is missing")
        atomics = {ph: dict(self.tallies[ph].atomics) for ph in PHASES if self.tallies[ph].atomics}
        if atomics:
            raise AtomicsError(f"atomic operations ran on the Triton route: {atomics}")
        kernels = {ph: sorted(self.tallies[ph].kernels) for ph in PHASES}
        expect = "persistent" if path == "persistent" else "elem"
        if not all(any(expect in k for k in ks) for ks in kernels.values()):
            raise RuntimeError(f"path {path!r} not taken: kernels {kernels}")
        n = int(np.prod(shape))
        row = dict(shape=list(shape), dtype=dtype, path=path, neuron_steps=n, weight_bytes=weight_bytes,
                   blocks=dict(blocks or {}))
        for ph in PHASES:
            row[ph] = self.tallies[ph].figures()
            row[ph + "_detail"] = self.tallies[ph].detail()
        row["total"] = {k: row["forward"][k] + row["backward"][k] for k in FIGURES}
        row["per_neuron_step"] = {ph: {k: row[ph][k] / n for k in ("distinct_bytes", "total_bytes", "plane_bytes")}
                                  for ph in PHASES + ("total",)}
        e = torch.empty((), dtype=dt).element_size()
        row["plane_floor"] = {k: plane_floor(k, e, T) for k in ("op", path)}
        row["weight_bytes_per_neuron_step"] = 3 * weight_bytes / n  # read fwd, read + gradient write bwd
        row["glue_ops"] = self.tallies["glue"].figures()["ops"]
        row["glue_detail"] = self.tallies["glue"].detail()
        row["syncs"] = sorted(set(self.syncs))
        row["chains"] = {ph: self.tallies[ph].detail()["chains"] for ph in PHASES}
        return row


# ----------------------------------------------------------------------------- chains
def kernel_chains(row) -> dict:
    """``{kernel: dict(launches, grid, programs, max_loads)}`` of one measured row, forward and
    backward together (a kernel run in both phases: launches added, the larger grid and count)."""
    out = {}
    for ph in PHASES:
        for k, c in row["chains"][ph].items():
            o = out.setdefault(k, dict(launches=0, grid=c["grid"], programs=0, max_loads=0))
            o["launches"] += c["launches"]
            if c["programs"] > o["programs"]:
                o["programs"], o["grid"] = c["programs"], c["grid"]
            o["max_loads"] = max(o["max_loads"], c["max_loads"])
    return dict(sorted(out.items()))


def chain_rows(paths=PATHS, shapes=None, dtype="float32", log=sys.stderr, count_bytes=False) -> list:
    """Per loop path and chain shape (``CHAIN_SHAPES``): the measured row's per-kernel chains
    (``kernel_chains``), as ``[dict(path, name, shape, kernels)]``. Raises ``AtomicsError`` if an
    atomic operation ran. This is what a cost model reads: launches, grid and the largest block-load
    count per program of every kernel at a shape."""
    shapes = shapes or CHAIN_SHAPES
    rows = []
    with Meter(count_bytes=count_bytes) as meter:
        for path in paths:
            for name, shape in shapes.items():
                t0 = datetime.datetime.now()
                row = meter.measure(shape, dtype, path)
                rows.append(dict(path=path, name=name, shape=list(shape), dtype=dtype, kernels=kernel_chains(row)))
                print(f"chains {path} {name} {shape_label(shape)}: "
                      f"{(datetime.datetime.now() - t0).total_seconds():.0f} s", file=log, flush=True)
    return rows


def chain_growth(rows, limit=CHAIN_LIMIT) -> list:
    """The kernels whose block loads per program grow more than ``limit`` times from the base
    shape to B x16 or to the plane x16 (only B x16 for the persistent kernels, which own one
    sample's whole plane by design), as readable lines; empty when none does."""
    by = {(r["path"], r["name"]): r["kernels"] for r in rows}
    bad = []
    for path in sorted({r["path"] for r in rows}):
        base = by[(path, "base")]
        for name in ("B x16", "P x16"):
            for k, c in by.get((path, name), {}).items():
                if name == "P x16" and k in PERSISTENT_KERNELS:
                    continue
                b = base.get(k)
                if b is None:
                    bad.append(f"{path} {name}: {k} does not run at the base shape")
                elif c["max_loads"] > limit * b["max_loads"]:
                    bad.append(f"{path} {name}: {k} issues {c['max_loads']} block loads per program, "
                               f"{c['max_loads'] / b['max_loads']:.2f}x the base shape's {b['max_loads']}")
    return bad


def _grid_label(grid) -> str:
    g = list(grid)
    while len(g) > 1 and g[-1] == 1:
        g.pop()
    return "x".join(str(v) for v in g)


def _chain_rows_parallel(paths, jobs: int) -> list:
    """``chain_rows`` with the loop paths measured in up to ``jobs`` processes side by side."""
    import concurrent.futures

    def one(path):
        env = dict(os.environ, TRITON_INTERPRET="1")
        res = subprocess.run([sys.executable, os.path.abspath(__file__), "--chains", "--paths", path, "--out", "-"],
                             capture_output=True, text=True, env=env)
        sys.stderr.write(res.stderr)
        if res.returncode != 0:
            raise RuntimeError(f"chains of the {path} path failed:\n{res.stderr[-4000:]}")
        return json.loads(res.stdout.strip().splitlines()[-1])["results"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        return [r for rows in pool.map(one, paths) for r in rows]


def chain_markdown(rows, info: dict, command: str) -> str:
    out = ["# Launches, grids and block loads per program of the Triton route (CPU meter)", ""]
    dirty = (" Uncommitted changes in the measured tree: " + ", ".join(info["dirty"]) + ".") if info["dirty"] else ""
    out += [f"Measured by `{command}` on {info['cpu']} ({info['machine']}), Python {info['python']}, "
            f"torch {info['torch']}, triton {info['triton']} (interpreter), {info['date']}; "
            f"commit {info['commit']} (kernels/ last changed in {info['kernels_commit']}).{dirty}", ""]
    out += ["One layer `STAALIF(C, T, backend=\"triton\")` (GC1, GC2, SA, position encoding; TSRD off), float32, "
            "forward + backward, the loop path forced by `STAA_TRITON_PATH`, under `TRITON_INTERPRET=1`. "
            "Counts are exact and do not depend on the machine. Per kernel: **launches** in one forward + "
            "backward; **grid** of its largest launch; **loads/program**: the largest number of `tl.load` "
            "calls (blocks of addresses) one program issues, over all its programs and launches: the chain of "
            "memory round trips a GPU cannot spread over more programs. No atomic operation ran (the meter "
            "raises otherwise).", "",
            "Shapes `[T, B, C, HxW]`: " + ", ".join(f"{n} `{shape_label(s)}`" for n, s in CHAIN_SHAPES.items()) +
            ". At the base every reduction whose length grows with B or the plane spans more than one block: "
            "2 plane tiles per sample (summed by the MLP kernels), T*B = 18 rows of the weight-matrix and bias "
            "sums (2 blocks of 16), T*B*NP = 36 key-gradient rows (2 row ranges), B*NP = 18 rows (2 blocks) "
            "per position-encoding row. `tests/test_meter.py` fails when a kernel's loads/program grow "
            f"more than {CHAIN_LIMIT}x at B x16 or P x16 (the persistent kernels: at B x16 only; they own one "
            "sample's plane by design).", ""]
    for path in sorted({r["path"] for r in rows}):
        rs = {r["name"]: r["kernels"] for r in rows if r["path"] == path}
        names = list(CHAIN_SHAPES)
        out += [f"## {path}", "",
                "| kernel | " + " | ".join(f"{n}: launches / grid / loads per program" for n in names) +
                " | growth B x16 | growth P x16 |",
                "|---|" + "---|" * (len(names) + 2)]
        for k in rs["base"]:
            cells = []
            for n in names:
                c = rs[n].get(k)
                cells.append("-" if c is None else
                             f"{c['launches']} / {_grid_label(c['grid'])} / "
                             f"{c['max_loads']}")
            base = rs["base"][k]["max_loads"]
            grow = [f"{rs[n][k]['max_loads'] / base:.2f}x" if k in rs[n] and base else "-" for n in names[1:]]
            out.append(f"| `{k}` | " + " | ".join(cells) + " | " + " | ".join(grow) + " |")
        out.append("")
    bad = chain_growth(rows)
    out += ["Growth above the limit: " + ("none." if not bad else "")] + [f"- {b}" for b in bad]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- floors
def plane_floor(kind: str, elem: int, T: int) -> dict:
    """Plane traffic (bytes per neuron-step) a design must move at least, forward and backward,
    with ``elem`` the input's element size and a float32 state (docs/triton.md derives these).

    ``op``: read x, write spikes and u, write h_last once (fwd); read grad, x and u, write
    grad_x (bwd). ``per_step``: x read twice (the batched reduction, then each step), u[t-1] read
    back in steps 1..T-1 (fwd); grad, x, u read once, grad_x written, dL/dV carried between the
    T launches (written and read back T-1 times), the forward's per-step reductions kept (bwd). ``persistent``: x
    read twice (the batched reduction is a separate launch); u[t-1], and the dL/dV carry,
    re-read inside the one launch (counted once; the carry is two planes)."""
    e = elem
    fwd = {"op": 2 * e + 4 + 4 / T, "per_step": 3 * e + 8, "persistent": 3 * e + 4 + 4 / T}[kind]
    bwd = {"op": 3 * e + 4, "per_step": 3 * e + 4 + 8 * (T - 1) / T, "persistent": 3 * e + 4 + 8 / T}[kind]
    return dict(forward=fwd, backward=bwd, total=fwd + bwd)


# ----------------------------------------------------------------------------- report
def shape_label(shape) -> str:
    T, B, C, *sp = shape
    return f"[{T}, {B}, {C}" + (", " + "x".join(map(str, sp)) if sp else "") + "]"


def machine_info() -> dict:
    import triton

    info = dict(python=platform.python_version(), torch=torch.__version__, triton=triton.__version__,
                platform=platform.platform(), machine=platform.machine(), cpus=os.cpu_count(),
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    info["cpu"] = cpu_name()

    # The tree whose kernels were measured: the one staa.kernels is imported from (this checkout
    # when staa is installed editable from it).
    from staa.kernels import launch

    tree = os.path.dirname(os.path.dirname(os.path.realpath(launch.__file__)))
    info["measured_tree"] = tree if os.path.realpath(tree) != os.path.realpath(ROOT) else "."

    def git(*args):
        r = subprocess.run(["git", "-C", tree, *args], capture_output=True, text=True)
        return r.stdout.rstrip() if r.returncode == 0 else None

    info["commit"] = git("rev-parse", "--short", "HEAD")
    info["kernels_commit"] = git("log", "-1", "--format=%h", "--", "kernels")
    dirty = git("status", "--porcelain", "--", "kernels", "src/staa")
    info["dirty"] = sorted(ln[3:] for ln in dirty.splitlines() if ln.strip()) if dirty else []
    return info


def markdown(results: list, info: dict, command: str) -> str:
    out = ["# Memory traffic and operation count of the Triton route (CPU meter)", ""]
    dirty = (" Uncommitted changes in the measured tree: " + ", ".join(info["dirty"]) + ".") if info["dirty"] else ""
    out += [f"Measured by `{command}` on {info['cpu']} ({info['machine']}), Python {info['python']}, "
            f"torch {info['torch']}, triton {info['triton']} (interpreter), {info['date']}; "
            f"commit {info['commit']} (kernels/ last changed in {info['kernels_commit']}).{dirty}", ""]
    out += ["One layer `STAALIF(C, T, backend=\"triton\")` (GC1, GC2, SA, position encoding; TSRD off), "
            "forward + backward of the launchers `staa.kernels.launch.staa_lif_forward` / `staa_lif_backward`, "
            "run by `TRITON_INTERPRET=1` on the CPU; the loop path forced by `STAA_TRITON_PATH`. "
            "Counts are exact and do not depend on the machine. Definitions: benchmarks/meter.py.", "",
            "- **launches**: Triton kernel launches; **ops**: other torch operations the launcher dispatches "
            "(views and bare allocations left out); **device ops** = launches + ops.",
            "- **distinct B/ns**: per launch, the addresses loaded or stored, each once, times the element size, "
            "summed over launches, per neuron-step (T*B*C*H*W); **total B/ns**: every load and store lane, "
            "re-reads included.",
            "- **glue**: torch operations of the module around the op (mask, reshapes, autograd).", ""]
    out += ["| shape | dtype | path | launches fwd/bwd | ops fwd/bwd | device ops | distinct B/ns fwd | bwd | "
            "**total** | total B/ns (re-reads) | plane B/ns | plane floor: path / op | 3 W/ns | glue | host syncs |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        f, b, t, pn = r["forward"], r["backward"], r["total"], r["per_neuron_step"]
        fl = r["plane_floor"]
        out.append(
            f"| {shape_label(r['shape'])} | {r['dtype']} | {r['path']} | {f['launches']}/{b['launches']} | "
            f"{f['ops']}/{b['ops']} | {t['launches'] + t['ops']} | {pn['forward']['distinct_bytes']:.1f} | "
            f"{pn['backward']['distinct_bytes']:.1f} | **{pn['total']['distinct_bytes']:.1f}** | "
            f"{pn['total']['total_bytes']:.1f} | {pn['total']['plane_bytes']:.1f} | "
            f"{fl[r['path']]['total']:.1f} / {fl['op']['total']:.1f} | {r['weight_bytes_per_neuron_step']:.1f} | "
            f"{r['glue_ops']} | {len(r['syncs'])} |")
    out += ["", "- **plane B/ns**: the distinct bytes that fall in plane storages (those of `[..., B, C, H*W]` tensors: "
            "x, u, spikes, gradients, h_last, the dL/dV carry); the rest is weights, per-tile partials and "
            "[T, B, C] vectors. **plane floor**: what the path's structure, and the op itself, must move "
            "(derived in docs/triton.md, `plane_floor` in benchmarks/meter.py). **3 W/ns**: the weights read "
            "once forward, once backward and their gradients written once, per neuron-step (B = 2 here, so "
            "the weights dominate small planes)."]
    syncs = sorted({s for r in results for s in r["syncs"]})
    out += ["", "Host synchronisations outside the kernels (all rows): " + ("none." if not syncs else "")]
    out += [f"- {s}" for s in syncs]
    out += ["", "The per-kernel launch counts and the per-op histograms are in the JSON file beside this one."]
    return "\n".join(out) + "\n"


def run(shapes, dtypes, paths, log=sys.stderr) -> list:
    results = []
    with Meter() as meter:
        for name in shapes:
            for dtype in dtypes:
                for path in paths:
                    t0 = datetime.datetime.now()
                    row = meter.measure(SHAPES[name], dtype, path)
                    row["name"] = name
                    results.append(row)
                    s = (datetime.datetime.now() - t0).total_seconds()
                    print(f"{name} {dtype} {path}: launches {row['total']['launches']}, ops "
                          f"{row['total']['ops']}, {row['per_neuron_step']['total']['distinct_bytes']:.1f} B/ns "
                          f"({s:.0f} s)", file=log, flush=True)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--out", default=None,
                    help="path stem for .md and .json (default: benchmarks/results/traffic, with --chains "
                         "benchmarks/results/chains), or '-' for JSON on stdout")
    ap.add_argument("--chains", action="store_true",
                    help="the chain table instead: launches, grid and block loads per program of every kernel at "
                         "the base shape and with B and the plane x16, both paths")
    ap.add_argument("--jobs", type=int, default=1, help="with --chains: loop paths measured in parallel processes")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.out is None:
        args.out = os.path.join(HERE, "results", "chains" if args.chains else "traffic")
    if args.chains:
        rows = chain_rows(args.paths) if args.jobs <= 1 or len(args.paths) == 1 else \
            _chain_rows_parallel(args.paths, args.jobs)
        info = machine_info()
        if args.out == "-":
            print(json.dumps(dict(machine=info, results=rows)))
            return
        command = "TRITON_INTERPRET=1 python benchmarks/meter.py " + " ".join(argv if argv is not None else sys.argv[1:])
        with open(args.out + ".json", "w") as f:
            json.dump(dict(machine=info, command=command.rstrip(), shapes=CHAIN_SHAPES, results=rows), f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(chain_markdown(rows, info, command.rstrip()))
        print(f"wrote {args.out}.md and .json", file=sys.stderr)
        return
    results = run(args.shapes, args.dtypes, args.paths)
    info = machine_info()
    if args.out == "-":
        print(json.dumps(dict(machine=info, results=results)))
        return
    command = "TRITON_INTERPRET=1 python benchmarks/meter.py" + (" " + " ".join(argv if argv is not None
                                                                                 else sys.argv[1:])).rstrip()
    with open(args.out + ".json", "w") as f:
        json.dump(dict(machine=info, command=command, results=results), f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(results, info, command))
    print(f"wrote {args.out}.md and .json", file=sys.stderr)


if __name__ == "__main__":
    main()
