"""Backend selection: ``"auto" | "torch" | "triton"`` and the ``STAA_BACKEND`` variable.

``auto`` picks the Triton kernels only for CUDA tensors on an NVIDIA GPU whose architecture
is in :data:`VERIFIED` with kernels identical to this version's (the self-test passed there);
everywhere else it picks the torch path, and on a GPU where the kernels could be run it says
once how to opt in. An explicit backend that cannot run raises an error that says why;
nothing falls back silently. ``staa.backend_for(x, reason=True)`` says why it chose.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "STAA_BACKEND"


@dataclass(frozen=True)
class VerifiedRun:
    """One GPU on which ``python -m staa selftest`` passed every case."""

    arch: Tuple[int, int]  # CUDA compute capability, e.g. (9, 0) for sm_90
    device: str  # torch.cuda.get_device_name(), e.g. "NVIDIA H200"
    commit: str  # the staa commit that ran
    kernels: str  # kernels_fingerprint() of that commit: auto trusts the entry only while it matches


# NVIDIA architectures on which the self-test passed with this version's kernels. auto picks
# Triton only for these. A GPU run that passes `python -m staa selftest` adds an entry (the report
# prints it) in the same commit. Empty: the one GPU run so far (below) predates the rewritten kernels.
VERIFIED: Tuple[VerifiedRun, ...] = ()

# Architectures every shipped kernel configuration compiles for on a CPU machine
# (benchmarks/compile_kernels.py), with the table. Compiling is not running: auto does not trust these.
COMPILED = {(9, 0): "benchmarks/results/kernel_compile_sm90.md"}

# GPU runs of earlier kernels, kept for the record; auto does not use them.
EARLIER_RUNS = (
    ("sm_90", "NVIDIA H200", "b10c880", "31 CUDA tests passed; the kernels were rewritten after it"),
)


class BackendHint(UserWarning):
    """Issued once per GPU when ``auto`` picks the torch path where the Triton kernels could run."""


@dataclass(frozen=True)
class BackendChoice:
    """What ``staa.backend_for(x, reason=True)`` returns: the backend, why, and (when ``auto``
    picked the torch path on a GPU where the kernels could run) how to opt in."""

    backend: str
    reason: str
    hint: Optional[str] = None

    def __str__(self) -> str:
        return f"{self.backend}: {self.reason}"


def check_backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(map(repr, BACKENDS))}")
    return name


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"{type(exc).__name__}: {exc}"
    return None


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_kernels_available() -> bool:
    try:
        from staa.kernels import HAS_KERNELS
    except ImportError:
        return False
    return bool(HAS_KERNELS)


@functools.lru_cache(maxsize=None)
def kernels_fingerprint() -> str:
    """A short hash of the shipped kernel sources (every ``.py`` file of ``staa.kernels``, line
    endings normalised): two versions with the same fingerprint run the same kernels."""
    spec = importlib.util.find_spec("staa.kernels")
    if spec is None or not spec.submodule_search_locations:
        return "none"
    return fingerprint_of(Path(next(iter(spec.submodule_search_locations))))


def fingerprint_of(folder: Path) -> str:
    """The fingerprint of the kernel sources in ``folder`` (see :func:`kernels_fingerprint`)."""
    h = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes().replace(b"\r\n", b"\n"))
    return h.hexdigest()[:16]


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton backend cannot run on ``device``, or ``None`` when it can."""
    err = _triton_import_error()
    if err is not None:
        return f"triton does not import ({err}); install staa on Linux x86_64 or use backend='torch'"
    if not _triton_kernels_available():
        return "this build of staa ships no Triton kernels; use backend='torch'"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and triton_interpret():
        return None
    return (
        f"the Triton kernels need a CUDA tensor, got a tensor on {device}; "
        "move the model and input to a GPU, set TRITON_INTERPRET=1 to run them (slowly) "
        "on the CPU, or use backend='torch'"
    )


def _arch_name(arch) -> str:
    return f"sm_{arch[0]}{arch[1]}"


_OPT_IN = ("run `python -m staa selftest` on it and, if every case passes, pass backend='triton' "
           "(or set STAA_BACKEND=triton)")


# auto's choice per CUDA device index: the answer depends only on the device. A plain dict, which
# torch.compile reads as a constant once an eager call has filled it.
_auto_cache: dict = {}


def _auto_on_cuda(index: int) -> BackendChoice:
    choice = _auto_cache.get(index)
    if choice is None:
        choice = _auto_cache[index] = _decide_auto_on_cuda(index)
    return choice


def _decide_auto_on_cuda(index: int) -> BackendChoice:
    """auto's choice for CUDA device ``index``, with the reason and (for torch) the opt-in hint."""
    err = triton_unavailable_reason(torch.device("cuda", index))
    if err is not None:
        return BackendChoice("torch", f"auto: the Triton kernels cannot run here: {err}")
    hip = getattr(torch.version, "hip", None)
    if hip:
        return BackendChoice(
            "torch",
            f"auto: this torch is a ROCm build (HIP {hip}); the kernels have never been compiled or run on AMD GPUs",
            f"staa: backend='auto' uses the torch path on this AMD GPU; to try the Triton kernels, {_OPT_IN}",
        )
    try:
        arch = tuple(torch.cuda.get_device_capability(index))
        name = torch.cuda.get_device_name(index)
    except (AssertionError, RuntimeError) as exc:  # no CUDA here (a torch.device asked about), or a driver error
        return BackendChoice("torch", f"auto: cannot read CUDA device {index}'s properties ({exc})")
    where = f"{_arch_name(arch)} ({name})"
    mine = kernels_fingerprint()
    runs = [r for r in VERIFIED if tuple(r.arch) == arch]
    for r in runs:
        if r.kernels == mine:
            return BackendChoice("triton", f"auto: the self-test passed on {_arch_name(arch)} ({r.device}) at commit "
                                           f"{r.commit}, with the kernels of this version")
    if runs:
        why = (f"auto: the self-test passed on {_arch_name(arch)} at commit {runs[-1].commit}, but the kernels "
               f"changed since (fingerprint {runs[-1].kernels}, now {mine})")
    elif arch in COMPILED:
        why = (f"auto: {where} is not in the verified list: every shipped kernel configuration compiles for it "
               f"({COMPILED[arch]}), but the self-test has not passed on it with this version's kernels")
    elif arch < (8, 0):
        why = (f"auto: {where} is older than sm_80 (Ampere); no kernel of this version was compiled or run "
               f"for it")
    else:
        why = f"auto: {where} is not in the verified list; no kernel of this version has run on it"
    return BackendChoice("torch", why, f"staa: backend='auto' uses the torch path on {where}; to use the Triton "
                                       f"kernels, {_OPT_IN}")


_hinted: set = set()


def _hint_once(index: int, hint: str) -> None:
    if index in _hinted or torch.compiler.is_compiling():
        return
    _hinted.add(index)
    warnings.warn(hint, BackendHint, stacklevel=2)


def _cuda_index(device: torch.device) -> int:
    if device.index is not None:
        return device.index
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


def _requested(requested: str) -> tuple:
    """(backend asked for, whether it came from STAA_BACKEND)."""
    check_backend_name(requested)
    if requested == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env:
            if env not in BACKENDS:
                raise ValueError(f"{ENV_VAR}={env!r} is not a backend; expected one of {', '.join(BACKENDS)}")
            return env, True
    return requested, False


def _check_triton(device: torch.device, from_env: bool) -> None:
    reason = triton_unavailable_reason(device)
    if reason is not None:
        hint = (f" (selected by the environment variable {ENV_VAR}=triton with backend='auto'; unset it or set "
                f"{ENV_VAR}=torch)" if from_env else "")
        raise RuntimeError(f"backend='triton' cannot run: {reason}{hint}")


def resolve_backend(requested: str, device: torch.device) -> str:
    """The concrete backend (``"torch"`` or ``"triton"``) a call on ``device`` uses."""
    requested, from_env = _requested(requested)
    if requested == "auto":
        if device.type != "cuda":
            return "torch"
        index = _cuda_index(device)
        choice = _auto_on_cuda(index)
        if choice.hint is not None:
            _hint_once(index, choice.hint)
        return choice.backend
    if requested == "triton":
        _check_triton(device, from_env)
    return requested


def choose_backend(requested: str, device: torch.device) -> BackendChoice:
    """:func:`resolve_backend` with the reason (and, where auto picked torch on a GPU, the opt-in hint)."""
    name, from_env = _requested(requested)
    source = f"{ENV_VAR}={name}" if from_env else f"backend={name!r}"
    if name == "triton":
        _check_triton(device, from_env)
        return BackendChoice("triton", f"{source} was asked for")
    if name == "torch":
        return BackendChoice("torch", f"{source} was asked for")
    if device.type == "cuda":
        return _auto_on_cuda(_cuda_index(device))
    return BackendChoice("torch", f"auto: the Triton kernels run on CUDA devices only; this is {device.type}")


def backend_for(tensor, backend: str = "auto", *, reason: bool = False):
    """Which backend a multi-step STAALIF call on ``tensor`` would use.

    Args:
        tensor: the input a STAALIF call would get (any shape, e.g. ``[T, B, C, H, W]``), or a
            ``torch.device``.
        backend: ``"auto"`` (honours ``STAA_BACKEND``), ``"torch"`` or ``"triton"``.
        reason: return a :class:`BackendChoice` (``.backend``, ``.reason``, ``.hint``) instead of
            the name.

    Returns ``"torch"`` or ``"triton"`` (a :class:`BackendChoice` with ``reason=True``). An
    explicit ``"triton"`` that cannot run raises ``RuntimeError`` saying why.

    >>> staa.backend_for(torch.zeros(4, 2, 8))
    'torch'
    >>> staa.backend_for(torch.zeros(4, 2, 8), reason=True).reason
    'auto: the Triton kernels run on CUDA devices only; this is cpu'
    """
    if isinstance(tensor, torch.Tensor):
        device = tensor.device
    elif isinstance(tensor, torch.device):
        device = tensor
    else:
        raise TypeError(f"staa.backend_for expects a tensor (the input a STAALIF call would get) or a "
                        f"torch.device, got {type(tensor).__name__}")
    if reason:
        return choose_backend(backend, device)
    return resolve_backend(backend, device)
