"""What the benchmark scripts record about the machine they ran on."""
from __future__ import annotations

import platform


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        return names[0] if names else platform.processor()
    except OSError:
        return platform.processor()
