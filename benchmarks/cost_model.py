"""Predicted GPU time of one STAA-LIF layer's forward + backward, from the CPU meter's counts.

Constants (fixed before any check; none is fitted on the figures the model is checked against):

    device            bandwidth BW                        SMs   source
    H200              4.14 TB/s (4.8 data sheet)          132   BW: the device-to-device copy the b10c880 run measured
    H100 SXM          2.89 TB/s (3.35 data sheet)         132   data sheet x the H200's measured copy / data-sheet ratio
    T_RT   = 0.6 µs   one dependent global-memory round trip (HBM load latency on Hopper, published
                      microbenchmarks: about 0.5-0.7 µs with the loop's own instructions)
    T_DEV  = 2.0 µs   device time of one kernel besides its work (launch, ramp-up, drain), back to back
    T_DRV  = 5.0 µs   host: the driver launch of one Triton kernel (argument packing, cuLaunchKernel), which
                      benchmarks/host_cost.py does not measure
    T_OP   = 8.0 µs   host: one eager torch operation on CUDA (dispatch, allocation, launch)
    T_TRI  = 20 µs    host: a Triton launch's Python side (launcher + binding) when no host_cost.json is
                      given; with ``--host FILE`` (benchmarks/host_cost.py's JSON) the measured per-layer launcher
                      and binding time is used instead

Per launch k (from the meter: distinct bytes, programs, the largest per-program chain of block loads):

    device_k = T_DEV + max(bytes_k / (BW * min(1, programs_k / SMs)), chain_k * T_RT)

(a program alone on an SM draws at most 1/SMs of the bandwidth; a chain of dependent loads cannot be
shorter than its round trips). Torch operations on the route (and the module's glue) count T_DEV each on the
device. Host: Triton launches x (T_TRI + T_DRV) (or the measured launcher time + launches x T_DRV) + torch
operations x T_OP. CUDA-graph replay = device; eager = max(device, host).

Counts: the meter runs under ``TRITON_INTERPRET=1`` at small batches (B = 1 and 2 at the target's T, C and
plane); every per-launch figure (bytes, programs, chain) is affine in B for these kernels (per-sample
programs, ``[.., B, ..]`` buffers, weights independent of B), so the two points extrapolate exactly to the
target B; launches and torch operations do not depend on B. Shapes whose plane is too large for the
interpreter are measured at two smaller planes (8x8 and 16x16 for the big shape) and extrapolated bilinearly in (B, P) (exact for
bytes and programs, which are affine in P at fixed B; chains of the per-step kernels do not grow with P).

    python benchmarks/cost_model.py                          # predictions from the committed counts
    python benchmarks/cost_model.py --count [--tree REV]     # (re)count with the meter (minutes)
    python benchmarks/cost_model.py --check-b10c880          # count b10c880's kernels, predict its GPU run
    python benchmarks/cost_model.py --compare gpu_X_neuron.json gpu_X_graph.md [gpu_X_profile.md]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")

DEVICES = {
    "H200": dict(bw=4.14e12, bw_sheet=4.8e12, sms=132),
    "H100": dict(bw=3.35e12 * 4.14 / 4.8, bw_sheet=3.35e12, sms=132),
}
T_RT = 0.6e-6
T_DEV = 2.0e-6
T_DRV = 5.0e-6
T_OP = 8.0e-6
T_TRI = 20e-6
# A fused LIF (spikingjelly's Triton LIFNode): forward reads x, writes spikes and h; backward reads
# the gradient and h, writes dL/dx: 24 B per neuron-step in fp32, at one launch per direction.
FUSED_LIF_BYTES = 24
USER_SHAPES = {"u1": (4, 32, 128, 32, 32), "u2": (4, 64, 512, 4, 4), "big": (16, 128, 256, 64, 64)}
# The big shape's plane is too large for the interpreter: counted at these planes, extrapolated in P;
# only its per_step path (its plane is 512x over the persistent threshold).
BIG_PLANES = {"big": [(8, 8), (16, 16)]}
B10_SHAPES = {"early": (4, 64, 128, 32, 32), "deep": (4, 64, 512, 4, 4)}
# The b10c880 GPU run (H200; benchmarks/results/gpu_neuron.md, gpu_graph.md): ms of one fwd + bwd.
B10_MEASURED = {
    ("early", "float32", "per_step", "eager"): 7.68, ("early", "float32", "persistent", "eager"): 6.65,
    ("early", "bfloat16", "per_step", "eager"): 8.54, ("early", "bfloat16", "persistent", "eager"): 7.17,
    ("deep", "float32", "per_step", "eager"): 6.76, ("deep", "float32", "persistent", "eager"): 5.76,
    ("deep", "bfloat16", "per_step", "eager"): 5.78, ("deep", "bfloat16", "persistent", "eager"): 4.98,
    ("early", "float32", "per_step", "graph"): 1.21, ("early", "float32", "persistent", "graph"): 1.95,
    ("deep", "float32", "per_step", "graph"): 0.93, ("deep", "float32", "persistent", "graph"): 1.34,
}


# ============================================================================= the model
def byte_floor(shape, elem: int) -> float:
    """The op's byte floor per layer fwd + bwd: (5 s + 8 + 4/T) bytes per neuron-step (docs/triton.md)."""
    T = shape[0]
    n = 1
    for s in shape:
        n *= s
    return n * (5 * elem + 8 + 4 / T)


def launch_time(rec: dict, dev: dict) -> float:
    """Device seconds of one launch ``{bytes, programs, chain}``."""
    share = min(1.0, max(rec["programs"], 1) / dev["sms"])
    return T_DEV + max(rec["bytes"] / (dev["bw"] * share), rec["chain"] * T_RT)


def predict(counts: dict, dev: dict, host_launcher_s: float | None = None) -> dict:
    """Seconds of one fwd + bwd from ``counts`` = {launches: [{name, bytes, programs, chain}], ops, glue_ops}."""
    kernels = counts["launches"]
    device = sum(launch_time(r, dev) for r in kernels) + (counts["ops"] + counts["glue_ops"]) * T_DEV
    n = len(kernels)
    launcher = host_launcher_s if host_launcher_s is not None else n * T_TRI
    host = launcher + n * T_DRV + (counts["ops"] + counts["glue_ops"]) * T_OP
    per_kernel = {}
    for r in kernels:
        per_kernel[r["name"]] = per_kernel.get(r["name"], 0.0) + launch_time(r, dev)
    bound = max(per_kernel.items(), key=lambda kv: kv[1])[0] if per_kernel else None
    return dict(device=device, host=host, graph=device, eager=max(device, host), launches=n,
                ops=counts["ops"] + counts["glue_ops"], slowest_kernel=bound, per_kernel=per_kernel)


def fused_lif(shape, elem: int, dev: dict) -> dict:
    """A fused LIF at 24 B/neuron-step fp32 (its state in fp32, x and spikes in ``elem``): two launches."""
    n = 1
    for s in shape:
        n *= s
    b = n * (FUSED_LIF_BYTES - 2 * (4 - elem))
    device = 2 * T_DEV + b / dev["bw"]
    return dict(device=device, eager=max(device, 2 * (T_TRI + T_DRV)), graph=device)


def scale(points: list, B: int, P: int) -> dict:
    """Counts at (B, P) from meter points ``[{B, P, counts}]``: affine in B (two points), bilinear in
    (B, P) with four. Launch lists must match launch for launch."""
    pts = sorted(points, key=lambda p: (p["P"], p["B"]))
    Bs = sorted({p["B"] for p in pts})
    Ps = sorted({p["P"] for p in pts})
    if len(Bs) != 2 or len(pts) != 2 * len(Ps) or len(Ps) > 2:
        raise ValueError(f"need B at two values and P at one or two, got {[(p['B'], p['P']) for p in pts]}")
    grid = {(p["B"], p["P"]): p["counts"] for p in pts}
    b0, b1 = Bs
    fb = (B - b0) / (b1 - b0)
    fp = (P - Ps[0]) / (Ps[1] - Ps[0]) if len(Ps) == 2 else 0.0

    def at(getter):
        v00, v10 = getter(grid[(b0, Ps[0])]), getter(grid[(b1, Ps[0])])
        lo = v00 + (v10 - v00) * fb
        if len(Ps) == 1:
            return lo
        v01, v11 = getter(grid[(b0, Ps[1])]), getter(grid[(b1, Ps[1])])
        hi = v01 + (v11 - v01) * fb
        return lo + (hi - lo) * fp

    ref = grid[(b0, Ps[0])]
    for c in grid.values():
        if [r["name"] for r in c["launches"]] != [r["name"] for r in ref["launches"]] or c["ops"] != ref["ops"]:
            raise ValueError("the launch sequence changes with B or P: the counts cannot be scaled")
    launches = []
    for i, r in enumerate(ref["launches"]):
        launches.append(dict(name=r["name"], **{k: max(0.0, at(lambda c, k=k: c["launches"][i][k]))
                                                for k in ("bytes", "programs", "chain")}))
    return dict(launches=launches, ops=ref["ops"], glue_ops=ref["glue_ops"])


# ============================================================================= counting (interpreter)
COUNT_CODE = r"""
import json, os, sys
sys.path.insert(0, {bench!r})
import numpy as np
import meter

class LaunchMeter(meter.Meter):
    # The meter, plus per launch: its distinct bytes, its programs and the largest number of block
    # loads one program issues (the interpreter runs a launch's programs one after another).
    def __enter__(self):
        from triton.runtime import interpreter as interp
        self.log, self._prog = [], None
        IB = interp.InterpreterBuilder
        me = self
        def set_grid_idx(b, x, y, z):
            if me._prog is not None:
                me._prog["programs"] += 1
                me._prog["cur"] = 0
            return orig_grid(b, x, y, z)
        def create_masked_load(b, *a, **k):
            if me._prog is not None:
                me._prog["cur"] += 1
                me._prog["chain"] = max(me._prog["chain"], me._prog["cur"])
            return orig_load(b, *a, **k)
        super().__enter__()
        orig_grid, orig_load = IB.set_grid_idx, IB.create_masked_load  # the meter's own load hook inside
        IB.set_grid_idx, IB.create_masked_load = set_grid_idx, create_masked_load
        self._undo.append((IB, "create_masked_load", orig_load))
        self._undo.append((IB, "set_grid_idx", orig_grid))
        return self

    def _storages(self, args, kwargs):
        self._prog = dict(programs=0, chain=0, cur=0)
        return super()._storages(args, kwargs)

    def _finish_launch(self, name, rec):
        t = self.tallies.get(self.phase)
        before = t.distinct_bytes if t is not None else 0
        super()._finish_launch(name, rec)
        p, self._prog = self._prog, None
        if self.phase in meter.PHASES:
            self.log.append(dict(name=name, phase=self.phase, bytes=self.tallies[self.phase].distinct_bytes - before,
                                 programs=p["programs"], chain=p["chain"], tally=id(self.tallies[self.phase])))

out = []
with LaunchMeter() as m:
    for shape, dtype, path, *blocks in {jobs!r}:
        m.log = []
        row = m.measure(tuple(shape), dtype, path, blocks=blocks[0] if blocks else None)
        ops = row["forward"]["ops"] + row["backward"]["ops"]
        # the measured pass only (the meter's warm-up pass ran into tallies it then dropped)
        final = {{id(m.tallies[ph]) for ph in meter.PHASES}}
        log = [dict((k, v) for k, v in r.items() if k != "tally") for r in m.log if r["tally"] in final]
        if len(log) != row["total"]["launches"]:
            raise SystemExit(f"launch log {{len(log)}} != the meter's {{row['total']['launches']}} launches")
        out.append(dict(shape=shape, dtype=dtype, path=path, blocks=row["blocks"],
                        counts=dict(launches=log, ops=ops, glue_ops=row["glue_ops"])))
        print(shape, dtype, path, len(m.log), "launches", file=sys.stderr, flush=True)
from staa.kernels import launch
print(json.dumps(dict(staa=os.path.realpath(launch.__file__), rows=out)))
"""


def count(jobs: list, pkg: str | None = None, timeout: int = 7200) -> dict:
    """Run the meter (in a subprocess, ``TRITON_INTERPRET=1``; the tree at ``pkg`` when given) on
    ``jobs`` = [(shape, dtype, path)] or [(shape, dtype, path, blocks)] (``blocks``: STAALIF's
    ``gc``/``pe``/``sa`` switches)."""
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env.pop("STAA_TRITON_PATH", None)
    if pkg:
        env["PYTHONPATH"] = pkg + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    code = COUNT_CODE.format(bench=HERE, jobs=[(list(s), d, p, *rest) for s, d, p, *rest in jobs])
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=pkg or ROOT, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"the meter failed:\n{res.stderr[-4000:]}")
    data = json.loads(res.stdout.strip().splitlines()[-1])
    if pkg and not data["staa"].startswith(os.path.realpath(pkg) + os.sep):
        raise RuntimeError(f"the meter counted {data['staa']}, not the tree at {pkg}")
    return data


def count_points(shapes: dict, dtypes, paths, pkg=None, small_planes=None, only_paths=None) -> list:
    """Meter points per named shape: B = 1, 2 at the shape's T, C and plane (or, for names in
    ``small_planes``, at the two planes given there)."""
    jobs, index = [], []
    for name, shape in shapes.items():
        T, _, C, *sp = shape
        planes = small_planes.get(name) if small_planes else None
        for plane in (planes or [tuple(sp)]):
            for B in (1, 2):
                for d in dtypes:
                    for p in (only_paths or {}).get(name, paths):
                        jobs.append(((T, B, C, *plane), d, p))
                        index.append(name)
    data = count(jobs, pkg)
    for name, row in zip(index, data["rows"]):
        row["name"] = name
    return data["rows"]


def counts_at(rows: list, name: str, shape, dtype: str, path: str) -> dict:
    pts = []
    for r in rows:
        if r["name"] == name and r["dtype"] == dtype and r["path"] == path:
            P = 1
            for s in r["shape"][3:]:
                P *= s
            pts.append(dict(B=r["shape"][1], P=P, counts=r["counts"]))
    if not pts:
        return None  # not counted (e.g. the big shape's persistent path)
    return scale(pts, shape[1], _plane(shape))


# ============================================================================= comparison with a GPU run
def parse_graph_md(text: str) -> dict:
    """{(shape label, path or backend, mode): (eager ms, replay ms)} from a graph_gpu.py table."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or not re.match(r"^\d", cells[3] if len(cells) > 3 else ""):
            continue
        try:
            if len(cells) >= 6 and not re.match(r"^[\d.]+$", cells[2]):  # | shape | backend | mode | eager | replay |
                out[(cells[0], cells[1], cells[2])] = (float(cells[3]), float(cells[4]))
            else:  # | shape | path | eager | replay | ... (the b10c880 table)
                out[(cells[0], cells[1], "eval")] = (float(cells[2]), float(cells[3]))
        except ValueError:
            continue
    return out


def _shape_of(label: str):
    m = re.search(r"\[([\d,\s]+)\]", label)
    return tuple(int(v) for v in m.group(1).split(",")) if m else None


def compare(files: list, predictions: list) -> list:
    """Lines putting each measured figure in ``files`` beside its prediction (``predictions``: rows
    with shape, dtype, path, mode, predicted_ms)."""
    pred = {(tuple(r["shape"]), r["dtype"], r["path"], r["mode"]): r for r in predictions}
    measured = []
    for f in files:
        if f.endswith(".json"):
            with open(f) as fh:
                data = json.load(fh)
            for r in data.get("results", []):
                shape = _shape_of(r.get("shape", ""))
                prov = r.get("provider", "")
                if shape is None or "median_ms" not in r or not prov.startswith("staa-triton"):
                    continue
                mode = "graph" if prov.endswith("-graph") else "eager"
                path = prov[len("staa-triton-"):].replace("-graph", "") if prov.startswith("staa-triton-") else "auto"
                path = path or "auto"
                if path in ("single_step", "graph"):
                    path = "auto" if path == "graph" else path
                measured.append((shape, r["dtype"], path, mode, r["median_ms"], os.path.basename(f)))
        elif f.endswith(".md") and "graph" in os.path.basename(f):
            with open(f) as fh:
                for (label, backend, mode), (eager, replay) in parse_graph_md(fh.read()).items():
                    shape = _shape_of(label)
                    if shape is None or backend not in ("triton", "per_step", "persistent"):
                        continue
                    path = "auto" if backend == "triton" else backend
                    measured.append((shape, "float32", path, "graph", replay, os.path.basename(f)))
    lines = ["| shape | dtype | path | mode | measured ms | predicted ms | error | source |",
             "|---|---|---|---|---|---|---|---|"]
    for shape, dtype, path, mode, ms, src in measured:
        p = pred.get((shape, dtype, path, mode))
        if p is None:
            lines.append(f"| {list(shape)} | {dtype} | {path} | {mode} | {ms:.3f} | no prediction | | {src} |")
            continue
        err = p["predicted_ms"] / ms - 1
        why = "" if abs(err) <= 0.30 else f" (> 30%: {p.get('why', 'see the model')})"
        lines.append(f"| {list(shape)} | {dtype} | {path} | {mode} | {ms:.3f} | {p['predicted_ms']:.3f} | "
                     f"{100 * err:+.0f}%{why} | {src} |")
    return lines


# ============================================================================= tables
def _host_rows(path: str) -> list:
    """The rows of a benchmarks/host_cost.py JSON file for its last tree (the one under test)."""
    with open(path) as f:
        data = json.load(f)
    last = data["trees"][-1]["label"]
    return [r for r in data["results"] if r["tree"] == last]


def host_from(path: str | None) -> dict:
    """{loop path: seconds} of launcher + binding per layer from a benchmarks/host_cost.py JSON file
    (its last tree: the one under test), or {} without one."""
    if not path:
        return {}
    return {r["path"]: r["median_us"]["total"] * 1e-6 for r in _host_rows(path)}


def prediction_rows(rows: list, shapes: dict, dtypes, paths, dev_name: str, auto_rule, host=None) -> list:
    dev = DEVICES[dev_name]
    host = host or {}
    out = []
    for name, shape in shapes.items():
        for d in dtypes:
            elem = 4 if d == "float32" else 2
            per = {}
            for p in paths:
                c = counts_at(rows, name, shape, d, p)
                if c is not None:
                    per[p] = predict(c, dev, host.get(p))
            if auto_rule is not None and auto_rule(shape) in per:
                per["auto"] = per[auto_rule(shape)]
            lif = fused_lif(shape, elem, dev)
            floor = byte_floor(shape, elem) / dev["bw"]
            for p, r in per.items():
                for mode in ("eager", "graph"):
                    why = ("host-bound: launches x host cost" if mode == "eager" and r["host"] > r["device"]
                           else f"device: slowest kernel {r['slowest_kernel']}")
                    out.append(dict(name=name, shape=list(shape), dtype=d, path=p, mode=mode, device=dev_name,
                                    predicted_ms=r[mode] * 1e3, device_ms=r["device"] * 1e3,
                                    host_ms=r["host"] * 1e3, launches=r["launches"], ops=r["ops"],
                                    fused_lif_ms=lif[mode] * 1e3, ratio_to_fused_lif=r[mode] / lif[mode],
                                    floor_ms=floor * 1e3, why=why, slowest=r["slowest_kernel"],
                                    kernels_ms={k: v * 1e3 for k, v in r["per_kernel"].items()}))
    return out


def rule_from_model(rows: list, shapes: dict, dev_name: str, host=None) -> list:
    """Per shape: which path the model predicts faster, eager and in a graph (fp32)."""
    out = []
    for name, shape in shapes.items():
        dev = DEVICES[dev_name]
        c = {p: counts_at(rows, name, shape, "float32", p) for p in ("per_step", "persistent")}
        t = {p: predict(v, dev, (host or {}).get(p)) for p, v in c.items() if v is not None}
        out.append(dict(name=name, shape=list(shape), C_P=shape[2] * _plane(shape),
                        eager=min(t, key=lambda p: t[p]["eager"]), graph=min(t, key=lambda p: t[p]["graph"]),
                        **{f"{p}_{m}_ms": t[p][m] * 1e3 for p in t for m in ("eager", "graph")}))
    return out


def auto_path(shape) -> str:
    """The launcher's ``auto`` loop path for a layer of ``shape``."""
    try:
        from staa.kernels.launch import loop_path  # triton needed
    except Exception:  # no triton here: the rule as docs/triton.md states it
        return "persistent" if shape[2] * _plane(shape) <= 8192 else "per_step"
    return loop_path(shape[2], _plane(shape), "auto")


# ============================================================================= the accuracy rows
# The long accuracy protocol's network (benchmarks/accuracy/run_ladder.py: widths 32 and 64 on 28x28
# images, batch 128, T = 4) has two neuron layers; each row of that protocol puts another neuron there.
PROTOCOL_LAYERS = {"layer1": (4, 128, 32, 28, 28), "layer2": (4, 128, 64, 14, 14)}
ROW_BLOCKS = {"IF+SA": dict(gc=False, pe=False, sa=True), "GC+PE+SA": dict(gc=True, pe=True, sa=True)}
# Rows predicted with another row's kernels: the counts are taken at tsrd = 0, and which steps TSRD
# drops (where the kernels skip the aggregator's arithmetic, not its launches) is not modelled.
ROW_SAME_AS = {"IF+SA+TSRD": "IF+SA", "GC+PE+SA+TSRD": "GC+PE+SA"}
ROWS_OUT = os.path.join(RESULTS, "cost_model_rows")


def count_rows(pkg=None) -> list:
    """Meter points of every row's neuron at the protocol's two layers (B = 1, 2; float32; auto path)."""
    jobs, index = [], []
    for row, blocks in ROW_BLOCKS.items():
        for layer, shape in PROTOCOL_LAYERS.items():
            T, _, C, *sp = shape
            for B in (1, 2):
                jobs.append(((T, B, C, *sp), "float32", auto_path(shape), blocks))
                index.append(f"{row}|{layer}")
    data = count(jobs, pkg)
    for name, r in zip(index, data["rows"]):
        r["name"] = name
    return data["rows"]


def host_per_launch(path: str | None) -> float | None:
    """Seconds of launcher + binding per Triton launch on the per_step path, from a host_cost.py JSON
    file (its last tree), or None."""
    if not path:
        return None
    for r in _host_rows(path):
        if r["path"] == "per_step":
            return r["median_us"]["total"] * 1e-6 / r["counts"]["launches"]
    return None


def row_predictions(rows: list, dev_name: str, per_launch_s: float | None = None) -> dict:
    """Per accuracy row: predicted ms of the network's neuron layers, forward + backward at the
    protocol's batch (summed over layers), eager and replayed; LIF as the fused-LIF ideal."""
    dev = DEVICES[dev_name]
    out = {}
    for row in ("LIF", *ROW_BLOCKS, *ROW_SAME_AS):
        src = ROW_SAME_AS.get(row, row)
        tot = dict(device=0.0, host=0.0, eager=0.0, graph=0.0)
        launches = 0
        for layer, shape in PROTOCOL_LAYERS.items():
            if row == "LIF":
                r = dict(fused_lif(shape, 4, dev), host=2 * (T_TRI + T_DRV))
                launches += 2
            else:
                c = counts_at(rows, f"{src}|{layer}", shape, "float32", auto_path(shape))
                if c is None:
                    raise ValueError(f"no counts for {src} at {layer}: run `--rows --count`")
                launcher = None if per_launch_s is None else per_launch_s * len(c["launches"])
                r = predict(c, dev, launcher)
                launches += r["launches"]
            for k in tot:
                tot[k] += r[k]
        out[row] = dict({f"{k}_ms": v * 1e3 for k, v in tot.items()}, launches=launches,
                        same_kernels_as=ROW_SAME_AS.get(row))
    return out


def rows_markdown(data: dict) -> str:
    lines = [f"# Predicted GPU time of the long accuracy protocol's neuron layers ({data['device']})", "",
             f"`{data['command']}` at commit {data['commit']}: the meter's counts of each row's neuron "
             f"({os.path.basename(data['counts'])}: B = 1 and 2, float32, the launcher's auto path) extrapolated to the "
             "protocol's layers " + ", ".join(f"{k} {list(v)}" for k, v in data["layers"].items()) + ", summed; "
             "forward + backward of the neuron layers only (convolutions, BatchNorm and the optimiser are not "
             "modelled). LIF is the cost model's fused-LIF ideal (24 B per neuron-step, two launches per layer), "
             "not the plain PyTorch loop the accuracy runs train with. Host per Triton launch: "
             + (f"{data['host_per_launch_us']:.1f} µs measured (host_cost.json, per_step) + T_DRV"
                if data.get("host_per_launch_us") else "T_TRI + T_DRV") + ".", "",
             "| row | device ms | host ms | eager ms | graph ms | launches | note |", "|---|---|---|---|---|---|---|"]
    for row, r in data["rows"].items():
        note = f"kernels of {r['same_kernels_as']} (TSRD's dropped steps not modelled)" if r["same_kernels_as"] else ""
        lines.append(f"| {row} | {r['device_ms']:.3f} | {r['host_ms']:.3f} | {r['eager_ms']:.3f} | "
                     f"{r['graph_ms']:.3f} | {r['launches']} | {note} |")
    return "\n".join(lines) + "\n"


def _plane(shape):
    P = 1
    for s in shape[3:]:
        P *= s
    return P


def table_lines(pred: list) -> list:
    lines = ["| shape | dtype | path | mode | predicted ms | device ms | host ms | launches + ops | fused LIF ms | "
             "x fused LIF | byte floor ms | bound by |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in pred:
        lines.append(f"| {r['shape']} | {r['dtype']} | {r['path']} | {r['mode']} | {r['predicted_ms']:.3f} | "
                     f"{r['device_ms']:.3f} | {r['host_ms']:.3f} | {r['launches']} + {r['ops']} | "
                     f"{r['fused_lif_ms']:.3f} | {r['ratio_to_fused_lif']:.1f} | {r['floor_ms']:.3f} | {r['why']} |")
    return lines


def check_lines(pred: list) -> list:
    """The b10c880 run's figures beside the predictions; a row more than 30% off says why."""
    lines = ["| shape | dtype | path | mode | measured ms (b10c880, H200) | predicted ms (device / host) | error | "
             "why, where more than 30% off |", "|---|---|---|---|---|---|---|---|"]
    for r in pred:
        ms = B10_MEASURED.get((r["name"], r["dtype"], r["path"], r["mode"]))
        if ms is None:
            continue
        err = r["predicted_ms"] / ms - 1
        why = ""
        if abs(err) > 0.30 and r["mode"] == "eager":
            n = r["launches"] + r["ops"]
            why = (f"host: the run spent {1e3 * ms / n:.0f} µs per device operation ({n} per layer), the model's "
                   f"stated host constants {1e3 * r['host_ms'] / n:.0f}")
        elif abs(err) > 0.30:
            why = (f"device: slowest kernel {r['slowest']}, whose every block load the chain counts as one "
                   f"dependent round trip (loads of one loop iteration overlap on a GPU); {r['ops']} torch "
                   "operations at T_DEV each")
        lines.append(f"| {r['shape']} | {r['dtype']} | {r['path']} | {r['mode']} | {ms:.2f} | "
                     f"{r['predicted_ms']:.2f} ({r['device_ms']:.2f} / {r['host_ms']:.2f}) | {100 * err:+.0f}% | {why} |")
    return lines


DOC = os.path.join(ROOT, "docs", "triton.md")
BEGIN = "<!-- cost_model:begin (generated by benchmarks/cost_model.py --docs; do not edit by hand) -->"
END = "<!-- cost_model:end -->"


def docs_section(pred: list, rule: list, check: list, dev_name: str, tree: str = "this tree") -> str:
    d = DEVICES[dev_name]
    out = [BEGIN, f"Constants ({dev_name}): bandwidth {d['bw'] / 1e12:.2f} TB/s ({d['bw_sheet'] / 1e12:.2f} on the data "
           f"sheet), {d['sms']} SMs, T_RT = {T_RT * 1e6:.1f} µs per dependent round trip, T_DEV = {T_DEV * 1e6:.1f} µs "
           f"per kernel on the device, host T_TRI = {T_TRI * 1e6:.0f} µs + T_DRV = {T_DRV * 1e6:.0f} µs per Triton "
           f"launch and T_OP = {T_OP * 1e6:.0f} µs per eager torch operation (benchmarks/cost_model.py says where "
           "each comes from).", "", "**Check against the b10c880 run** (its kernels counted by this meter; "
           "[cost_model_b10c880.md](../benchmarks/results/cost_model_b10c880.md)):", ""]
    out += check
    out += ["", f"**Predictions at the user shapes** (kernels of {tree}, "
            "[cost_model.md](../benchmarks/results/cost_model.md); `auto` is the launcher's rule; a fused LIF "
            "is two launches at 24 B/neuron-step; the byte floor is the op's 5s + 8 + 4/T bytes per neuron-step "
            "at full bandwidth):", ""]
    out += table_lines([r for r in pred if r["path"] == "auto" or r["dtype"] == "float32"])
    out += ["", "**The loop-path rule the model gives** (float32, predicted ms, eager / graph):", "",
            "| shape | C*P | per_step | persistent | faster eager | faster in a graph |", "|---|---|---|---|---|---|"]
    for r in rule:
        ps = f"{r.get('per_step_eager_ms', float('nan')):.3f} / {r.get('per_step_graph_ms', float('nan')):.3f}"
        pe = (f"{r['persistent_eager_ms']:.3f} / {r['persistent_graph_ms']:.3f}" if "persistent_eager_ms" in r
              else "not counted")
        out.append(f"| {r['shape']} | {r['C_P']} | {ps} | {pe} | {r['eager']} | {r['graph']} |")
    out.append(END)
    return "\n".join(out)


def write_docs(text: str, doc: str = DOC) -> None:
    with open(doc) as f:
        page = f.read()
    if BEGIN not in page or END not in page:
        raise SystemExit(f"{doc} has no generated cost-model section ({BEGIN} ... {END})")
    head, rest = page.split(BEGIN, 1)
    with open(doc, "w") as f:
        f.write(head + text + rest.split(END, 1)[1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", nargs="*", metavar="FILE", help="a GPU run's neuron.json / graph.md / profile.md")
    ap.add_argument("--counts", default=os.path.join(RESULTS, "cost_counts.json"),
                    help="the meter's counts (written by --count, read otherwise)")
    ap.add_argument("--count", action="store_true", help="count the user shapes with the meter first (slow)")
    ap.add_argument("--check-b10c880", action="store_true",
                    help="count b10c880's kernels with this meter and predict its GPU run")
    ap.add_argument("--tree", default=None, metavar="REV",
                    help="with --count: count this git revision's kernels (git archive) instead of this tree's")
    # gpu_check.sh exports the run's device name (STAA_DEVICE): an H100 run is compared with the H100 constants
    ap.add_argument("--device", default="H100" if "H100" in os.environ.get("STAA_DEVICE", "") else "H200",
                    choices=list(DEVICES))
    ap.add_argument("--out", default=os.path.join(RESULTS, "cost_model"), help="path stem of the .md/.json")
    ap.add_argument("--host", default=None, metavar="JSON",
                    help="benchmarks/host_cost.py results: the measured launcher + binding time per layer "
                         "replaces launches x T_TRI")
    ap.add_argument("--docs", action="store_true", help="also rewrite the generated section of docs/triton.md")
    ap.add_argument("--rows", action="store_true",
                    help="predict the long accuracy protocol's rows instead (with --count: count them first) "
                         "-> benchmarks/results/cost_model_rows.{md,json}")
    ns = ap.parse_args(argv)

    if ns.rows:
        counts_path = os.path.join(RESULTS, "cost_counts_rows.json")
        if ns.count or not os.path.exists(counts_path):
            with open(counts_path, "w") as f:
                json.dump(dict(rows=count_rows()), f, indent=1)
        with open(counts_path) as f:
            crows = json.load(f)["rows"]
        per_launch = host_per_launch(ns.host)
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or "unknown"
        data = dict(command="python benchmarks/cost_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    commit=commit, device=ns.device, counts=os.path.relpath(counts_path, ROOT),
                    machine="counts from the meter under the Triton interpreter; times predicted, not measured",
                    layers=PROTOCOL_LAYERS, host_per_launch_us=None if per_launch is None else per_launch * 1e6,
                    constants=dict(T_RT=T_RT, T_DEV=T_DEV, T_DRV=T_DRV, T_OP=T_OP, T_TRI=T_TRI, **DEVICES[ns.device]),
                    rows=row_predictions(crows, ns.device, per_launch))
        out = ROWS_OUT if ns.out == os.path.join(RESULTS, "cost_model") else ns.out
        with open(out + ".json", "w") as f:
            json.dump(data, f, indent=1)
        with open(out + ".md", "w") as f:
            f.write(rows_markdown(data))
        print(rows_markdown(data))
        return 0

    if ns.check_b10c880:
        sys.path.insert(0, HERE)
        import host_cost

        b10_counts = os.path.join(RESULTS, "cost_counts_b10c880.json")
        if ns.count or not os.path.exists(b10_counts):
            with tempfile.TemporaryDirectory(prefix="cost_b10_") as tmp:
                tree = host_cost.prepare_tree("b10c880", tmp)
                rows = count_points(B10_SHAPES, ("float32", "bfloat16"), ("per_step", "persistent"),
                                    pkg=tree["pkg"])
            with open(b10_counts, "w") as f:
                json.dump(dict(tree="b10c880", rows=rows), f, indent=1)
        with open(b10_counts) as f:
            rows = json.load(f)["rows"]
        pred = prediction_rows(rows, B10_SHAPES, ("float32", "bfloat16"), ("per_step", "persistent"), "H200", None)
        lines = ["# Cost model against the b10c880 GPU run (H200)", "",
                 "`python benchmarks/cost_model.py --check-b10c880`: this commit's meter (plus the per-launch "
                 "program and chain counts of benchmarks/cost_model.py) run on b10c880's kernels "
                 "(`git archive b10c880`, counts in cost_counts_b10c880.json, B = 1 and 2 extrapolated to 64), "
                 "with the constants stated in benchmarks/cost_model.py, none fitted on these figures. "
                 "Measured: gpu_neuron.md (eager) and gpu_graph.md (graph replay, float32 only).", ""]
        lines += check_lines(pred)
        per = {}
        for r in pred:
            if r["mode"] == "graph" and r["dtype"] == "float32":
                top = sorted(r["kernels_ms"].items(), key=lambda kv: -kv[1])[:3]
                per[f"{r['shape']} {r['path']}"] = ", ".join(f"{k} {v:.3f}" for k, v in top)
        lines += ["", "Largest predicted device times per kernel (ms, float32, summed over launches):", ""]
        lines += [f"- {k}: {v}" for k, v in per.items()]
        with open(ns.out + "_b10c880.md", "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0

    if ns.compare is not None and not ns.compare:
        print("--compare: no result files of this run (the benchmark steps wrote none)", file=sys.stderr)
        return 1
    if ns.count or not os.path.exists(ns.counts):
        if ns.compare:
            print(f"no counts at {ns.counts}: run `python benchmarks/cost_model.py --count` first", file=sys.stderr)
            return 2
        # the big shape's plane is measured at 16x16 and 32x32 and extrapolated (see the docstring)
        with tempfile.TemporaryDirectory(prefix="cost_tree_") as tmp:
            kc = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%h", "--", "kernels"],
                                capture_output=True, text=True).stdout.strip()
            pkg, label = None, f"this tree (kernels/ last changed in {kc or 'unknown'})"
            if ns.tree:
                sys.path.insert(0, HERE)
                import host_cost

                tree = host_cost.prepare_tree(ns.tree, tmp)
                pkg, label = tree["pkg"], tree["label"]
            rows = count_points(USER_SHAPES, ("float32", "bfloat16"), ("per_step", "persistent"), pkg=pkg,
                                small_planes=BIG_PLANES, only_paths={"big": ("per_step",)})
        with open(ns.counts, "w") as f:
            json.dump(dict(tree=label, rows=rows), f, indent=1)
    with open(ns.counts) as f:
        counted = json.load(f)
    rows, tree_label = counted["rows"], counted.get("tree", "unknown")

    pred = prediction_rows(rows, USER_SHAPES, ("float32", "bfloat16"), ("per_step", "persistent"), ns.device,
                           auto_path, host_from(ns.host))
    if ns.compare:
        print(f"Cost model ({ns.device}; counts: {tree_label}, {os.path.basename(ns.counts)}; constants: T_RT "
              f"{T_RT * 1e6:.1f} µs, T_DEV {T_DEV * 1e6:.1f} µs, T_TRI {T_TRI * 1e6:.0f} µs, T_DRV {T_DRV * 1e6:.0f} µs, "
              f"T_OP {T_OP * 1e6:.0f} µs, {DEVICES[ns.device]['bw'] / 1e12:.2f} TB/s) beside this run's figures:\n")
        print("\n".join(compare(ns.compare, pred)))
        return 0
    rule = rule_from_model(rows, USER_SHAPES, ns.device, host_from(ns.host))
    with open(ns.out + ".json", "w") as f:
        json.dump(dict(device=ns.device, constants=dict(T_RT=T_RT, T_DEV=T_DEV, T_DRV=T_DRV, T_OP=T_OP, T_TRI=T_TRI,
                                                        **DEVICES[ns.device]), predictions=pred, rule=rule), f, indent=1)
    lines = [f"# Predicted fwd + bwd time of one layer ({ns.device}; benchmarks/cost_model.py)", "",
             f"Kernels counted: {tree_label}. "
             f"`python benchmarks/cost_model.py` from the meter's counts in {os.path.basename(ns.counts)} (B = 1 and 2 at each "
             "shape's T, C and plane, the big shape's plane at 8x8 and 16x16, extrapolated; see the script). "
             "Constants: " + json.dumps(dict(T_RT=T_RT, T_DEV=T_DEV, T_DRV=T_DRV, T_OP=T_OP, T_TRI=T_TRI,
                                             **DEVICES[ns.device])), ""] + table_lines(pred)
    with open(ns.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    if ns.docs:
        b10 = os.path.join(RESULTS, "cost_counts_b10c880.json")
        check = []
        if os.path.exists(b10):
            with open(b10) as f:
                brows = json.load(f)["rows"]
            check = check_lines(prediction_rows(brows, B10_SHAPES, ("float32", "bfloat16"),
                                                ("per_step", "persistent"), "H200", None))
        write_docs(docs_section(pred, rule, check, ns.device, tree_label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
