"""One STAALIF forward + backward captured in a CUDA graph and replayed, against eager.

    python benchmarks/graph_gpu.py [--out OUTDIR] [--name gpu_graph] [--backends triton,torch] [--budget 60]

For each user shape ([4, 32, 128, 32, 32] and [4, 64, 512, 4, 4], float32) and backend: the
layer in eval mode (TSRD draws nothing) captured with ``torch.cuda.graph`` after warm-up, the
replay's spikes and input gradient compared with eager, and both timed; then the same in
training mode (TSRD on: each replay draws a new mask, so only the time is compared). Capture
fails if the route synchronises with the host. Prints the table and, with ``--out``, writes
NAME.md naming the commit and the device (after every row). Needs CUDA.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

SHAPES = {"u1 [4,32,128,32,32]": (4, 32, 128, 32, 32), "u2 [4,64,512,4,4]": (4, 64, 512, 4, 4)}


def _timed(torch, fn, n=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / n


def _row(torch, staa, shape, backend, train):
    """(eager ms, replay ms, replay equals eager or None in training)."""
    from bench_gpu import graphed

    torch.manual_seed(0)
    m = staa.STAALIF(shape[2], shape[0], backend=backend, device="cuda").train(train)
    x = (torch.randn(shape, device="cuda") * 0.8 + 0.35).requires_grad_(True)
    gy = torch.randn(shape, device="cuda")
    out = {}

    def step():
        m.reset()
        out["y"] = m(x)
        out["y"].backward(gy)

    step()
    y_eager, gx_eager = out["y"].detach().clone(), x.grad.detach().clone()
    eager = _timed(torch, lambda: (setattr(x, "grad", None), step()))
    replay_fn = graphed(step, [x, *m.parameters()], torch)
    replay = _timed(torch, replay_fn)
    same = None
    if not train:
        same = torch.equal(out["y"], y_eager) and torch.allclose(x.grad, gx_eager, rtol=1e-5, atol=1e-6)
    return eager, replay, same


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for NAME.md (default: print only)")
    ap.add_argument("--name", default="gpu_graph")
    ap.add_argument("--backends", default="triton,torch")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds; later rows are skipped past it")
    ns = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("graph_gpu: no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 3
    import staa
    from bench_gpu import run_label

    commit, device = run_label(torch)
    lines = ["# STAALIF forward + backward in a CUDA graph", "",
             f"{device}, torch {torch.__version__}, commit {commit}. `python benchmarks/graph_gpu.py` (float32; "
             "`torch.cuda.graph` after warm-up on a side stream; eval: TSRD off, replay compared with eager; "
             "train: TSRD on, a new mask per replay, times only).", "",
             "| shape | backend | mode | eager ms | graph replay ms | eager / replay | replay = eager |",
             "|---|---|---|---|---|---|---|"]

    def write():
        print(lines[-1], flush=True)
        if ns.out:
            os.makedirs(ns.out, exist_ok=True)
            with open(os.path.join(ns.out, ns.name + ".md"), "w") as f:
                f.write("\n".join(lines) + "\n")

    t0 = time.time()
    failed = False
    for sname, shape in SHAPES.items():
        for backend in [b for b in ns.backends.split(",") if b]:
            for train in (False, True):
                mode = "train" if train else "eval"
                if time.time() - t0 > ns.budget:
                    lines.append(f"| {sname} | {backend} | {mode} | skipped (time budget) | | | |")
                    write()
                    continue
                try:
                    eager, replay, same = _row(torch, staa, shape, backend, train)
                    same_s = "-" if same is None else ("yes" if same else "NO")
                    failed |= same is False
                    lines.append(f"| {sname} | {backend} | {mode} | {eager:.3f} | {replay:.3f} | "
                                 f"{eager / replay:.1f} | {same_s} |")
                except Exception as exc:
                    failed = True
                    msg = str(exc).splitlines()[0][:120] if str(exc) else ""
                    lines.append(f"| {sname} | {backend} | {mode} | failed: {type(exc).__name__}: {msg} | | | |")
                torch.cuda.empty_cache()
                write()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
