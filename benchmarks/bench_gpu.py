"""GPU benchmark of the STAA-LIF neuron (forward + backward) against its baselines.

    python benchmarks/bench_gpu.py --out OUTDIR [--name gpu_neuron] [--shapes user] [--rounds 15]
                                   [--budget 220] [--compile-dtypes float32] [--dry-run]

Providers: ``staa-triton`` (STAALIF, backend="triton"), ``staa-torch`` (STAALIF,
backend="torch"), ``staa-torch-compile`` (the torch-backend layer under ``torch.compile``),
``reference-eager`` (``staa.reference.staa_lif_reference``), ``reference-compile`` (the same
under ``torch.compile``), ``sj-lif`` (spikingjelly's ``LIFNode(step_mode="m")``; run with
``SJ_LIF_CUDA_IMPLEMENTATION=triton`` so its Triton kernel is what is timed);
``staa-triton-single_step`` and ``sj-lif-single_step`` run the same sequence as T single-step
calls with one backward through them; ``*-graph`` providers capture one forward + backward in a
CUDA graph (``torch.cuda.graph`` after warm-up on a side stream) and time its replay.
Compiled providers run only at the dtypes of ``--compile-dtypes`` (each dtype is a new
compilation). Shapes (``--shapes``): ``user`` = [4, 32, 128, 32, 32], [4, 64, 512, 4, 4] and
[16, 128, 256, 64, 64] (the last for the Triton route and spikingjelly's LIF only: one fp32
tensor of it is 8.6 GB), ``b10c880`` = the first GPU run's [4, 64, 128, 32, 32] and
[4, 64, 512, 4, 4]. fp32 and bf16 inputs, the module in training mode (TSRD on), timed with CUDA
events over interleaved rounds (rows with tensors over 2 GB: one provider at a time, each freed
before the next); median and interquartile range in milliseconds.

Bytes model (docs/triton.md): the least traffic any implementation of the op contract moves
per neuron-step for forward + backward, with s the input element size: forward reads x and
writes spikes and the saved fp32 u (2s + 4), backward reads x, u and dL/dspikes and writes
dL/dx (3s + 4): 5s + 8 bytes (28 fp32, 18 bf16). Effective bandwidth = that / time, set
against a device-to-device copy measured in the same run. Writes NAME.md and NAME.json into
OUTDIR (after every row, so a run cut short keeps its rows), naming the commit (``STAA_COMMIT``
when set, else git) and the device.
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

SHAPE_SETS = {
    "user": {"u1 [4,32,128,32,32]": (4, 32, 128, 32, 32), "u2 [4,64,512,4,4]": (4, 64, 512, 4, 4),
             "big [16,128,256,64,64]": (16, 128, 256, 64, 64)},
    "b10c880": {"early [4,64,128,32,32]": (4, 64, 128, 32, 32), "deep [4,64,512,4,4]": (4, 64, 512, 4, 4)},
}
SHAPES = SHAPE_SETS["b10c880"]
# Shapes too large for the reference and the torch path: only these providers run there.
BIG_ONLY = ("staa-triton", "staa-triton-graph", "sj-lif", "sj-lif-graph")
DTYPES = ("float32", "bfloat16")
# In order of importance: a row cut short by the time budget keeps the first ones.
PROVIDERS = ("staa-triton", "sj-lif", "staa-triton-graph", "sj-lif-graph", "reference-compile", "staa-torch",
             "reference-eager", "staa-torch-compile", "staa-torch-graph", "staa-triton-per_step",
             "staa-triton-persistent", "staa-triton-single_step", "sj-lif-single_step")
COMPILED = ("reference-compile", "staa-torch-compile")
# (label, provider, other, kind, bound): kind "faster" = other / provider >= bound, "time" = provider / other <= bound
GOALS = (
    ("staa-triton vs reference-eager", "staa-triton", "reference-eager", "faster", 10.0),
    ("staa-triton vs reference-compile", "staa-triton", "reference-compile", "faster", 3.0),
    ("staa-triton vs sj-lif, both eager", "staa-triton", "sj-lif", "time", 3.0),
    ("staa-triton vs sj-lif, both CUDA-graph replays", "staa-triton-graph", "sj-lif-graph", "time", 2.0),
)


def run_label(torch=None) -> tuple:
    """(commit, device) for result files: ``STAA_COMMIT`` or git's short hash (``+dirty`` with local
    changes), and the CUDA device's name (``STAA_DEVICE`` or torch's)."""
    commit = os.environ.get("STAA_COMMIT")
    if not commit:
        here = os.path.dirname(os.path.abspath(__file__))
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=here, timeout=10).stdout.strip() or "unknown"
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True, cwd=here, timeout=10).stdout.strip()
            commit += "+dirty" if dirty and commit != "unknown" else ""
        except Exception:
            commit = "unknown"
    device = os.environ.get("STAA_DEVICE")
    if not device and torch is not None and torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    return commit, device or "no CUDA device"


def ideal_bytes(shape, dtype_size):
    T, B, C, H, W = shape
    return T * B * C * H * W * (5 * dtype_size + 8)


def make_inputs(shape, dtype, torch, dev="cuda"):
    """The row's input and output gradient, shared by its providers (one copy at the large shape)."""
    x = torch.randn(shape, device=dev, dtype=torch.float32).mul_(0.8).add_(0.35).to(dtype).requires_grad_(True)
    return x, torch.randn(shape, device=dev, dtype=dtype)


def graphed(run, leaves, torch):
    """``run`` (one forward + backward) captured in a CUDA graph after three warm-up calls on a side
    stream; returns the replay. ``leaves`` get their ``.grad`` allocated inside the graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            run()
    torch.cuda.current_stream().wait_stream(side)
    for t in leaves:
        t.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph.replay


def make_provider(name, x, gy, torch):
    """A closure running one forward + backward on ``x`` (gradient ``gy``), or raises why it cannot."""
    import staa

    T, B, C, H, W = x.shape
    dev = x.device
    if name.endswith("-graph"):
        if dev.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        base = name[:-len("-graph")]
        run, leaves = _module_run(base, x, gy, torch)
        return graphed(run, leaves, torch)
    if name in ("staa-triton-per_step", "staa-triton-persistent"):
        # Force one of the two loop structures of the kernels (STAA_TRITON_PATH), to see which wins per shape.
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
    return _module_run(name, x, gy, torch)[0]


def _module_run(name, x, gy, torch):
    """(run, leaves) for the module providers: the STAALIF backends (``-compile``: under
    ``torch.compile``) and spikingjelly's multi-step LIF."""
    import staa

    T, C = x.shape[0], x.shape[2]
    if name.startswith("staa-"):
        backend = name.split("-")[1]
        m = staa.STAALIF(C, T, backend=backend, device=x.device).train()
        layer = torch.compile(m) if name.endswith("-compile") else m

        def run():
            m.reset()
            layer(x).backward(gy)
        return run, [x, *m.parameters()]
    if name == "sj-lif":
        from spikingjelly.activation_based import neuron

        try:
            lif = neuron.LIFNode(step_mode="m", backend="triton")
        except Exception:
            lif = neuron.LIFNode(step_mode="m")

        def run():
            lif.reset()
            lif(x).backward(gy)
        return run, [x]
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


def _row_providers(providers, sname, shape, dname, compile_dtypes, big):
    """(providers to run, {provider: why not}) for one row."""
    run, why = [], {}
    for p in providers:
        if big and p not in BIG_ONLY:
            why[p] = "not run at this shape (Triton route and sj-lif only)"
        elif p in COMPILED and dname not in compile_dtypes:
            why[p] = f"not run at {dname} (--compile-dtypes {','.join(compile_dtypes)})"
        else:
            run.append(p)
    return run, why


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="STAA-LIF GPU benchmark (fwd+bwd)")
    ap.add_argument("--out", required=True, help="folder for NAME.md / NAME.json")
    ap.add_argument("--name", default="gpu_neuron", help="file name stem of the tables (default gpu_neuron)")
    ap.add_argument("--shapes", default="user", choices=sorted(SHAPE_SETS), help="shape set (default user)")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated (default float32,bfloat16)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget", type=float, default=220.0, help="seconds; later rows are skipped past it")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--compile-dtypes", default="float32",
                    help="dtypes at which the torch.compile providers run (each is a compilation; default float32)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan; needs no GPU")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="exercise the whole script on the CPU with a tiny shape (a test of the script, not a benchmark)")
    ns = ap.parse_args(argv)
    providers = [p for p in ns.providers.split(",") if p]
    unknown = set(providers) - set(PROVIDERS)
    if unknown:
        ap.error(f"unknown providers {sorted(unknown)}; expected some of {', '.join(PROVIDERS)}")
    dtypes = [d for d in ns.dtypes.split(",") if d]
    if not dtypes or set(dtypes) - set(DTYPES):
        ap.error(f"--dtypes must be some of {','.join(DTYPES)}, got {ns.dtypes!r}")
    compile_dtypes = [d for d in ns.compile_dtypes.split(",") if d]
    if ns.rounds < 3:
        ap.error(f"--rounds must be >= 3, got {ns.rounds}")
    shapes = dict(SHAPE_SETS[ns.shapes])
    if ns.cpu_smoke:
        shapes = {"smoke [2,2,6,3,3]": (2, 2, 6, 3, 3)}
    # every shape in float32 first (the goals are stated there), then bfloat16: a run cut short by the
    # time budget loses bfloat16 rows first
    plan = [(s, d) for d in dtypes for s in shapes]
    if ns.dry_run:
        print(f"bench_gpu dry run: out={ns.out} name={ns.name} rounds={ns.rounds} warmup={ns.warmup} "
              f"budget={ns.budget}s compile dtypes={','.join(compile_dtypes)}")
        print(f"providers: {', '.join(providers)}")
        for s, d in plan:
            run, _ = _row_providers(providers, s, shapes[s], d, compile_dtypes, s.startswith("big"))
            print(f"row: {s} {d} fwd+bwd, ideal bytes {ideal_bytes(shapes[s], 4 if d == 'float32' else 2)}; "
                  f"{', '.join(run)}")
        print(f"SJ_LIF_CUDA_IMPLEMENTATION={os.environ.get('SJ_LIF_CUDA_IMPLEMENTATION', '(unset)')}")
        return 0

    import torch

    cuda = not ns.cpu_smoke
    dev = "cuda" if cuda else "cpu"
    if cuda and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device (torch.cuda.is_available() is False); --cpu-smoke tests the script "
              "without one", file=sys.stderr)
        return 3
    t_start = time.time()
    os.makedirs(ns.out, exist_ok=True)
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    commit, device_name = run_label(torch)
    if not cuda:
        device_name = "CPU smoke run (not a benchmark)"
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
                 f"`python benchmarks/bench_gpu.py --out OUTDIR --name {ns.name} --shapes {ns.shapes}` "
                 f"({ns.rounds} rounds after {ns.warmup} warm-up calls; CUDA-event times; compiled providers at "
                 f"{','.join(compile_dtypes)}; SJ_LIF_CUDA_IMPLEMENTATION="
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
            for label, mine_p, other, kind, bound in GOALS:
                mine, o = med(s, d, mine_p), med(s, d, other)
                target = f">= {bound:g}x faster" if kind == "faster" else f"<= {bound:g}x the time"
                if mine is None or o is None:
                    lines.append(f"| {s} | {d} | {label} | {target} | not measured in this run | |")
                    continue
                if kind == "faster":
                    val, ok = f"{o / mine:.2f}x faster", o / mine >= bound
                else:
                    val, ok = f"{mine / o:.2f}x the time", mine / o <= bound
                lines.append(f"| {s} | {d} | {label} | {target} | {val} | {'yes' if ok else 'no'} |")
        with open(os.path.join(ns.out, ns.name + ".md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(ns.out, ns.name + ".json"), "w") as f:
            json.dump(dict(machine=machine, commit=commit, device=device_name, copy_tbs=copy_tbs,
                           rounds=ns.rounds, results=results), f, indent=1)
        return lines

    def build(p, x, gy):
        fn = make_provider(p, x, gy, torch)
        for _ in range(ns.warmup):
            fn()
        if cuda:
            torch.cuda.synchronize()
        return fn

    def failure(exc, what="failed"):
        return f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"

    for sname, dname in plan:
        shape, dtype = shapes[sname], getattr(torch, dname)
        big = sname.startswith("big")
        row, errors = _row_providers(providers, sname, shape, dname, compile_dtypes, big)
        times = {}
        try:
            x, gy = make_inputs(shape, dtype, torch, dev)
        except Exception as exc:  # e.g. out of memory
            errors.update({p: failure(exc, "inputs failed") for p in row})
            row = []
        # Rows whose tensors exceed 2 GB run one provider at a time, so that only one holds memory.
        one_at_a_time = x.numel() * 4 > 2 ** 31 if row else False
        groups = [[p] for p in row] if one_at_a_time else [row]
        for group in groups:
            fns = {}
            for p in group:
                if time.time() - t_start > ns.budget:
                    errors[p] = "skipped (time budget)"
                    continue
                try:
                    fns[p] = build(p, x, gy)
                except Exception as exc:
                    errors[p] = failure(exc)
                x.grad = None
            try:
                times.update(time_rounds(fns, ns.rounds, torch, cuda) if fns else {})
            except Exception as exc:  # e.g. out of memory: report the row, keep going
                errors.update({p: failure(exc, "failed while timing") for p in fns})
            del fns
            x.grad = None
            if cuda:
                torch.cuda.empty_cache()
        for p in providers:
            row_r = dict(shape=sname, dtype=dname, provider=p)
            if p in times:
                med, iqr = _q(times[p])
                row_r.update(median_ms=med, iqr_ms=iqr)
                if p in ("staa-triton", "staa-triton-graph"):
                    row_r["eff_tbs"] = ideal_bytes(shape, dtype.itemsize) / (med * 1e-3) / 1e12
                if one_at_a_time:
                    row_r["note"] = "timed alone"
            else:
                row_r["status"] = errors.get(p, "not run")
            results.append(row_r)
        x = gy = None
        if cuda:
            torch.cuda.empty_cache()
        write_tables()  # a partial table survives a timeout

    print("\n".join(write_tables()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
