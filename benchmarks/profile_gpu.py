"""Where the time of one STAALIF forward + backward goes on a GPU: device kernel time per
kernel name vs host wall time (torch.profiler, CUDA activity).

    python benchmarks/profile_gpu.py --out OUTDIR [--name gpu_profile] [--steps 10] [--budget 60]

The user shapes [4, 32, 128, 32, 32] and [4, 64, 512, 4, 4] (bench_gpu.py's), float32, training
mode, backend="triton" with each loop path forced. Writes NAME.md into OUTDIR after every shape,
naming the commit and the device. Needs CUDA.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile

    import staa

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="gpu_profile")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--budget", type=float, default=60.0, help="seconds; later rows are skipped past it")
    ns = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_gpu: no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 3
    from bench_gpu import SHAPE_SETS, run_label

    os.makedirs(ns.out, exist_ok=True)
    commit, device = run_label(torch)
    lines = [f"# STAALIF GPU profile ({device}, torch {torch.__version__}, commit {commit})", ""]
    shapes = {k: v for k, v in SHAPE_SETS["user"].items() if not k.startswith("big")}
    t_start = time.time()
    for sname, shape in shapes.items():
        for path in ("per_step", "persistent"):
            if time.time() - t_start > ns.budget:
                lines += [f"## {sname}, float32, path={path}: skipped (time budget)", ""]
                continue
            os.environ["STAA_TRITON_PATH"] = path
            x = (torch.randn(shape, device="cuda") * 0.8 + 0.35).requires_grad_(True)
            gy = torch.randn(shape, device="cuda")
            m = staa.STAALIF(shape[2], shape[0], backend="triton", device="cuda").train()

            def step():
                m.reset()
                m(x).backward(gy)

            for _ in range(3):
                step()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(ns.steps):
                step()
            torch.cuda.synchronize()
            wall_ms = (time.perf_counter() - t0) * 1e3 / ns.steps
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(ns.steps):
                    step()
                torch.cuda.synchronize()
            rows = []
            total = 0.0
            n_kernels = 0
            for ev in prof.key_averages():
                dev_us = getattr(ev, "self_device_time_total", None)
                if dev_us is None:
                    dev_us = getattr(ev, "self_cuda_time_total", 0.0)
                if dev_us and ev.device_type == torch.autograd.DeviceType.CUDA:
                    rows.append((dev_us / ns.steps, ev.count // ns.steps, ev.key))
                    total += dev_us / ns.steps
                    n_kernels += ev.count // ns.steps
            rows.sort(reverse=True)
            lines += [f"## {sname}, float32, path={path}", "",
                      f"wall {wall_ms:.3f} ms per fwd+bwd; device kernel time {total / 1e3:.3f} ms in "
                      f"{n_kernels} kernels", "", "| kernel | calls | device us |", "|---|---|---|"]
            lines += [f"| {k[:70]} | {c} | {us:.1f} |" for us, c, k in rows[:14]]
            lines.append("")
            print("\n".join(lines[-(len(rows[:14]) + 6):]), flush=True)
            with open(os.path.join(ns.out, ns.name + ".md"), "w") as f:
                f.write("\n".join(lines) + "\n")
            del x, gy, m
            torch.cuda.empty_cache()
    with open(os.path.join(ns.out, ns.name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
