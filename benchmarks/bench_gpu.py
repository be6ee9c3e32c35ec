"""GPU benchmark of the STAA-LIF neuron (forward + backward) against its baselines.

    python benchmarks/bench_gpu.py --out OUTDIR [--rounds 15] [--budget 220] [--dry-run]

Providers: ``staa-triton`` (STAALIF, backend="triton"), ``staa-torch`` (STAALIF,
backend="torch"), ``reference-eager`` (``staa.reference.staa_lif_reference``),
``reference-compile`` (the same under ``torch.compile``), ``sj-lif`` (spikingjelly's
``LIFNode(step_mode="m")``; run with ``SJ_LIF_CUDA_IMPLEMENTATION=triton`` so its Triton
kernel is what is timed); ``staa-triton-single_step`` and ``sj-lif-single_step`` run the same
sequence as T single-step calls with one backward through them. Shapes are the issue's goal shapes, fp32 and bf16 inputs, the
module in training mode (TSRD on), timed with CUDA events over interleaved rounds; median
and interquartile range in milliseconds.

Bytes model (docs/triton.md): the least traffic any implementation of the op contract moves
per neuron-step for forward + backward, with s the input element size: forward reads x and
writes spikes and the saved fp32 u (2s + 4), backward reads x, u and dL/dspikes and writes
dL/dx (3s + 4): 5s + 8 bytes (28 fp32, 18 bf16). Effective bandwidth = that / time, set
against a device-to-device copy measured in the same run. Writes gpu_neuron.md and
gpu_neuron.json into OUTDIR.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

SHAPES = {"early [4,64,128,32,32]": (4, 64, 128, 32, 32), "deep [4,64,512,4,4]": (4, 64, 512, 4, 4)}
DTYPES = ("float32", "bfloat16")
PROVIDERS = ("staa-triton", "staa-triton-per_step", "staa-triton-persistent", "staa-triton-single_step",
             "staa-torch", "reference-eager", "sj-lif", "sj-lif-single_step", "reference-compile")
GOALS = (
    ("staa-triton vs reference-eager", "reference-eager", ">= 10x faster"),
    ("staa-triton vs reference-compile", "reference-compile", ">= 3x faster"),
    ("staa-triton vs sj-lif", "sj-lif", "<= 2x the time"),
)


def ideal_bytes(shape, dtype_size):
    T, B, C, H, W = shape
    return T * B * C * H * W * (5 * dtype_size + 8)


def make_provider(name, shape, dtype, torch, dev="cuda"):
    """A closure running one forward + backward, or raises why it cannot."""
    import staa

    T, B, C, H, W = shape
    x = torch.randn(shape, device=dev, dtype=torch.float32).mul_(0.8).add_(0.35).to(dtype).requires_grad_(True)
    gy = torch.randn(shape, device=dev, dtype=dtype)
    if name in ("staa-triton-per_step", "staa-triton-persistent"):
        # Force one of the two loop structures of the kernels (STAA_TRITON_PATH), to see which wins per shape.
        import os

        path = name.rsplit("-", 1)[1]
        m = staa.STAALIF(C, T, backend="triton", device=dev).train()

        def run():
            old = os.environ.get("STAA_TRITON_PATH")
            os.environ["STAA_TRITON_PATH"] = path
            try:
                m.reset()
                m(x).backward(gy)
            finally:
                if old is None:
                    os.environ.pop("STAA_TRITON_PATH")
                else:
                    os.environ["STAA_TRITON_PATH"] = old
        return run
    if name == "staa-triton-single_step":
        # T single-step calls from the stored state, one backward through the sequence (issue 13's ratio).
        m = staa.STAALIF(C, T, backend="triton", step_mode="s", device=dev).train()

        def run():
            m.reset()
            ys = [m(x[t]) for t in range(T)]
            torch.stack(ys).backward(gy)
        return run
    if name.startswith("staa-"):
        m = staa.STAALIF(C, T, backend=name.split("-")[1], device=dev).train()

        def run():
            m.reset()
            y = m(x)
            y.backward(gy)
        return run
    if name.startswith("reference-"):
        from staa.reference import staa_lif_reference

        m = staa.STAALIF(C, T, backend="torch", device=dev).train()
        fn = staa_lif_reference
        if name == "reference-compile":
            fn = torch.compile(staa_lif_reference)
        x4 = x.reshape(T, B, C, H * W)

        def run():
            drop = m._draw_drop(T, 0, x.device)
            y = fn(x4, m.params(), drop, v_reset=0.0)
            y.backward(gy.reshape(x4.shape))
        return run
    if name == "sj-lif-single_step":
        from spikingjelly.activation_based import neuron

        lif = neuron.LIFNode(step_mode="s")

        def run():
            lif.reset()
            ys = [lif(x[t]) for t in range(T)]
            torch.stack(ys).backward(gy)
        return run
    if name == "sj-lif":
        from spikingjelly.activation_based import neuron

        try:
            lif = neuron.LIFNode(step_mode="m", backend="triton")
        except Exception:
            lif = neuron.LIFNode(step_mode="m")

        def run():
            lif.reset()
            y = lif(x)
            y.backward(gy)
        return run
    raise ValueError(name)


def time_rounds(fns, rounds, torch, cuda=True):
    """Interleaved rounds: every provider once per round. Returns {name: [ms, ...]}."""
    out = {n: [] for n in fns}
    for _ in range(rounds):
        for n, fn in fns.items():
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                out[n].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                out[n].append((time.perf_counter() - t0) * 1e3)
    return out


def copy_bandwidth(torch, nbytes=1 << 30):
    a = torch.empty(nbytes // 4, device="cuda", dtype=torch.float32)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    ts = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    return 2 * nbytes / (statistics.median(ts) * 1e-3) / 1e12  # TB/s, read + write


def _q(xs):
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return q[1], q[2] - q[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="STAA-LIF GPU benchmark (fwd+bwd)")
    ap.add_argument("--out", required=True, help="folder for gpu_neuron.md / gpu_neuron.json")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget", type=float, default=220.0, help="seconds; later rows are skipped past it")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--dry-run", action="store_true", help="print the plan; needs no GPU")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="exercise the whole script on the CPU with a tiny shape (a test of the script, not a benchmark)")
    ns = ap.parse_args(argv)
    providers = [p for p in ns.providers.split(",") if p]
    unknown = set(providers) - set(PROVIDERS)
    if unknown:
        ap.error(f"unknown providers {sorted(unknown)}; expected some of {', '.join(PROVIDERS)}")
    if ns.rounds < 3:
        ap.error(f"--rounds must be >= 3, got {ns.rounds}")
    shapes = dict(SHAPES)
    if ns.cpu_smoke:
        shapes = {"smoke [2,2,6,3,3]": (2, 2, 6, 3, 3)}
    plan = [(s, d) for s in shapes for d in DTYPES]
    if ns.dry_run:
        print(f"bench_gpu dry run: out={ns.out} rounds={ns.rounds} warmup={ns.warmup} budget={ns.budget}s")
        print(f"providers: {', '.join(providers)}")
        for s, d in plan:
            print(f"row: {s} {d} fwd+bwd, ideal bytes {ideal_bytes(shapes[s], 4 if d == 'float32' else 2)}")
        print(f"SJ_LIF_CUDA_IMPLEMENTATION={os.environ.get('SJ_LIF_CUDA_IMPLEMENTATION', '(unset)')}")
        return 0

    import torch

    cuda = not ns.cpu_smoke
    dev = "cuda" if cuda else "cpu"
    if cuda and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 3
    t_start = time.time()
    os.makedirs(ns.out, exist_ok=True)
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except Exception:
        commit = "unknown"
    device_name = torch.cuda.get_device_name() if cuda else "CPU smoke run (not a benchmark)"
    machine = (f"{device_name} ({platform.machine()}, {os.cpu_count()} CPU cores), torch "
               f"{torch.__version__}, triton {triton_version}, CUDA {torch.version.cuda}, commit {commit}")
    copy_tbs = copy_bandwidth(torch) if cuda else float("nan")
    results = []

    def write_tables():
        def med(s, d, p):
            for r in results:
                if (r["shape"], r["dtype"], r["provider"]) == (s, d, p) and "median_ms" in r:
                    return r["median_ms"]
            return None

        lines = ["# STAA-LIF GPU benchmark (forward + backward)", "",
                 f"Machine: {machine}. Device-to-device copy measured at {copy_tbs:.2f} TB/s.", "",
                 f"`python benchmarks/bench_gpu.py --out OUTDIR` ({ns.rounds} interleaved rounds after {ns.warmup} "
                 "warm-up calls; CUDA-event times; SJ_LIF_CUDA_IMPLEMENTATION="
                 f"{os.environ.get('SJ_LIF_CUDA_IMPLEMENTATION', '(unset)')}).", "",
                 "| shape | dtype | provider | median ms | IQR ms | effective TB/s (bytes model) |",
                 "|---|---|---|---|---|---|"]
        for r in results:
            if "median_ms" in r:
                eff = f"{r['eff_tbs']:.2f} ({100 * r['eff_tbs'] / copy_tbs:.0f}% of copy)" if "eff_tbs" in r else ""
                lines.append(f"| {r['shape']} | {r['dtype']} | {r['provider']} | {r['median_ms']:.3f} | "
                             f"{r['iqr_ms']:.3f} | {eff} |")
            else:
                lines.append(f"| {r['shape']} | {r['dtype']} | {r['provider']} | {r['status']} | | |")
        lines += ["", "## Goals (reported, not gated)", "", "| shape | dtype | goal | target | measured | met |",
                  "|---|---|---|---|---|---|"]
        for s, d in plan:
            mine = med(s, d, "staa-triton")
            for label, other, target in GOALS:
                o = med(s, d, other)
                if mine is None or o is None:
                    lines.append(f"| {s} | {d} | {label} | {target} | not measured in this run | |")
                    continue
                if other == "sj-lif":
                    val, ok = f"{mine / o:.2f}x the time", mine / o <= 2.0
                else:
                    need = 10.0 if other == "reference-eager" else 3.0
                    val, ok = f"{o / mine:.1f}x faster", o / mine >= need
                lines.append(f"| {s} | {d} | {label} | {target} | {val} | {'yes' if ok else 'no'} |")
        with open(os.path.join(ns.out, "gpu_neuron.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(ns.out, "gpu_neuron.json"), "w") as f:
            json.dump(dict(machine=machine, copy_tbs=copy_tbs, rounds=ns.rounds, results=results), f, indent=1)
        return lines

    for sname, dname in plan:
        shape, dtype = shapes[sname], getattr(torch, dname)
        fns, errors = {}, {}
        for p in providers:
            if time.time() - t_start > ns.budget:
                errors[p] = "skipped (time budget)"
                continue
            try:
                fn = make_provider(p, shape, dtype, torch, dev)
                for _ in range(ns.warmup):
                    fn()
                if cuda:
                    torch.cuda.synchronize()
                fns[p] = fn
            except Exception as exc:
                errors[p] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"
        try:
            times = time_rounds(fns, ns.rounds, torch, cuda) if fns else {}
        except Exception as exc:  # e.g. out of memory: report the row, keep going
            times = {}
            errors.update({p: f"failed while timing: {type(exc).__name__}" for p in fns})
        for p in providers:
            row = dict(shape=sname, dtype=dname, provider=p)
            if p in times:
                med, iqr = _q(times[p])
                row.update(median_ms=med, iqr_ms=iqr)
                if p == "staa-triton":
                    row["eff_tbs"] = ideal_bytes(shape, dtype.itemsize) / (med * 1e-3) / 1e12
            else:
                row["status"] = errors.get(p, "not run")
            results.append(row)
        if cuda:
            torch.cuda.empty_cache()
        write_tables()  # a partial table survives a timeout

    print("\n".join(write_tables()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
