"""Argument checks shared by STAALIF, convert and profile: each names the value and the range."""
from __future__ import annotations

import math
import operator
from typing import Optional

import torch


def count(value, name: str, *, minimum: int = 1, allow_none: bool = False) -> Optional[int]:
    """An integer >= ``minimum`` (Python or numpy integers; not bool, not float)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be an int >= {minimum}{' or None' if allow_none else ''}, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an int >= {minimum}{' or None' if allow_none else ''}, got {value!r}"
        ) from None
    if n < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{' or None' if allow_none else ''}, got {value!r}")
    return int(n)


def real(value, name: str, *, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
         high_open: bool = False, allow_none: bool = False, what: str = "") -> Optional[float]:
    """A finite real number in the given range (Python or numpy numbers; not bool, not a tensor)."""
    if value is None and allow_none:
        return None
    rng = _range_text(low, high, low_open, high_open)
    desc = what or f"a finite number{rng}"
    if isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a Python number ({desc}), got a tensor; pass {name}=float(value) (a fixed setting, "
            f"not a learnable one)"
        )
    if isinstance(value, (bool, str, bytes, complex)) or not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be {desc}{' or None' if allow_none else ''}, got {value!r}")
    f = float(value)
    ok = math.isfinite(f)
    ok = ok and (f > low if low_open else f >= low) and (f < high if high_open else f <= high)
    if not ok:
        raise ValueError(f"{name} must be {desc}{' or None' if allow_none else ''}, got {value!r}")
    return f


def flag(value, name: str) -> bool:
    """A bool (Python or numpy bool)."""
    if isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def finite_input(x: torch.Tensor) -> None:
    """``STAALIF(check_finite=True)``'s check: raise ``ValueError`` with the count of NaN/Inf values
    (reads the result on the host, so it synchronises with a GPU)."""
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(
            f"STAALIF(check_finite=True): the input has {bad} non-finite value(s) (NaN or Inf) in shape "
            f"{list(x.shape)}"
        )


def _range_text(low, high, low_open, high_open) -> str:
    if low == -math.inf and high == math.inf:
        return ""
    if high == math.inf:
        return f" {'>' if low_open else '>='} {low:g}"
    if low == -math.inf:
        return f" {'<' if high_open else '<='} {high:g}"
    return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def past_T_message(t0: int, steps: int, n_pos: int) -> str:
    """The error for steps ``t0 .. t0 + steps - 1`` of a layer with ``n_pos`` position-encoding
    rows: the same text from the module's own check, the functional API and compiled calls."""
    if steps == 1:
        return (f"single-step call at t={t0} but this STAALIF has T={n_pos} steps; call reset() (or "
                f"functional.reset_net) between sequences, or build it with a larger T (the position encoding "
                f"has rows 0..{n_pos - 1})")
    return (f"steps {t0}..{t0 + steps - 1} need position-encoding rows that this STAALIF (T={n_pos} steps, "
            f"rows 0..{n_pos - 1}) does not have; call reset() between sequences, or build it with a larger T")
