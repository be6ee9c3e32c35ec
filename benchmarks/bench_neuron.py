"""Speed and memory of one STAA-LIF layer: staa's backends against the reference and a plain LIF.

Providers (each where available):
  staa-torch      STAALIF(backend="torch"): the custom op with the hand-written backward
  staa-triton     STAALIF(backend="triton") (CUDA tensors only)
  reference       the plain reference (staa.reference.staa_lif_reference), eager
  ref-compiled    the reference under torch.compile (compile time reported separately)
  sj-LIF          spikingjelly LIFNode(step_mode="m"), the cost of a plain LIF neuron

Modes: ``fwd`` (forward with autograd recording, as in training), ``bwd`` (backward alone,
after an untimed forward) and ``fwd+bwd``. Every shape/mode runs ``--rounds`` interleaved
rounds (one call of each provider per round, in a rotating order) so that load from other
processes hits all providers alike; the tables give the median and the interquartile range.

Saved memory: bytes autograd keeps for backward per neuron-step (T*B*C*H*W), each storage
counted once, parameters excluded, measured with ``torch.autograd.graph.saved_tensors_hooks``
(not visible inside a compiled graph, so not reported for ref-compiled). Peak memory: on
CUDA ``torch.cuda.max_memory_allocated``; on Linux CPUs the growth of the peak resident set
(VmHWM, reset through /proc/self/clear_refs) of a fresh process over one fwd+bwd, input and
output gradients included (``--no-peak`` skips it).

    python benchmarks/bench_neuron.py     # default shapes -> benchmarks/results/neuron_<device>.{md,json}
    python benchmarks/bench_neuron.py --rounds 5 --shapes cifar --no-compile --no-peak   # a quick look

TSRD is off (``tsrd=0``) so every provider computes the same thing every round.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import shlex
import subprocess
import sys
import time

# Time a cold compile, as a new process pays it, not a hit in inductor's on-disk cache.
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "src"))

import staa  # noqa: E402
from staa.reference import staa_lif_reference  # noqa: E402
from _memory import saved_tensor_bytes  # noqa: E402  (benchmarks/_memory.py)
from _machine import cpu_name  # noqa: E402  (benchmarks/ is on sys.path)

SHAPES = {
    "cifar": (4, 32, 64, 16, 16),  # a CIFAR ResNet/VGG stage-2 layer
    "deep": (4, 32, 256, 4, 4),  # a late, narrow-spatial layer
    "fc": (4, 32, 1024),  # a [T, B, C] classifier-side layer
}
MODES = ("fwd", "bwd", "fwd+bwd")


# ----------------------------------------------------------------------------- providers
def _randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


class Provider:
    """A callable ``x -> spikes`` plus the parameters it trains."""

    def __init__(self, name, fn, params):
        self.name, self.fn, self.params = name, fn, list(params)


def make_providers(shape, device, dtype, names):
    T, C = shape[0], shape[2]
    layer = staa.STAALIF(C, T, tsrd=0.0, backend="torch", device=device, dtype=dtype)
    _randomize(layer)
    out = []

    def reference(x):
        x4 = x.reshape(T, x.shape[1], C, -1)
        return staa_lif_reference(x4, layer.params(), None, **layer.cfg._asdict()).reshape(x.shape)

    if "staa-torch" in names:
        out.append(Provider("staa-torch", layer, layer.parameters()))
    # on CUDA whenever the kernels can run there (auto picks them only on verified GPUs, so it is not asked)
    if "staa-triton" in names and device.type == "cuda" and staa._backend.triton_unavailable_reason(device) is None:
        tri = staa.STAALIF(C, T, tsrd=0.0, backend="triton", device=device, dtype=dtype)
        tri.load_state_dict(layer.state_dict())
        out.append(Provider("staa-triton", tri, tri.parameters()))
    if "staa-torch-s" in names:  # single-step: T calls of one step each, the state carried (BPTT through it)
        single = staa.STAALIF(C, T, tsrd=0.0, backend="torch", step_mode="s", device=device, dtype=dtype)
        single.load_state_dict(layer.state_dict())

        def staa_single(x):
            single.reset()  # unbind, not x[t]: T select backwards would each zero-fill a [T, ...] gradient
            return torch.stack([single(xt) for xt in x.unbind(0)])

        out.append(Provider("staa-torch-s", staa_single, single.parameters()))
    if "reference" in names:
        out.append(Provider("reference", reference, layer.parameters()))
    if "ref-compiled" in names:
        out.append(Provider("ref-compiled", torch.compile(reference, dynamic=False), layer.parameters()))
    for name, step_mode in (("sj-LIF", "m"), ("sj-LIF-s", "s")):
        if name in names:
            p = _sj_lif_provider(name, step_mode)
            if p is not None:
                out.append(p)
    return out


def _sj_lif_provider(name, step_mode):
    """spikingjelly's LIFNode over a [T, ...] input: one multi-step call, or T single-step calls."""
    try:
        from spikingjelly.activation_based import neuron
    except Exception:
        return None
    lif = neuron.LIFNode(step_mode=step_mode)

    def run(x):
        lif.reset()
        return lif(x) if step_mode == "m" else torch.stack([lif(xt) for xt in x.unbind(0)])

    return Provider(name, run, [])


# ----------------------------------------------------------------------------- timing
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_once(p: Provider, x, gout, mode, device):
    """Seconds for one call of ``mode``."""
    x.grad = None
    for w in p.params:
        w.grad = None
    if mode == "bwd":
        s = p.fn(x)
        _sync(device)
        t0 = time.perf_counter()
        s.backward(gout)
        _sync(device)
        return time.perf_counter() - t0
    _sync(device)
    t0 = time.perf_counter()
    s = p.fn(x)
    if mode == "fwd+bwd":
        s.backward(gout)
    _sync(device)
    return time.perf_counter() - t0


def saved_bytes(p: Provider, x):
    """Bytes saved for backward by one forward of provider ``p`` (parameters excluded)."""
    return saved_tensor_bytes(p.fn, x, exclude=p.params)[1]


_PEAK_CHILD = r"""
import sys, json, torch
sys.path.insert(0, {src!r}); sys.path.insert(0, {here!r})
torch.set_num_threads({threads})
from bench_neuron import make_providers
shape = {shape!r}
small = (shape[0], 2) + tuple(shape[2:])
peaks = {{}}
for p in make_providers(small, torch.device("cpu"), torch.float32, [{name!r}]):
    x = torch.randn(small, requires_grad=True); p.fn(x).backward(torch.randn(small))  # warm up lazy init
    x = torch.randn(shape, requires_grad=True); g = torch.randn(shape)
    p = make_providers(shape, torch.device("cpu"), torch.float32, [{name!r}])[0]
    def status(key):
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith(key + ":"))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set (VmHWM) to the current one
    before = status("VmRSS")
    p.fn(x).backward(g)
    peaks[p.name] = status("VmHWM") - before
print(json.dumps(peaks))
"""


def peak_cpu(name, shape, threads):
    code = _PEAK_CHILD.format(src=os.path.join(ROOT, "src"), here=HERE, shape=tuple(shape), name=name, threads=threads)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        return None
    return json.loads(res.stdout.strip().splitlines()[-1]).get(name)


def peak_cuda(p: Provider, x, gout):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    p.fn(x).backward(gout)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def quartiles(ts):
    q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
    return q[0], statistics.median(ts), q[2]


# ----------------------------------------------------------------------------- report
def machine_info(device, threads):
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "staa": staa.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
    }
    info["cpu"] = cpu_name()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import importlib.metadata as md

        info["spikingjelly"] = md.version("spikingjelly")
    except Exception:
        info["spikingjelly"] = None
    try:
        info["commit"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True).stdout.strip()
    except OSError:
        info["commit"] = None
    return info


def fmt_ms(q):
    lo, med, hi = q
    return f"{med * 1e3:.1f} ({lo * 1e3:.1f}-{hi * 1e3:.1f})"


def write_report(results, info, path_md, path_json, notes, command=None):
    with open(path_json, "w") as f:
        json.dump({"machine": info, "command": command, "notes": notes, "results": results}, f, indent=1)
    lines = ["# STAA-LIF neuron benchmark", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines.append(
        f"Machine: {info.get('gpu') or info['cpu']}, {info['cpu_count']} CPU cores ({info['machine']}), "
        f"torch threads {info['torch_threads']}; Python {info['python']}, torch {info['torch']}, "
        f"spikingjelly {info['spikingjelly']}; staa {info['staa']} at commit {info['commit']}; {info['date_utc']} UTC."
    )
    lines += ["", *notes, ""]
    lines.append("Times in ms: median (interquartile range) over the interleaved rounds. "
                 "`x LIF` is the median over rounds of the fwd+bwd time over spikingjelly LIFNode's in the same round. Saved = bytes kept for backward "
                 "per neuron-step (parameters excluded). Peak = extra memory of one fwd+bwd.")
    for shape_name, r in results.items():
        lines += ["", f"## {shape_name}: input {list(r['shape'])} {r['dtype']}", ""]
        lines.append("| provider | fwd | bwd | fwd+bwd | x LIF | saved B/neuron-step | peak MiB |")
        lines.append("|---|---|---|---|---|---|---|")
        for name, pr in r["providers"].items():
            ratio = f"{pr['x_lif']:.2f}" if "x_lif" in pr else "-"
            saved = "-" if pr.get("saved_bytes_per_neuron_step") is None else f"{pr['saved_bytes_per_neuron_step']:.2f}"
            peak = "-" if pr.get("peak_bytes") is None else f"{pr['peak_bytes'] / 2**20:.0f}"
            lines.append(f"| {name} | {fmt_ms(pr['fwd'])} | {fmt_ms(pr['bwd'])} | {fmt_ms(pr['fwd+bwd'])} | "
                         f"{ratio} | {saved} | {peak} |")
        if r.get("compile_s") is not None:
            lines.append("")
            lines.append(f"ref-compiled: the first fwd+bwd call, with a cold compile, took {r['compile_s']:.1f} s "
                         "(not included above).")
    with open(path_md, "w") as f:
        f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shapes", default="cifar,deep,fc", help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--providers", default="staa-torch,staa-torch-s,staa-triton,reference,ref-compiled,sj-LIF,sj-LIF-s",
                    help="comma list; '-s' providers run single-step (T calls, state carried)")
    ap.add_argument("--compile-shapes", default="cifar", help="shapes on which ref-compiled runs ('all' or a list)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-peak", action="store_true")
    ap.add_argument("--out", default=None, help="output stem (default benchmarks/results/neuron_<device>)")
    ap.add_argument("--note", action="append", default=[], help="a line added to the report")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    names = args.providers.split(",")
    if args.no_compile:
        names = [n for n in names if n != "ref-compiled"]
    compile_shapes = list(SHAPES) if args.compile_shapes == "all" else args.compile_shapes.split(",")
    info = machine_info(device, args.threads)
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    t_start = time.time()
    results = {}
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name]
        use = [n for n in names if n != "ref-compiled" or shape_name in compile_shapes]
        provs = make_providers(shape, device, dtype, use)
        g = torch.Generator(device="cpu").manual_seed(0)
        x = (torch.randn(shape, generator=g) * 1.5 + 0.5).to(device=device, dtype=dtype).requires_grad_()
        gout = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
        entry = {"shape": list(shape), "dtype": args.dtype, "providers": {}}
        for p in provs:  # warm up (and compile)
            t0 = time.perf_counter()
            time_once(p, x, gout, "fwd+bwd", device)
            if p.name == "ref-compiled":
                entry["compile_s"] = time.perf_counter() - t0
                with torch.no_grad():
                    p.fn(x)
            time_once(p, x, gout, "fwd+bwd", device)
        times = {(p.name, m): [] for p in provs for m in MODES}
        for r in range(args.rounds):
            for m in MODES:
                k = (r + MODES.index(m)) % len(provs)
                for p in provs[k:] + provs[:k]:
                    times[(p.name, m)].append(time_once(p, x, gout, m, device))
        n_neuron_steps = x.numel()
        lif_times = times.get(("sj-LIF", "fwd+bwd"))
        for p in provs:
            pr = {m: quartiles(times[(p.name, m)]) for m in MODES}
            if lif_times:
                # per-round ratio: both calls ran seconds apart, under the same outside load
                pr["x_lif"] = statistics.median(a / b for a, b in zip(times[(p.name, "fwd+bwd")], lif_times))
            if p.name != "ref-compiled":
                pr["saved_bytes_per_neuron_step"] = saved_bytes(p, x) / n_neuron_steps
            if not args.no_peak:
                if device.type == "cuda":
                    pr["peak_bytes"] = peak_cuda(p, x, gout)
                elif p.name != "ref-compiled" and dtype == torch.float32:
                    pr["peak_bytes"] = peak_cpu(p.name, shape, args.threads)
            entry["providers"][p.name] = pr
            print(f"{shape_name:6s} {p.name:13s} " + "  ".join(f"{m} {fmt_ms(pr[m])}" for m in MODES), flush=True)
        results[shape_name] = entry
    load1 = os.getloadavg() if hasattr(os, "getloadavg") else None
    notes = list(args.note)
    notes.append(f"{args.rounds} interleaved rounds per shape and mode; whole run {time.time() - t_start:.0f} s.")
    if load0 is not None:
        notes.append(f"1-minute load average {load0[0]:.1f} at the start and {load1[0]:.1f} at the end "
                     f"(on {info['cpu_count']} cores; the average trails by about a minute and counts this "
                     f"run's own {torch.get_num_threads()} thread(s)).")
    info["loadavg_start"], info["loadavg_end"] = load0, load1
    stem = args.out or os.path.join(HERE, "results", f"neuron_{device.type}")
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    command = " ".join(["python benchmarks/bench_neuron.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    write_report(results, info, stem + ".md", stem + ".json", notes, command)
    print(f"wrote {stem}.md and {stem}.json")


if __name__ == "__main__":
    main()
