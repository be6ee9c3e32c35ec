"""Launching the compiled kernels without triton's per-call argument binding.

``kernel[grid](*args, **kwargs)`` specialises every argument, builds a cache key and looks the
compiled kernel up on every call: 15-20 µs of host time per launch for these kernels' 20-45
arguments, most of the per-step path's host cost (docs/triton.md, "Host cost per layer"). Within
one launcher call a kernel is launched once per time step with the same tensors and only the step
index changing, so that work repeats T times.

Here the first launch of each specialisation goes through triton's JIT, which compiles the kernel
or finds it, and the compiled kernel is kept under a key at least as fine as the JIT's own: the
kernel, the device, every keyword (constexprs and launch options), the JIT knobs the JIT reads,
and for each positional argument its dtype and whether its address is a multiple of 16 (for a
tensor: what triton specialises a pointer on) or its exact type and value (anything else). Later
launches with an equal key call the compiled kernel's launcher as ``JITFunction.run`` does in
triton 3.4-3.9 (the versions this was checked against): the same stream, grid, metadata, hooks and
argument values, constexprs included. The key of the arguments fixed for a launcher call is
built once per call (``fixed_key``), so a per-step launch specialises only the step index and the
few tensors that change between steps.

``STAA_TRITON_LAUNCH``: ``direct`` (the default where triton's version is one of the checked
ones) or ``jit`` (every launch through ``kernel[grid](...)``). Setting ``direct`` where it cannot
work is an error, never a silent fallback. Under ``TRITON_INTERPRET=1`` the kernels are
interpreted functions, which always launch through the interpreter.
"""
from __future__ import annotations

import functools
import inspect
import itertools
import os
import threading
from typing import Optional

import torch

ENV = "STAA_TRITON_LAUNCH"
MODES = ("direct", "jit")
# triton releases whose JITFunction.run launches a compiled kernel as ``launch`` below does.
VERIFIED = ((3, 4), (3, 9))
# Entries kept before the caches start over (keys hold exact shapes: a training run has a few dozen).
MAX_ENTRIES = 4096

_JIT = object()  # a cache entry: this specialisation launches through the JIT
_BASES: dict = {}  # fixed-argument key -> small int naming it in the per-launch keys
_COMPILED: dict = {}  # (base, spec of the varying arguments) -> (compiled kernel, constexpr values) or _JIT
_ids = itertools.count()
_local = threading.local()  # .state: this thread's launcher call's (device, knobs) or False; _UNREAD; None
_UNREAD = object()


@functools.lru_cache(maxsize=1)
def unsupported() -> Optional[str]:
    """Why direct launching cannot be used with the installed triton, or None."""
    try:
        import triton
        from triton import knobs  # noqa: F401  (3.4+)
        from triton.runtime import driver  # noqa: F401
        from triton.runtime.jit import JITFunction  # noqa: F401
    except ImportError as e:
        return f"triton's JIT runtime cannot be imported ({e})"
    try:
        major, minor = (int(p) for p in triton.__version__.split("+")[0].split(".")[:2])
    except ValueError:
        return f"triton's version {triton.__version__!r} cannot be read"
    lo, hi = VERIFIED
    if not lo <= (major, minor) <= hi:
        return (f"triton {triton.__version__} is outside the versions whose launch convention was checked "
                f"({lo[0]}.{lo[1]} to {hi[0]}.{hi[1]})")
    return None


def mode() -> str:
    """The launch mode from ``STAA_TRITON_LAUNCH``: ``"direct"`` or ``"jit"``."""
    env = os.environ.get(ENV, "").strip().lower()
    if env in ("", "auto"):
        return "direct" if unsupported() is None else "jit"
    if env not in MODES:
        raise ValueError(f"{ENV} must be 'direct', 'jit' or unset, got {env!r}")
    if env == "direct":
        why = unsupported()
        if why is not None:
            raise RuntimeError(f"{ENV}=direct cannot be used: {why}. Unset {ENV} (or set it to 'jit') to launch "
                               f"every kernel through triton's JIT.")
    return env


def spec(args: tuple) -> tuple:
    """What a launch's key records of each argument: a tensor's dtype and 16-byte alignment,
    anything else's type and value."""
    return tuple([(a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else (type(a), a)
                  for a in args])


def current_device() -> int:
    from triton.runtime import driver

    return driver.active.get_current_device()


def current_stream(device: int):
    from triton.runtime import driver

    return driver.active.get_current_stream(device)


def _knobs() -> Optional[tuple]:
    """The JIT knobs that change what the JIT compiles, or None when one makes its key
    unpredictable (a stages-inspection hook)."""
    from triton import knobs

    rt, comp = knobs.runtime, knobs.compilation
    if getattr(rt, "add_stages_inspection_hook", None) is not None:
        return None
    return (rt.debug, getattr(comp, "instrumentation_mode", None), getattr(comp, "fpsan_homomorphic_casts", None))


def _call_state():
    """``(device, knobs)`` for direct launching, or False: the launch mode, device and JIT knobs,
    read once per launcher call (``entered``) and at every launch outside one."""
    st = getattr(_local, "state", None)
    if st is None or st is _UNREAD:
        knob_state = _knobs() if mode() == "direct" else None
        fresh = False if knob_state is None else (current_device(), knob_state)
        if st is _UNREAD:
            _local.state = fresh
        return fresh
    return st


def entered():
    """Mark the start of a launcher call on this thread; returns what ``left`` restores."""
    prev = getattr(_local, "state", None)
    _local.state = _UNREAD
    return prev


def left(prev) -> None:
    _local.state = prev


def _intern(base) -> int:
    i = _BASES.get(base)
    if i is None:
        if len(_BASES) >= MAX_ENTRIES:
            clear()
        i = _BASES[base] = next(_ids)
    return i


def fixed_key(kernel, fixed: list, kwargs: dict, parent=None):
    """``(base, device)``: a small int naming the part of the key fixed for a launcher call, and the
    device; or False: this kernel launches through the JIT. ``fixed`` is ``[head, tail, spec or
    None]``; the spec of ``head`` and ``tail`` is computed here once and kept there. A variant's
    ``parent`` is ``(its parent's fixed key, the keywords the variant changes)``."""
    from triton.runtime.jit import JITFunction

    if parent is not None:
        if parent[0] is False:
            return False
        try:
            return _intern((parent[0][0], parent[1])), parent[0][1]
        except TypeError:
            return False
    if type(kernel) is not JITFunction or kernel.pre_run_hooks:  # interpreted, or hooks that must run
        return False
    st = _call_state()
    if st is False:
        return False
    if fixed[2] is None:
        fixed[2] = (spec(fixed[0]), spec(fixed[1]))
    try:
        return _intern((kernel, st, fixed[2], tuple(kwargs.items()))), st[0]
    except TypeError:  # an unhashable argument: leave it to the JIT
        return False


@functools.lru_cache(maxsize=None)
def _params(kernel) -> tuple:
    """``(name, default)`` of each of the kernel's parameters, in order."""
    return tuple((p.name, p.default) for p in inspect.signature(kernel.fn).parameters.values())


def constexpr_tail(kernel, n_args: int, kwargs: dict) -> tuple:
    """The values of the parameters after the ``n_args`` positional ones, as the JIT binds them
    (keyword, else the default): with the positional arguments, what the launcher receives."""
    return tuple(kwargs[name] if name in kwargs else default for name, default in _params(kernel)[n_args:])


def first_launch(kernel, grid, args: tuple, kwargs: dict):
    """Launch through the JIT (compiling if needed) and return the cache entry for this key."""
    compiled = kernel[grid](*args, **kwargs)
    if hasattr(compiled, "result"):  # an asynchronous compile's future
        compiled = compiled.result()
    if not all(hasattr(compiled, a) for a in ("run", "function", "packed_metadata", "launch_metadata")):
        return _JIT
    return compiled, constexpr_tail(kernel, len(args), kwargs)


def driver_launch(entry, grid, args: tuple, device: int) -> None:
    """``entry``'s compiled kernel launched on ``grid`` as ``JITFunction.run`` launches it."""
    from triton import knobs

    compiled, tail = entry
    full = args + tail
    stream = current_stream(device)
    n = len(grid)
    rt = knobs.runtime
    compiled.run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, stream, compiled.function,
                 compiled.packed_metadata, compiled.launch_metadata(grid, stream, *full),
                 rt.launch_enter_hook, rt.launch_exit_hook, *full)


def launch(base: int, device: int, kernel, grid, args: tuple, varying: tuple, kwargs: dict) -> None:
    """One launch of ``kernel`` with ``args`` (``varying``: those not in the fixed key)."""
    key = (base, spec(varying))
    entry = _COMPILED.get(key)
    if entry is None:
        if len(_COMPILED) >= MAX_ENTRIES:
            _COMPILED.clear()
        _COMPILED[key] = first_launch(kernel, grid, args, kwargs)
    elif entry is _JIT:
        kernel[grid](*args, **kwargs)
    else:
        driver_launch(entry, grid, args, device)


def clear() -> None:
    """Forget every kept kernel (the next launch of each goes through the JIT again)."""
    _BASES.clear()
    _COMPILED.clear()


def cached() -> int:
    """How many specialisations are kept."""
    return len(_COMPILED)
