"""Plain-text tables for the reports that ``staa.convert``, ``staa.profile`` and ``python -m staa`` print."""
from __future__ import annotations

from typing import Iterable, List, Sequence


def aligned_rows(rows: Sequence[Sequence], right: Iterable[int] = (), indent: str = "") -> List[str]:
    """``rows`` as lines of columns two spaces apart, each column as wide as its widest cell; the
    columns whose index is in ``right`` are right-aligned, the others left-aligned. Trailing spaces
    are stripped."""
    cells = [[str(c) for c in row] for row in rows]
    right = set(right)
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return [indent + "  ".join(c.rjust(w) if i in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in cells]
