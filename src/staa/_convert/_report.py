"""The report of :func:`staa.convert`: what was replaced, skipped and found without spatial positions."""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

from .._text import aligned_rows


@dataclasses.dataclass(frozen=True)
class ReplacedNode:
    """One node swapped for STAALIF. ``channels``/``T`` are ``None`` where sizing is lazy;
    ``surrogate`` is the new node's surrogate (e.g. ``"surrogate='atan', surrogate_alpha=2"``)."""

    name: str
    old_class: str
    channels: Optional[int]
    T: Optional[int]
    step_mode: str
    dropped: Tuple[str, ...]
    surrogate: str = ""


@dataclasses.dataclass(frozen=True)
class SkippedNode:
    """A spikingjelly neuron left in place, with the reason."""

    name: str
    cls: str
    reason: str


@dataclasses.dataclass(frozen=True)
class FlatNode:
    """A node whose input has no spatial positions (``[T, B, C]``, or ``[B, C]`` per step), as
    after a ``Linear`` layer: ``added_params`` is what STAA adds (or would add) to it, and
    ``converted`` says whether it became a STAALIF (``linear="convert"``) or stayed (``"keep"``)."""

    name: str
    cls: str
    channels: int
    added_params: int
    converted: bool


@dataclasses.dataclass
class ConvertReport:
    """What :func:`staa.convert` replaced (or would replace, with ``dry_run``) and skipped.

    ``print(report)`` shows it as a table. After several ``convert`` calls on one model,
    ``model.staa_report`` holds every call's replaced nodes (``calls`` counts the calls) and
    the latest call's skipped nodes (those are the spikingjelly nodes still in the model).
    """

    replaced: List[ReplacedNode]
    skipped: List[SkippedNode]
    dry_run: bool = False
    flat: List[FlatNode] = dataclasses.field(default_factory=list)
    calls: int = 1

    def __len__(self) -> int:
        return len(self.replaced)

    def __str__(self) -> str:
        verb = "would replace" if self.dry_run else "replaced"
        if not self.replaced and not self.skipped:
            return "staa.convert: no spikingjelly LIFNode/ParametricLIFNode/IFNode found; the model is unchanged"
        lines = [f"staa.convert: {verb} {len(self.replaced)} node(s) with STAALIF, skipped {len(self.skipped)}"]
        if self.calls > 1:
            lines[0] += f" (over {self.calls} convert calls)"
        elif not self.replaced:
            lines[0] += "; the model is unchanged"
        if self.replaced:
            rows = [("module", "old class", "C", "T", "step", "surrogate", "dropped settings")]
            for r in self.replaced:
                rows.append((
                    display(r.name), short_class(r.old_class), _lazy(r.channels), _lazy(r.T), r.step_mode,
                    _short_sg(r.surrogate), ", ".join(r.dropped) or "-",
                ))
            lines += aligned_rows(rows, right=(2, 3), indent="  ")
        if self.skipped:
            lines.append("skipped:")
            rows = [("module", "class", "reason")] + [(display(s.name), short_class(s.cls), s.reason) for s in self.skipped]
            lines += aligned_rows(rows, indent="  ")
        if self.flat:
            lines.append("no spatial positions (input [T, B, C], or [B, C] per step; e.g. after a Linear layer):")
            rows = [("module", "C", "params STAA adds", "")]
            for f in self.flat:
                rows.append((display(f.name), f.channels, f"{f.added_params:,}", "converted" if f.converted else "kept"))
            lines += aligned_rows(rows, right=(1, 2), indent="  ")
        return "\n".join(lines)

    def _merged_after(self, earlier: "ConvertReport") -> "ConvertReport":
        names = {r.name for r in self.replaced}
        flat = [f for f in earlier.flat if f.converted and f.name not in names] + list(self.flat)
        return ConvertReport(list(earlier.replaced) + list(self.replaced), list(self.skipped), False, flat,
                             earlier.calls + 1)


def _short_sg(text: str) -> str:
    # "surrogate='atan', surrogate_alpha=2" -> "atan(alpha=2)"
    if not text:
        return "-"
    kind, _, param = text.partition(", ")
    kind = kind.split("=", 1)[1].strip("'")
    name, _, value = param.partition("=")
    return f"{kind}({name.replace('surrogate_', '')}={value})"


def short_class(qualname: str) -> str:
    # "spikingjelly.activation_based.neuron.LIFNode" -> "LIFNode"; legacy classes keep "clock_driven."
    name = qualname.rsplit(".", 1)[-1]
    return f"clock_driven.{name}" if ".clock_driven." in qualname else name


def _lazy(value: Optional[int]) -> str:
    return "lazy" if value is None else str(value)


def display(name: str) -> str:
    return name or "<model>"
