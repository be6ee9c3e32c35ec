"""The self-test: the Triton kernels against the torch path, and both against float64, on this device.

``staa.selftest()`` runs every case on the default CUDA device and returns a
:class:`SelftestReport`; ``python -m staa selftest`` is its command line. Each case builds one
STAA-LIF layer (every block on, non-zero ``value`` layers so that every block contributes, a
TSRD mask with dropped steps) and runs forward and backward through :func:`staa.functional.staa_lif`,
the function every ``STAALIF`` call goes through, once per route: ``backend="triton"``,
``backend="torch"`` and, where a case needs it, the torch route in float64. Per case, for each
of the kernels' two time-loop paths (``per_step``, ``persistent``):

- **exact** criterion (float64, and small float32/bfloat16 cases whose inputs keep every
  membrane potential V at least :data:`MARGIN` from the threshold and the surrogate window's
  edges): spikes equal, the last state and every gradient within a tight tolerance of the torch
  route's;
- **statistical** criterion (float32/bfloat16 at layer size, where some V lie within rounding of
  the threshold and a spike may flip): spikes agree with the torch route's at >= 99.99% of
  positions; every gradient (and the last state) has cosine similarity >= 0.999 with float64; and
  the Triton route's L2 error against float64 is at most twice the torch route's, or within a
  floor (relative :data:`STAT_REL_FLOOR` of the float64 norm, for a block's parameter that of the
  block's gradients together; absolute :data:`STAT_ABS_FLOOR`) —
  measured over the samples where no route flipped a spike for per-sample tensors, and for the
  weight gradients (sums over the batch) when no sample flipped;
- everywhere the structural checks: shapes, dtypes, finite outputs and gradients, 0/1 spikes.

Case groups: ``exact`` (small shapes), ``layer`` (layer-sized, or the user's ``shape``; float64,
float32, bfloat16), ``surrogate`` (every surrogate kind), ``chain`` (single-step calls chained
from an initial state against one multi-step call). On CUDA it then times one forward+backward of
each layer shape against the torch route, ``torch.compile`` of the reference and, when
spikingjelly is installed, its multi-step LIF, and ends with a recommended backend.
"""
from __future__ import annotations

import copy
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch

from . import _backend
from ._selftest_criteria import (  # noqa: F401  (re-exported: the criteria are part of the self-test's API)
    ERROR_RATIO, MIN_COSINE, SPIKE_AGREEMENT, STAT_ABS_FLOOR, STAT_REL_FLOOR, _exact_compare, _Outcome,
    _statistical_compare, _structure,
)
from ._selftest_timing import PROVIDERS, time_layer, timing_lines

MARGIN = 1e-4
DTYPES = ("float64", "float32", "bfloat16", "float16")  # names accepted; float16 has no case (see docs)
CASE_DTYPES = ("float64", "float32", "bfloat16")
PATHS = ("per_step", "persistent")
GROUPS = ("exact", "layer", "surrogate", "chain")
SURROGATES = ("rect", "atan", "sigmoid", "fast_sigmoid")
LAYER_SHAPES = ((4, 32, 128, 32, 32), (4, 64, 512, 4, 4))
TINY_LAYER_SHAPES = ((3, 2, 8, 3, 3),)

class NoCaseSelected(ValueError):
    """The filters left no case to run; ``.filter`` names the one that emptied the list."""

    def __init__(self, filter_name: str, message: str):
        super().__init__(message)
        self.filter = filter_name


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    shape: tuple
    dtype: str
    reset: str = "hard"  # "hard" (v_reset 0) or "soft"
    detach: bool = False
    surrogate: str = "rect"
    path: str = "per_step"

    @property
    def criterion(self) -> str:
        if self.dtype == "float64" or self.group in ("exact", "chain"):
            return "exact"
        return "statistical"

    def to_dict(self) -> dict:
        return {"group": self.group, "name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "reset": self.reset, "detach_reset": self.detach, "surrogate": self.surrogate, "path": self.path,
                "criterion": self.criterion}


@dataclass
class CaseResult:
    case: Case
    ok: bool
    problems: List[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**self.case.to_dict(), "ok": self.ok, "problems": list(self.problems), "metrics": dict(self.metrics)}

    def line(self) -> str:
        c, m = self.case, self.metrics
        reset = c.reset + (", detach" if c.detach else "")
        head = (f"{'PASS' if self.ok else 'FAIL'}  {c.group:<9} {'x'.join(map(str, c.shape)):<15} {c.dtype:<8} "
                f"{reset:<12} {c.surrogate:<12} {c.path:<10}")
        if "spikes" not in m:
            return f"{head} {'; '.join(self.problems)}"
        if c.criterion == "exact":
            margin = "-" if m.get("margin") is None else f"{m['margin']:.1e}"
            body = (f"exact: spikes {m['spike_mismatches']}/{m['spikes']} differ (margin {margin}), max|dv| "
                    f"{m['max_dv']:.1e}, max|dgrad_x| {m['max_dgrad_x']:.1e}, worst grad {m['worst_grad']} "
                    f"(rel {m['max_rel_dgrad']:.1e})")
        else:
            body = (f"statistical: spikes agree {100 * m['spike_agreement']:.4f}% "
                    f"({m['spike_mismatches']}/{m['spikes']} differ), min cos {m['min_cosine']:.7f} "
                    f"({m['min_cosine_of']}), error vs float64 {m['max_error_ratio']:.2f}x torch's "
                    f"({m['max_error_ratio_of']}), {m['clean_samples']}/{m['samples']} samples without a flip")
        tail = f"  FAIL: {'; '.join(self.problems)}" if self.problems else ""
        return f"{head} {body}{tail}"


@dataclass
class SelftestReport:
    """What :func:`selftest` returns. ``ok``: every case passed; ``results``: one
    :class:`CaseResult` per case and path; ``timings``: forward+backward milliseconds per layer
    shape, dtype and provider (CUDA only); ``recommendation``: ``(backend, why)``;
    ``verified_entry``: after a passing run on CUDA, the entry that adds this GPU to the
    verified list (or, for a run with filters, why there is none). ``str(report)`` is the text
    ``python -m staa selftest`` prints."""

    device: str
    machine: str
    interpret: bool
    header: List[str]
    results: List[CaseResult]
    timings: List[dict]
    recommendation: tuple
    auto: str
    seconds: float
    verified_entry: Optional[str] = None

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    @property
    def failed(self) -> List[CaseResult]:
        return [r for r in self.results if not r.ok]

    def summary(self) -> str:
        bad = len(self.failed)
        return (f"{len(self.results) - bad} of {len(self.results)} cases pass ({self.seconds:.1f} s)"
                + (f"; {bad} FAILED" if bad else ""))

    def lines(self) -> List[str]:
        return list(self.header) + [r.line() for r in self.results] + timing_lines(self.timings) + self.tail()

    def tail(self) -> List[str]:
        """The closing lines: summary, verified-list entry (if any), auto's choice, recommendation (last)."""
        out = [self.summary()]
        if self.verified_entry and self.verified_entry.startswith("none"):
            out.append(f"verified list: {self.verified_entry}")
        elif self.verified_entry:
            out.append(f"verified list: add to VERIFIED in src/staa/_backend.py: {self.verified_entry}")
        out.append(f"auto on this device: {self.auto}")
        backend, why = self.recommendation
        out.append(f"recommendation: backend={backend!r}: {why}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict:
        return {"ok": self.ok, "device": self.device, "machine": self.machine, "interpret": self.interpret,
                "torch": torch.__version__, "staa_kernels": _backend.kernels_fingerprint(),
                "results": [r.to_dict() for r in self.results], "timings": self.timings,
                "summary": self.summary(), "auto": self.auto, "verified_entry": self.verified_entry,
                "recommendation": {"backend": self.recommendation[0], "why": self.recommendation[1]},
                "seconds": self.seconds}


# ------------------------------------------------------------------------------ the cases

def _normalise_shapes(shape) -> Optional[List[tuple]]:
    if shape is None:
        return None
    shapes = [shape] if len(shape) and isinstance(shape[0], int) else list(shape)
    out = []
    for s in shapes:
        s = tuple(s)
        if len(s) not in (3, 5) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in s):
            raise ValueError(f"shape must be [T, B, C] or [T, B, C, H, W] with positive integers, got {list(s)}")
        out.append(s)
    if not out:
        raise ValueError("shape must name at least one [T, B, C(, H, W)] shape, got an empty list")
    return out


def plan(tiny: bool = False, shapes=None, dtypes=None, paths=None, surrogates=None, groups=None) -> List[Case]:
    """The cases a run with these filters makes (a filter of ``None`` keeps everything).

    Raises :class:`NoCaseSelected` naming the first filter that leaves no case, and ``ValueError``
    for an unknown value."""
    for name, values, allowed in (("dtypes", dtypes, DTYPES), ("paths", paths, PATHS),
                                  ("surrogates", surrogates, SURROGATES), ("groups", groups, GROUPS)):
        for v in values or ():
            if v not in allowed:
                raise ValueError(f"unknown {name[:-1]} {v!r}; expected some of {', '.join(allowed)}")
    layer_shapes = _normalise_shapes(shapes) or list(TINY_LAYER_SHAPES if tiny else LAYER_SHAPES)
    if tiny:
        exact = [("conv", (3, 2, 6, 3, 3), "float64", "hard", False), ("fc", (4, 1, 5), "float64", "soft", True),
                 ("conv", (3, 2, 6, 3, 3), "float32", "soft", False),
                 ("conv", (2, 2, 5, 2, 2), "bfloat16", "soft", False)]
        small = (3, 2, 6, 3, 3)
    else:
        exact = [("conv", (4, 8, 64, 16, 16), "float64", "hard", False),
                 ("deep", (4, 8, 256, 4, 4), "float64", "soft", True),
                 ("fc", (4, 8, 512), "float64", "hard", False),
                 ("conv-small", (4, 2, 16, 4, 4), "float32", "soft", False),
                 ("fc-small", (4, 4, 64), "float32", "soft", True),
                 ("conv-small", (4, 2, 16, 3, 3), "bfloat16", "soft", False)]
        small = (4, 4, 32, 8, 8)
    base = [Case("exact", n, s, d, r, det) for n, s, d, r, det in exact]
    base += [Case("layer", "layer", s, d) for s in layer_shapes for d in CASE_DTYPES]
    base += [Case("surrogate", k, small, d, surrogate=k) for k in SURROGATES for d in ("float64", "float32")]
    base += [Case("chain", "chain", small, d) for d in ("float64", "float32")]
    cases = [Case(c.group, c.name, c.shape, c.dtype, c.reset, c.detach, c.surrogate, p) for c in base for p in PATHS]
    for name, values, key in (("groups", groups, "group"), ("dtypes", dtypes, "dtype"),
                              ("surrogates", surrogates, "surrogate"), ("paths", paths, "path")):
        if values is None:
            continue
        had = sorted({getattr(c, key) for c in cases})
        cases = [c for c in cases if getattr(c, key) in values]
        if not cases:
            raise NoCaseSelected(name, f"no case selected: --{name} {' '.join(values)} leaves none (the cases left "
                                       f"before it have {name} {', '.join(had)})")
    return cases


# ------------------------------------------------------------------------------ running one case

def _layer(case: Case, T_pos: int, device, param_dtype, seed: int):
    import staa

    torch.manual_seed(seed)
    m = staa.STAALIF(case.shape[2], T_pos, tsrd=0.0, v_reset=None if case.reset == "soft" else 0.0,
                     detach_reset=case.detach, surrogate=case.surrogate)
    with torch.no_grad():
        for p in m.parameters():  # non-zero value layers and position encoding: every block contributes
            p.add_(torch.randn_like(p) * 0.3)
    return m.to(device=device, dtype=param_dtype)


def _run(m, x, gy, gh, drop, backend, h0=None, t0=0, chain=False) -> _Outcome:
    from .functional import staa_lif

    xx = x.detach().clone().requires_grad_(True)
    hh = None if h0 is None else h0.detach().clone().requires_grad_(True)
    names, params = zip(*m.named_parameters())
    if chain:
        h, outs = hh, []
        for t in range(x.shape[0]):
            s, h, _ = staa_lif(xx[t:t + 1], m.params(), m.cfg, drop=drop[t:t + 1], h0=h, t0=t0 + t, backend=backend)
            outs.append(s)
        spikes, h_last = torch.cat(outs), h
    else:
        spikes, h_last, _ = staa_lif(xx, m.params(), m.cfg, drop=drop, h0=hh, t0=t0, backend=backend)
    inputs = [xx] + ([hh] if hh is not None else []) + list(params)
    grads = torch.autograd.grad([spikes, h_last], inputs, [gy, gh], allow_unused=True)
    keys = ["x"] + (["h0"] if hh is not None else []) + list(names)
    return _Outcome(spikes.detach(), h_last.detach(), dict(zip(keys, grads)))


def _margin(m, x, drop, h0, t0) -> float:
    """Distance of the closest V (float64 reference) to the threshold, and for ``rect`` to the
    surrogate window's edges."""
    from .reference import staa_lif_reference

    m64 = copy.deepcopy(m).double()
    T, B, C = x.shape[:3]
    cfg = m64.cfg
    with torch.no_grad():
        _, v = staa_lif_reference(
            x.double().reshape(T, B, C, -1), m64.params(), drop, alpha=cfg.alpha, v_threshold=cfg.v_threshold,
            v_reset=cfg.v_reset, detach_reset=cfg.detach_reset, surrogate=cfg.surrogate,
            h0=None if h0 is None else h0.double().reshape(B, C, -1), t0=t0, return_potentials=True)
    th = cfg.v_threshold
    half = cfg.surrogate.param / 2
    points = [th] + ([th - half, th + half] if cfg.surrogate.kind == "rect" else [])
    return min((v - p).abs().min().item() for p in points)


def _with_path(path: str, fn):
    saved = os.environ.get("STAA_TRITON_PATH")
    os.environ["STAA_TRITON_PATH"] = path
    try:
        return fn()
    finally:
        if saved is None:
            os.environ.pop("STAA_TRITON_PATH", None)
        else:
            os.environ["STAA_TRITON_PATH"] = saved


def run_case(case: Case, device: torch.device, seed: int = 0) -> CaseResult:
    """Run one case on ``device`` and judge it (see the module docstring for the criteria)."""
    dtype = getattr(torch, case.dtype)
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    state_dtype = param_dtype
    T, B, C = case.shape[:3]
    chain = case.group == "chain"
    t0 = 1 if chain else 0
    m = _layer(case, T + t0, device, param_dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    drop = (torch.rand(T, generator=g) < 0.5)
    drop[0] = False
    if T > 1:
        drop[1] = True  # at least one dropped step
    drop = drop.to(device)
    margin = None
    for _ in range(40):
        x = (torch.randn(case.shape, generator=g, dtype=torch.float64) * 0.8 + 0.35).to(device=device, dtype=dtype)
        h0 = None
        if chain:
            h0 = (torch.randn(case.shape[1:], generator=g, dtype=torch.float64) * 0.5).to(device, state_dtype)
        if case.criterion == "statistical" or case.dtype == "float64":
            break
        margin = _margin(m, x, drop, h0, t0)
        if margin >= MARGIN:
            break
    if margin is not None and margin < MARGIN:
        return CaseResult(case, False, [f"no input in 40 draws kept every V {MARGIN:g} away from the threshold"])
    gy = torch.randn(case.shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    gh = (torch.randn(case.shape[1:], generator=g, dtype=torch.float64) * 0.1).to(device=device, dtype=state_dtype)
    tri = _with_path(case.path, lambda: _run(m, x, gy, gh, drop, "triton", h0, t0, chain=chain))
    tor = _run(m, x, gy, gh, drop, "torch", h0, t0)
    problems = _structure(case, tri, x, m)
    if case.criterion == "exact":
        more, metrics = _exact_compare(case, tri, tor, "chain vs one torch call" if chain else "triton vs torch")
        problems += more
        if chain:
            multi = _with_path(case.path, lambda: _run(m, x, gy, gh, drop, "triton", h0, t0))
            more, _ = _exact_compare(case, multi, tor, "one triton call vs one torch call")
            problems += more
        metrics["margin"] = margin
    else:
        m64 = copy.deepcopy(m).double()
        ref = _run(m64, x.double(), gy.double(), gh.double(), drop, "torch")
        more, metrics = _statistical_compare(case, tri, tor, ref, interpret=device.type == "cpu")
        problems += more
    return CaseResult(case, not problems, problems, metrics)


# ------------------------------------------------------------------------------ timing

# ------------------------------------------------------------------------------ recommendation

def recommend(results: List[CaseResult], timings: List[dict], device: torch.device, interpret: bool,
              auto: str) -> tuple:
    """(backend, why) for this device from the cases and the timings."""
    if interpret or device.type != "cuda":
        return ("torch", "this run checked the kernels' logic in the Triton interpreter on the CPU; on a CPU the "
                         "torch path is what runs (auto picks it)")
    bad = [r for r in results if not r.ok]
    if bad:
        return ("torch", f"{len(bad)} of {len(results)} cases failed: the Triton kernels do not agree with the torch "
                         f"path on this device (report the output)")
    if not results:
        return ("torch", "no case ran")
    speed = [(t, t["ms"]["torch"] / t["ms"]["triton"]) for t in timings
             if "triton" in t["ms"] and "torch" in t["ms"]]
    if not speed:
        return ("triton" if auto == "triton" else "torch",
                "every case passed, but nothing was timed: time both backends on your model before choosing")
    faster = [f"{'x'.join(map(str, t['shape']))} {t['dtype']} ({s:.2f}x)" for t, s in speed if s > 1.0]
    slower = [f"{'x'.join(map(str, t['shape']))} {t['dtype']} ({s:.2f}x)" for t, s in speed if s <= 1.0]
    compiled = [t for t, _ in speed if "compile" in t["ms"] and t["ms"]["compile"] < t["ms"]["triton"]]
    extra = (f"; torch.compile of the reference was faster than the kernels at {len(compiled)} of {len(speed)} "
             f"timings" if compiled else "")
    opt_in = "" if auto == "triton" else " (auto picks torch here: pass backend='triton' or set STAA_BACKEND=triton)"
    if not slower:
        return ("triton", f"every case passed and the kernels ran forward+backward faster than the torch path at "
                          f"{', '.join(faster)}{opt_in}{extra}")
    if not faster:
        return ("torch", f"every case passed, but the kernels were not faster than the torch path at "
                         f"{', '.join(slower)}{extra}")
    return ("triton", f"every case passed; per layer: the kernels were faster at {', '.join(faster)} and not at "
                      f"{', '.join(slower)}: set backend per STAALIF layer{opt_in}{extra}")


# ------------------------------------------------------------------------------ the run

def machine(device: torch.device) -> str:
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        build = f"ROCm {torch.version.hip}" if getattr(torch.version, "hip", None) else f"CUDA {torch.version.cuda}"
        return f"{torch.cuda.get_device_name(device)} (sm_{cap[0]}{cap[1]}, torch {torch.__version__}, {build})"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {os.cpu_count()} cores (torch {torch.__version__})"


def verified_entry(device, results, dtypes=None, paths=None, surrogates=None, groups=None, tiny=False):
    """After a passing run on an NVIDIA GPU: the ``VerifiedRun(...)`` entry for the verified list,
    or ``"none: ..."`` when filters left cases out; ``None`` otherwise."""
    if device.type != "cuda" or not results or not all(r.ok for r in results) or getattr(torch.version, "hip", None):
        return None
    filters = (("groups", groups), ("paths", paths), ("surrogates", surrogates))
    left_out = [f"--{n}" for n, v in filters if v is not None]
    if dtypes is not None and not set(CASE_DTYPES) <= set(dtypes):
        left_out.append("--dtypes")
    if tiny:
        left_out.append("--tiny")
    if left_out:
        return f"none: a run with {', '.join(left_out)} leaves cases out; the verified list takes a complete run " \
               f"(--shape is fine)"
    cap = tuple(torch.cuda.get_device_capability(device))
    return (f"VerifiedRun(arch={cap}, device={torch.cuda.get_device_name(device)!r}, commit={_commit()!r}, "
            f"kernels={_backend.kernels_fingerprint()!r})")


def _commit() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True,
                             text=True, timeout=10, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "<commit>"
    except Exception:
        return "<commit>"


def _set_interpret() -> None:
    if _backend.triton_interpret():
        return
    if any(m == "triton" or m.startswith("triton.") for m in sys.modules):
        raise RuntimeError("interpret=True needs TRITON_INTERPRET=1 before triton is imported; set it in the "
                           "environment (or run `python -m staa selftest --interpret` in a fresh process)")
    os.environ["TRITON_INTERPRET"] = "1"


def selftest(device=None, shape=None, *, dtypes=None, paths=None, surrogates=None, groups=None, tiny: bool = False,
             interpret: bool = False, timing: Optional[bool] = None, providers: Sequence[str] = PROVIDERS,
             repeat: int = 20, seed: int = 0, out: Optional[Callable[[str], None]] = None) -> SelftestReport:
    """Check the Triton kernels against the torch path (and float64) on this device.

    Args:
        device: a CUDA device (default: the current one). ``"cpu"`` needs ``interpret=True``.
        shape: your layer, ``[T, B, C]`` or ``[T, B, C, H, W]`` (or a list of such shapes): the
            ``layer`` cases and the timings use it instead of ``[4, 32, 128, 32, 32]`` and
            ``[4, 64, 512, 4, 4]``.
        dtypes, paths, surrogates, groups: keep only these (``None``: all); a filter that leaves
            no case raises :class:`NoCaseSelected` naming it.
        tiny: the small cases only (the default under the interpreter).
        interpret: run the kernels on the CPU in the Triton interpreter (sets
            ``TRITON_INTERPRET=1``; raises if triton was imported without it).
        timing: time forward+backward per layer shape and dtype (default: on CUDA only).
        providers: what to time, some of ``triton``, ``torch``, ``compile``, ``spikingjelly``.
        repeat: timed rounds; seed: for weights and inputs.
        out: called with each line as it is ready (e.g. ``print``).

    Returns a :class:`SelftestReport`. Raises ``RuntimeError`` when the kernels cannot run here.
    """
    t_start = time.perf_counter()
    say = out or (lambda line: None)
    if interpret:
        _set_interpret()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cpu" and not _backend.triton_interpret():
        raise RuntimeError("no CUDA device: the Triton kernels run on a GPU; pass interpret=True (--interpret) to run "
                           "them (slowly) in the Triton interpreter on the CPU")
    if device.type == "cuda" and interpret:
        raise RuntimeError("interpret=True runs the kernels on the CPU; use device='cpu' or leave interpret off")
    _backend.choose_backend("triton", device)  # raises, saying why, when the kernels cannot run here
    cpu = device.type == "cpu"
    for v in providers:
        if v not in PROVIDERS:
            raise ValueError(f"unknown provider {v!r}; expected some of {', '.join(PROVIDERS)}")
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    cases = plan(tiny or cpu, shape, dtypes, paths, surrogates, groups)
    auto = _backend.choose_backend("auto", device)
    header = [f"staa selftest: backend='triton' vs backend='torch' and float64 on {machine(device)}",
              f"kernels fingerprint {_backend.kernels_fingerprint()}"]
    if cpu:
        header.append("kernels run in the Triton interpreter (TRITON_INTERPRET=1): this checks their logic, not a "
                      "GPU compile; its bfloat16 stores round toward zero (torch and GPUs round to nearest), so a "
                      "bfloat16 tensor's error floor is one bfloat16 step (2^-7) of its float64 norm")
    header.append(f"criteria: exact: spikes equal, |difference| <= atol + rtol * max|torch| (rtol 1e-9 float64, 1e-4 "
                  f"float32 and bfloat16 weights, 2^-7 bfloat16 input gradient), inputs keeping every V {MARGIN:g} "
                  f"from the threshold; statistical: spikes agree >= {100 * SPIKE_AGREEMENT:.2f}%, cosine with "
                  f"float64 >= {MIN_COSINE}, error vs float64 <= {ERROR_RATIO:g}x the torch route's (floors: "
                  f"{STAT_REL_FLOOR:g} relative to the float64 norm, a block's parameters to the block's, "
                  f"{STAT_ABS_FLOOR:g} absolute)")
    for line in header:
        say(line)
    results = []
    for case in cases:
        r = run_case(case, device, seed)
        results.append(r)
        say(r.line())
    timings = []
    if timing if timing is not None else device.type == "cuda":
        seen = []
        for c in cases:
            key = (c.shape, c.dtype)
            if c.group == "layer" and c.dtype in ("float32", "bfloat16") and key not in seen:
                seen.append(key)
        for s, d in seen:
            timings.append(time_layer(s, d, device, providers, repeat))
        for line in timing_lines(timings):
            say(line)
    verified = verified_entry(device, results, dtypes, paths, surrogates, groups, tiny)
    rec = recommend(results, timings, device, cpu, auto.backend)
    return SelftestReport(str(device), machine(device), cpu, header, results, timings, rec,
                          f"{auto.backend} ({auto.reason})", time.perf_counter() - t_start, verified)
