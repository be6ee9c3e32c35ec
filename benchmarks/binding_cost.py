"""What Triton's argument binding costs per launch and per argument, and what that says about
cutting the per-step path's host cost.

``benchmarks/host_cost.py`` found Triton's argument binding to be most of one layer's host time
on the per-step path. This script takes it apart, on the CPU, with the same binding routine
(``host_cost.Prober.triton_host``: the binder built for ``--arch``, the cache key and lookup, the
grid), so no kernel runs and no GPU is needed:

1. **Per argument kind.** Synthetic kernels with only a base pointer, then with n extra pointers
   (CPU tensors), n runtime ints, n floats or n constexprs, are bound with the launchers'
   keywords (``num_warps``, ``enable_fp_fusion``). A least-squares line per kind gives the cost
   of one launch with no arguments (the intercept, averaged over kinds) and of each argument.
2. **The layer's launches.** One forward + backward of the launchers at host_cost's shape with
   every launch recorded, each argument classified (tensor: pointer; constexpr parameter; int;
   float); each launch then bound on its own, timed, and predicted from step 1. The prediction
   is checked against the measurement, per kernel.
3. **What each remedy would save**, from the fitted costs: packing each MLP kernel's weight
   pointers into one buffer (one pointer instead of sixteen), and taking the per-step MLP
   launches away (one launch's fixed cost and its arguments, less the arguments the neighbouring
   elementwise launch would gain), against the per-step path's 30% target of issue 37.

Timed: run it on a quiet machine. ``python benchmarks/binding_cost.py`` writes
``benchmarks/results/binding_cost.{md,json}`` (``--out`` stem).
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import host_cost  # noqa: E402  (no torch or triton at import)

DEFAULT_OUT = os.path.join(HERE, "results", "binding_cost")
KINDS = ("pointer", "int", "float", "constexpr")
COUNTS = (0, 8, 16, 32, 48)
# The launchers' keywords at every launch (host_cost binds them the same way).
LAUNCH_KW = dict(num_warps=4, enable_fp_fusion=False)
# Weight pointers of the MLP kernels (GC1 and GC2: query, LayerNorm and value weights and biases;
# SA: fc1 and fc2 weights and biases): launch._mlp_weights' order.
N_WEIGHT_PTRS = 16
MLP_KERNELS = ("staa_fwd_mlp_kernel", "staa_bwd_mlp_kernel")


def _synthetic(kind: str, n: int, tmp: str):
    """A ``@triton.jit`` kernel with a base pointer and ``n`` arguments of ``kind`` (its body is
    never compiled: binding needs only the signature)."""
    names = [f"a{i}" for i in range(n)]
    params = ", ".join(["o"] + [a + (": tl.constexpr" if kind == "constexpr" else "") for a in names])
    src = f"import triton\nimport triton.language as tl\n\n\n@triton.jit\ndef k({params}):\n    pass\n"
    path = os.path.join(tmp, f"k_{kind}_{n}.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location(f"binding_cost_k_{kind}_{n}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.k


def _time_bind(prober, kernel, grid, args, kwargs, reps: int, repeats: int) -> float:
    """The smallest over ``repeats`` of the mean µs of one binding over ``reps`` bindings (the
    fastest mean is the least disturbed by anything else the machine does)."""
    for _ in range(max(reps // 10, 5)):
        prober.triton_host(kernel, grid, args, kwargs)
    out = []
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            for _ in range(reps):
                prober.triton_host(kernel, grid, args, kwargs)
            out.append((time.perf_counter_ns() - t0) / reps / 1e3)
    finally:
        gc.enable()
    return min(out)


def _fit(xs, ys):
    """Least-squares line: (intercept, slope)."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - slope * mx, slope


def per_kind(prober, reps, repeats) -> dict:
    import torch

    value = dict(pointer=torch.empty(64), int=12345, float=1.5, constexpr=32)
    points, fits = {}, {}
    with tempfile.TemporaryDirectory(prefix="binding_cost_") as tmp:
        for kind in KINDS:
            ys = []
            for n in COUNTS:
                k = _synthetic(kind, n, tmp)
                args = (torch.empty(64),) + (value[kind],) * n
                ys.append(_time_bind(prober, k, (1,), args, dict(LAUNCH_KW), reps, repeats))
            points[kind] = ys
            fits[kind] = _fit(COUNTS, ys)
    return dict(counts=list(COUNTS), points_us=points,
                per_argument_us={k: fits[k][1] for k in KINDS},
                per_launch_us=statistics.mean(fits[k][0] for k in KINDS),
                intercepts_us={k: fits[k][0] for k in KINDS})


def _arguments(kernel, args, kwargs) -> list:
    """One launch's arguments as ``(kind, identity)``: tensors by object, the rest by parameter name."""
    import torch

    params = kernel.params
    out = []
    for i, a in enumerate(args):
        name = params[i].name
        if params[i].is_constexpr:
            out.append(("constexpr", name))
        elif isinstance(a, torch.Tensor):
            out.append(("pointer", id(a)))
        elif isinstance(a, float):
            out.append(("float", name))
        else:
            out.append(("int", name))
    names = {p.name: p for p in params}
    for k in kwargs:
        if k in names:
            out.append(("constexpr" if names[k].is_constexpr else "int", k))
    return out


def _kinds(arguments) -> Counter:
    return Counter(kind for kind, _ in arguments)


def predict(model, kinds: Counter) -> float:
    return model["per_launch_us"] + sum(model["per_argument_us"][k] * kinds.get(k, 0) for k in KINDS)


def record_layer(prober, path) -> list:
    """Every launch of one forward + backward, in order: ``(kernel, grid, args, kwargs)``."""
    L = prober.launch
    rec = []
    L.launch_hook = lambda kernel, grid, args, kwargs: rec.append((kernel, grid, args, kwargs))
    try:
        out = prober.layer(path)
        del out
    finally:
        L.launch_hook = None
    return rec


def layer_launches(prober, rec, reps, repeats, model) -> dict:
    """The recorded launches, classified, each bound alone and predicted; per kernel."""
    per = defaultdict(lambda: dict(launches=0, measured_us=0.0, predicted_us=0.0, kinds=None))
    for kernel, grid, args, kwargs in rec:
        kinds = _kinds(_arguments(kernel, args, kwargs))
        e = per[kernel.__name__]
        e["launches"] += 1
        e["measured_us"] += _time_bind(prober, kernel, grid, args, dict(kwargs), reps, repeats)
        e["predicted_us"] += predict(model, kinds)
        e["kinds"] = dict(kinds)
    return {k: dict(v) for k, v in per.items()}


def remedies(model, rec) -> dict:
    """Binding saved per layer (µs, from the fitted costs) by packing the MLP kernels' weight
    pointers into one, by folding each per-step MLP launch into the elementwise launch that
    follows it (which then takes the MLP's arguments it does not already take), and by both."""
    ptr = model["per_argument_us"]["pointer"]
    launches = [(k.__name__, _arguments(k, a, kw)) for k, _, a, kw in rec]
    pack = fold = both = 0.0
    n_mlp = 0
    for i, (name, args) in enumerate(launches):
        if name not in MLP_KERNELS:
            continue
        n_mlp += 1
        pack += (N_WEIGHT_PTRS - 1) * ptr
        nxt = next(a for n, a in launches[i + 1:] if "elem" in n)
        have = set(nxt)
        extra = Counter(kind for kind, ident in dict.fromkeys(args) if (kind, ident) not in have)
        before = predict(model, _kinds(args)) + predict(model, _kinds(nxt))
        fused = predict(model, _kinds(nxt) + extra)
        fold += before - fused
        both += before - (fused - (N_WEIGHT_PTRS - 1) * ptr)
    return dict(mlp_launches=n_mlp, pack_weights_us=pack, fold_mlp_launches_us=fold, both_us=both)


def run(shape, arch, reps, repeats) -> dict:
    import torch
    import triton

    torch.set_num_threads(1)
    prober = host_cost.Prober(shape, "float32", arch)
    model = per_kind(prober, reps, repeats)
    paths = {}
    for path in host_cost.PATHS:
        rec = record_layer(prober, path)
        kernels = layer_launches(prober, rec, max(reps // 4, 1), repeats, model)
        paths[path] = dict(kernels=kernels,
                           measured_us=sum(e["measured_us"] for e in kernels.values()),
                           predicted_us=sum(e["predicted_us"] for e in kernels.values()),
                           launches=len(rec))
        if path == "per_step":
            paths[path]["remedies"] = remedies(model, rec)
    return dict(model=model, paths=paths, torch=torch.__version__, triton=triton.__version__)


def markdown(data: dict, host: dict | None) -> str:
    m, s = data["model"], data["settings"]
    mach = data["machine"]
    out = ["# Triton's argument binding: per launch, per argument, and per remedy", "",
           f"Measured by `{data['command']}` on {mach['cpu']} ({mach['cpus']} CPUs), {mach['platform']}, "
           f"Python {mach['python']}, torch {data['torch']}, triton {data['triton']}, commit {data['commit']}, "
           f"{mach['date']}. Binding as `benchmarks/host_cost.py` does it (binder for sm_{s['arch']}, cache "
           f"key, lookup, grid); no kernel runs. Each figure is the fastest of {s['repeats']} means of "
           f"{s['reps']} bindings (a layer's launches: {max(s['reps'] // 4, 1)}).", "",
           "**Per argument kind** (synthetic kernels: a base pointer plus n arguments of one kind, bound with "
           "`num_warps` and `enable_fp_fusion`; µs per binding):", "",
           "| kind | " + " | ".join(f"n = {n}" for n in m["counts"]) + " | µs per argument (fit) |",
           "|---|" + "---|" * (len(m["counts"]) + 1)]
    for k in KINDS:
        out.append(f"| {k} | " + " | ".join(f"{y:.2f}" for y in m["points_us"][k]) +
                   f" | {m['per_argument_us'][k]:.3f} |")
    out += ["", f"One launch with no argument beyond its base pointer: {m['per_launch_us']:.2f} µs (the fits' "
            "intercepts, averaged over the kinds).", ""]
    for path, p in data["paths"].items():
        out += [f"**{path} path**, one forward + backward at {host_cost._shape(s['shape'])} float32: each "
                "launch bound alone (µs per layer, summed over the kernel's launches):", "",
                "| kernel | launches | pointers | ints | floats | constexprs | measured µs | predicted µs |",
                "|---|---|---|---|---|---|---|---|"]
        for name, e in sorted(p["kernels"].items()):
            k = e["kinds"]
            out.append(f"| {name} | {e['launches']} | {k.get('pointer', 0)} | {k.get('int', 0)} | "
                       f"{k.get('float', 0)} | {k.get('constexpr', 0)} | {e['measured_us']:.0f} | "
                       f"{e['predicted_us']:.0f} |")
        err = p["predicted_us"] / p["measured_us"] - 1
        out += [f"| total | {p['launches']} | | | | | **{p['measured_us']:.0f}** | **{p['predicted_us']:.0f}** "
                f"({100 * err:+.0f}%) |", ""]
    r = data["paths"]["per_step"]["remedies"]
    out += ["**Remedies for the per-step path**, from the fitted costs (µs of binding per layer; launcher "
            "Python and allocations, which would also shrink with fewer launches, are not counted):", "",
            f"- pack each MLP kernel's {N_WEIGHT_PTRS} weight pointers into one buffer: {r['mlp_launches']} "
            f"launches x {N_WEIGHT_PTRS - 1} pointers = **{r['pack_weights_us']:.0f} µs**;",
            f"- fold each of the {r['mlp_launches']} per-step MLP launches into the elementwise launch after it "
            f"(which then takes the MLP's arguments it lacks): **{r['fold_mlp_launches_us']:.0f} µs**;",
            f"- both: **{r['both_us']:.0f} µs**."]
    if host:
        tgt = host.get("target") or {}
        rows = {(x["tree"], x["path"]): x for x in host["results"]}
        base, now = rows.get((tgt.get("base"), "per_step")), rows.get((tgt.get("new"), "per_step"))
        if base and now:
            goal = base["median_us"]["total"] * (1 - host_cost.TARGET_CUT)
            cur = now["median_us"]["total"]
            left = [(what, cur - r[key] - goal) for what, key in
                    (("packing", "pack_weights_us"), ("folding", "fold_mlp_launches_us"), ("both", "both_us"))]
            out += ["", f"Against issue 37's target (host_cost.json, per_step: {base['median_us']['total']:.0f} µs at "
                    f"{tgt['base']}, {cur:.0f} µs at {tgt['new']}; 30% below the base is {goal:.0f} µs, so "
                    f"{cur - goal:.0f} µs to cut), what each would leave above the target: "
                    + ", ".join(f"{what} {v:+.0f} µs" for what, v in left)
                    + " (negative: under it)."]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default=",".join(map(str, host_cost.DEFAULT_SHAPE)), help="T,B,C[,H,W]")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--reps", type=int, default=400, help="bindings per timed mean")
    ap.add_argument("--repeats", type=int, default=7, help="timed means per figure (the fastest is kept)")
    ap.add_argument("--host", default=os.path.join(HERE, "results", "host_cost.json"),
                    help="host_cost results to set the remedies against the target ('' to skip)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="path stem of the .md and .json results")
    ns = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("unset TRITON_INTERPRET: binding is measured as the compiled JIT does it")
    shape = tuple(int(s) for s in ns.shape.split(","))
    data = run(shape, ns.arch, ns.reps, ns.repeats)
    data.update(command="python benchmarks/binding_cost.py" + (" " + " ".join(argv) if argv else ""),
                machine=host_cost.machine(), commit=host_cost._git("rev-parse", "--short", "HEAD"),
                settings=dict(shape=list(shape), arch=ns.arch, reps=ns.reps, repeats=ns.repeats))
    host = None
    if ns.host and os.path.isfile(ns.host):
        with open(ns.host) as f:
            host = json.load(f)
    os.makedirs(os.path.dirname(os.path.abspath(ns.out)), exist_ok=True)
    with open(ns.out + ".json", "w") as f:
        json.dump(data, f, indent=1)
    text = markdown(data, host)
    with open(ns.out + ".md", "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
