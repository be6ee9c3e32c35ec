"""``python -m staa``: what STAALIF costs in a small spiking ResNet, next to a plain LIF.

Builds the embedded network of :mod:`staa._demo` (3x32x32 input) twice, with a plain
multi-step LIF and with STAALIF (same conv, BN and head weights), and prints: the
parameters STAA adds, forward and forward+backward time on this machine, the bytes saved
for backward per neuron-step, ``staa.profile`` of both networks and the STAALIF backend
that ran. ``--json`` prints the same as one JSON object. Progress goes to stderr.

``python -m staa selftest`` is the command line of :func:`staa.selftest` (``staa._selftest``):
the Triton kernels against the torch path and float64 on this machine's GPU (or, with
``--interpret``, on the CPU under ``TRITON_INTERPRET=1``); it exits non-zero when they disagree.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F

import staa
from staa import _demo
from staa._profile import profile
from staa._state import kept_state
from staa._text import aligned_rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m staa",
        description="Compare STAALIF with a plain LIF in a small spiking ResNet (3x32x32 input): parameters, "
        "time, memory saved for backward, firing rates, ACs/MACs and energy.",
        epilog="'python -m staa selftest --help': check the Triton kernels against the torch path on this machine.",
    )
    p.add_argument("--T", type=int, default=4, help="time steps (default 4)")
    p.add_argument("--batch", type=int, default=4, help="images per batch for timing and profiling (default 4)")
    p.add_argument("--width", type=int, default=16, help="channels of the first stage; then 2x, 4x (default 16)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--backend", default="auto", choices=staa._backend.BACKENDS, help="STAALIF backend (default auto)")
    p.add_argument("--repeat", type=int, default=3, help="timed rounds after one warm-up, LIF and STAALIF interleaved; the median is shown (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and the random input images (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    return p


class _Progress:
    def __init__(self, steps: int):
        self.steps, self.i, self.t0 = steps, 0, time.perf_counter()

    def __call__(self, what: str) -> None:
        self.i += 1
        print(f"[{self.i}/{self.steps} {time.perf_counter() - self.t0:5.1f}s] {what}", file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved_median_ms(fns: dict, repeat: int, device: torch.device) -> dict:
    """Median wall time of each callable; one warm-up each, then rounds that run every callable once,
    so a load change on a shared machine hits all of them alike."""
    for fn in fns.values():
        fn()
    _sync(device)
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def _timings(models: dict, img, labels, repeat, device) -> dict:
    def forward(model):
        def run():
            model.eval()
            with torch.no_grad():
                model(img)
        return run

    def train_step(model):
        def run():
            model.train()
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(img), labels).backward()
        return run

    with kept_state(*models.values()):
        fwd = _interleaved_median_ms({k: forward(m) for k, m in models.items()}, repeat, device)
        bwd = _interleaved_median_ms({k: train_step(m) for k, m in models.items()}, repeat, device)
    return {k: {"forward_ms": fwd[k], "forward_backward_ms": bwd[k]} for k in models}


class _Held:
    """What the pack hook hands autograd: it lives exactly as long as the saved tensor."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


def _saved_bytes(model, img) -> dict:
    """Bytes autograd holds for backward after one training forward, each storage once:
    those saved inside the neuron layers (per neuron-step) and in the whole network.

    Tensors saved during the forward but freed before it ends (parts of the graph that do
    not lead to the output) are not counted."""
    neurons = _demo.neuron_layers(model)
    inside = [0]
    neuron_steps = [0]
    held = []

    def pre(module, args):
        inside[0] += 1

    def post(module, args, out):
        inside[0] -= 1
        neuron_steps[0] += out.numel()

    def pack(t):
        h = _Held(t)
        held.append((weakref.ref(h), bool(inside[0])))
        return h

    handles = [h for m in neurons for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda h: h.tensor):
            out = model(img)
    finally:
        for h in handles:
            h.remove()
    all_storages, neuron_storages = {}, {}
    for ref, in_neuron in held:
        h = ref()
        if h is None:
            continue
        st = h.tensor.untyped_storage()
        key = (h.tensor.device, st.data_ptr())
        all_storages[key] = st.nbytes()
        if in_neuron:
            neuron_storages[key] = st.nbytes()
    del out
    neuron_bytes = sum(neuron_storages.values())
    return {
        "neuron_bytes": neuron_bytes,
        "neuron_steps": neuron_steps[0],
        "bytes_per_neuron_step": neuron_bytes / neuron_steps[0],
        "network_bytes": sum(all_storages.values()),
    }


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    load = f", load average {os.getloadavg()[0]:.1f} at start" if hasattr(os, "getloadavg") else ""
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads{load} (torch {torch.__version__})"


def run(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {args.device}: this torch build has no usable CUDA device "
                           f"(torch {torch.__version__}); use --device cpu")
    for name in ("T", "batch", "width", "repeat"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    backend = staa.backend_for(torch.empty(0, device=device), args.backend)
    progress = _Progress(5)

    progress(f"building the networks (width {args.width}, T={args.T}) on {device}")
    lif, snn = _demo.build_pair(args.width, args.T, backend=args.backend, seed=args.seed, device=device)
    img = _demo.example_images(args.batch, device, seed=args.seed)
    labels = torch.arange(args.batch, device=device) % 10
    progress("calibrating batch-norm statistics on the example batch")
    _demo.calibrate_batchnorm(lif, img)
    _demo.calibrate_batchnorm(snn, img)
    n_lif = sum(p.numel() for p in lif.parameters())
    n_staa = sum(p.numel() for p in snn.parameters())

    result = {
        "config": {"T": args.T, "batch": args.batch, "width": args.width, "input": [3, 32, 32], "device": str(device),
                   "repeat": args.repeat, "seed": args.seed},
        "machine": _machine(device),
        "torch": torch.__version__,
        "staa": staa.__version__,
        "backend": backend,
        "parameters": {"lif": n_lif, "staa": n_staa, "added": n_staa - n_lif},
    }
    progress("timing both networks in interleaved rounds (forward, forward+backward)")
    result["time_ms"] = _timings({"lif": lif, "staa": snn}, img, labels, args.repeat, device)
    progress("measuring memory saved for backward")
    with kept_state(lif, snn):
        result["saved_for_backward"] = {"lif": _saved_bytes(lif, img), "staa": _saved_bytes(snn, img)}
    progress("profiling both networks (eval)")
    reports = {"lif": profile(lif, img), "staa": profile(snn, img)}
    result["profile"] = {k: r.to_dict() for k, r in reports.items()}
    result["_reports"] = reports
    return result


def _fmt_bytes(b: float) -> str:
    for div, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if b >= div:
            return f"{b / div:.1f} {unit}"
    return f"{b:.0f} B"


def render(result: dict) -> str:
    cfg, p, t, s = result["config"], result["parameters"], result["time_ms"], result["saved_for_backward"]
    reports = result["_reports"]
    lines = [
        f"staa {result['staa']}: STAALIF vs plain LIF in a spiking ResNet "
        f"(input 3x32x32, T={cfg['T']}, batch {cfg['batch']}, width {cfg['width']})",
        f"machine: {result['machine']}",
        f"STAALIF backend: {result['backend']}",
        "",
    ]
    rows = [
        ("", "LIF", "STAALIF", "STAALIF vs LIF"),
        ("parameters", f"{p['lif']:,}", f"{p['staa']:,}", f"+{p['added']:,} ({100 * p['added'] / p['lif']:.1f}%)"),
    ]
    for key, label in (("forward_ms", "forward, eval (ms)"), ("forward_backward_ms", "forward+backward, train (ms)")):
        a, b = t["lif"][key], t["staa"][key]
        rows.append((label, f"{a:.1f}", f"{b:.1f}", f"x{b / a:.2f}"))
    a, b = s["lif"]["bytes_per_neuron_step"], s["staa"]["bytes_per_neuron_step"]
    rows.append(("saved for backward per neuron-step (B)", f"{a:.1f}", f"{b:.1f}", f"x{b / a:.2f}"))
    a, b = s["lif"]["network_bytes"], s["staa"]["network_bytes"]
    rows.append(("saved for backward, whole network", _fmt_bytes(a), _fmt_bytes(b), f"x{b / a:.2f}"))
    ra, rb = reports["lif"], reports["staa"]
    rows.append(("firing rate", f"{ra.firing_rate:.3f}", f"{rb.firing_rate:.3f}", ""))
    rows.append(("ACs per inference", f"{ra.total_acs / 1e6:.2f}M", f"{rb.total_acs / 1e6:.2f}M", ""))
    rows.append(("MACs per inference", f"{ra.total_macs / 1e6:.2f}M", f"{rb.total_macs / 1e6:.2f}M", ""))
    rows.append(("energy per inference (uJ)", f"{ra.energy_j * 1e6:.2f}", f"{rb.energy_j * 1e6:.2f}",
                 f"x{rb.energy_j / ra.energy_j:.2f}"))
    lines += aligned_rows(rows, right=(1, 2, 3))
    runs = f"median of {cfg['repeat']} interleaved rounds" if cfg["repeat"] > 1 else "1 round"
    lines.append(f"(time: {runs} after a warm-up; forward+backward is one training step with cross-entropy)")
    for key, title in (("lif", "LIF network"), ("staa", "STAALIF network")):
        lines += ["", f"staa.profile, {title}:", str(reports[key])]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ selftest
# The self-test itself is staa._selftest (staa.selftest); this is its command line.


def _names(values):
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``: lists may be given space- or comma-separated."""
    if values is None:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _shape_arg(text: str) -> tuple:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) not in (3, 5) or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected T,B,C or T,B,C,H,W with positive integers, got {text!r}")
    return shape


def _selftest_parser() -> argparse.ArgumentParser:
    from staa import _selftest as st

    p = argparse.ArgumentParser(
        prog="python -m staa selftest",
        description="Check the Triton kernels on this machine: STAALIF's op with backend='triton' against "
        "backend='torch' and float64 (same weights, input and TSRD mask), forward and backward, both time-loop "
        "paths; small cases exactly, layer-sized float32/bfloat16 cases statistically (spike agreement, gradient "
        "cosine, error vs float64 against the torch path's), every surrogate kind, single-step chains. On CUDA it "
        "then times forward+backward and ends with a recommended backend. Exit status 0 when every case passes, "
        "1 on a failure or when the filters select no case, 2 when the kernels cannot run here or an argument "
        "is wrong.",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--interpret", action="store_true",
                   help="on the CPU, run the kernels in the Triton interpreter (TRITON_INTERPRET=1; slow, small "
                   "shapes)")
    p.add_argument("--tiny", action="store_true", help="only small shapes (the default under --interpret)")
    p.add_argument("--shape", action="append", type=_shape_arg, metavar="T,B,C[,H,W]",
                   help="your layer, for the layer cases and the timing (repeatable; default "
                   + " and ".join(",".join(map(str, s)) for s in st.LAYER_SHAPES) + ")")
    p.add_argument("--dtypes", nargs="+", default=None, metavar="DTYPE",
                   help=f"keep these input dtypes ({', '.join(st.DTYPES)}; the cases use {', '.join(st.CASE_DTYPES)})")
    p.add_argument("--paths", nargs="+", default=None, metavar="PATH",
                   help=f"keep these loop paths ({', '.join(st.PATHS)})")
    p.add_argument("--surrogates", nargs="+", default=None, metavar="KIND",
                   help=f"keep these surrogate kinds ({', '.join(st.SURROGATES)})")
    p.add_argument("--groups", nargs="+", default=None, metavar="GROUP",
                   help=f"keep these case groups ({', '.join(st.GROUPS)})")
    p.add_argument("--no-timing", action="store_true", help="skip the forward+backward timing (CUDA only anyway)")
    p.add_argument("--providers", nargs="+", default=None, metavar="NAME",
                   help=f"what to time ({', '.join(st.PROVIDERS)}; default all)")
    p.add_argument("--repeat", type=int, default=20, help="timed rounds (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and inputs (default 0)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="also write the report as JSON to PATH ('-': to stdout, the text then goes to stderr)")
    return p


def selftest_main(argv) -> int:
    from staa import _selftest as st

    args = _selftest_parser().parse_args(argv)
    text = sys.stderr if args.json == "-" else sys.stdout

    def say(line):
        print(line, file=text, flush=True)

    providers = _names(args.providers) or list(st.PROVIDERS)
    try:
        report = st.selftest(args.device, args.shape, dtypes=_names(args.dtypes), paths=_names(args.paths),
                             surrogates=_names(args.surrogates), groups=_names(args.groups), tiny=args.tiny,
                             interpret=args.interpret, timing=False if args.no_timing else None, providers=providers,
                             repeat=args.repeat, seed=args.seed, out=say)
    except st.NoCaseSelected as exc:
        print(f"python -m staa selftest: error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"python -m staa selftest: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"python -m staa selftest: cannot run: {exc}", file=sys.stderr)
        return 2
    for line in report.tail():
        say(line)
    if args.json:
        payload = json.dumps(report.to_dict(), indent=2)
        if args.json == "-":
            print(payload)
        else:
            Path(args.json).write_text(payload + "\n")
    return 0 if report.ok else 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["selftest"]:
        return selftest_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        result = run(args)
    except (ValueError, RuntimeError) as exc:
        print(f"python -m staa: error: {exc}", file=sys.stderr)
        return 2
    reports = result.pop("_reports")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        result["_reports"] = reports
        print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
