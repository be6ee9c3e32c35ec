"""The self-test's timing: one layer's forward + backward per provider (the Triton and torch routes,
``torch.compile`` of the reference, spikingjelly's multi-step LIF)."""
from __future__ import annotations

import os
import statistics
import time
from typing import List, Sequence

import torch

PROVIDERS = ("triton", "torch", "compile", "spikingjelly")


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _provider(name: str, shape, dtype, device):
    """A closure running one forward + backward of one layer, and a note on what runs."""
    import staa

    T, B, C = shape[:3]
    x = (torch.randn(shape, device=device) * 0.8 + 0.35).to(dtype).requires_grad_(True)
    gy = torch.randn(shape, device=device).to(dtype)
    if name in ("triton", "torch"):
        m = staa.STAALIF(C, T, backend=name, device=device).train()

        def run():
            m.reset()
            m(x).backward(gy)
        return run, f"STAALIF(backend={name!r}), training mode"
    if name == "compile":
        from .reference import staa_lif_reference

        m = staa.STAALIF(C, T, backend="torch", device=device).train()
        fn = torch.compile(staa_lif_reference)
        x4, g4 = x.reshape(T, B, C, -1), gy.reshape(T, B, C, -1)

        def run():
            fn(x4, m.params(), m._draw_drop(T, 0, device), v_reset=0.0).backward(g4)
        return run, "torch.compile(staa.reference.staa_lif_reference)"
    if name == "spikingjelly":
        from spikingjelly.activation_based import neuron

        lif = neuron.LIFNode(step_mode="m")
        impl = os.environ.get("SJ_LIF_CUDA_IMPLEMENTATION", "default")

        def run():
            lif.reset()
            lif(x).backward(gy)
        return run, f"spikingjelly LIFNode(step_mode='m'), SJ_LIF_CUDA_IMPLEMENTATION={impl}"
    raise ValueError(f"unknown provider {name!r}; expected some of {', '.join(PROVIDERS)}")


def time_layer(shape, dtype: str, device, providers: Sequence[str] = PROVIDERS, repeat: int = 20,
               warmup: int = 2) -> dict:
    """Median milliseconds of one forward + backward of one layer ``shape`` per provider, in
    interleaved rounds after ``warmup`` calls each (which compile what needs compiling). A provider
    that cannot run gets its error instead of a time; spikingjelly is skipped when not installed."""
    device = torch.device(device)
    row = {"shape": list(shape), "dtype": dtype, "ms": {}, "notes": {}}
    fns = {}
    for name in providers:
        if name == "spikingjelly":
            import importlib.util

            if importlib.util.find_spec("spikingjelly") is None:
                row["notes"][name] = "not installed"
                continue
        try:
            fn, note = _provider(name, shape, getattr(torch, dtype), device)
            for _ in range(warmup):
                fn()
            _sync(device)
        except Exception as exc:  # a provider that cannot run here is reported, not fatal
            row["notes"][name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            continue
        fns[name], row["notes"][name] = fn, note
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(device)
                times[k].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t0) * 1e3)
    row["ms"] = {k: statistics.median(v) for k, v in times.items()}
    return row


def timing_lines(timings: List[dict]) -> List[str]:
    if not timings:
        return []
    from ._text import aligned_rows

    rows = [("forward+backward, median ms", *PROVIDERS)]
    for t in timings:
        rows.append((f"{'x'.join(map(str, t['shape']))} {t['dtype']}",
                     *(f"{t['ms'][p]:.3f}" if p in t["ms"] else ("-" if p not in t["notes"] else
                       ("n/a" if t["notes"][p] == "not installed" else "failed")) for p in PROVIDERS)))
    out = aligned_rows(rows, right=range(1, len(PROVIDERS) + 1))
    notes = sorted({f"{p}: {n}" for t in timings for p, n in t["notes"].items()})
    return out + [f"  {n}" for n in notes]
