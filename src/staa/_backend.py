"""Backend selection: ``"auto" | "torch" | "triton"`` and the ``STAA_BACKEND`` variable.

``auto`` picks the Triton kernels for CUDA tensors when triton imports, else the torch
path. An explicit backend that cannot run raises an error that says why; nothing falls
back silently.
"""
from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "STAA_BACKEND"


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


def resolve_backend(requested: str, device: torch.device) -> str:
    """The concrete backend (``"torch"`` or ``"triton"``) a call on ``device`` uses."""
    check_backend_name(requested)
    from_env = False
    if requested == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env:
            if env not in BACKENDS:
                raise ValueError(f"{ENV_VAR}={env!r} is not a backend; expected one of {', '.join(BACKENDS)}")
            requested = env
            from_env = True
    if requested == "auto":
        if device.type == "cuda" and triton_unavailable_reason(device) is None:
            return "triton"
        return "torch"
    if requested == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            hint = (f" (selected by the environment variable {ENV_VAR}=triton with backend='auto'; unset it or set "
                    f"{ENV_VAR}=torch)" if from_env else "")
            raise RuntimeError(f"backend='triton' cannot run: {reason}{hint}")
    return requested


def backend_for(tensor: torch.Tensor, backend: str = "auto") -> str:
    """Which backend a multi-step STAALIF call on ``tensor`` would use.

    >>> staa.backend_for(torch.zeros(4, 2, 8))
    'torch'
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"staa.backend_for expects a tensor (the input a STAALIF call would get), "
                        f"got {type(tensor).__name__}")
    return resolve_backend(backend, tensor.device)
