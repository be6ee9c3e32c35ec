"""Compile every shipped Triton kernel configuration for the H200 (sm_90) on any machine.

No GPU is needed: the launchers run on small CPU tensors with their kernel launches
recorded instead of executed, each recorded launch is specialised exactly as triton's JIT
would (same binder, same alignment/divisibility attributes), compiled with
``triton.compile(..., target=GPUTarget("cuda", 90, 32))`` and the PTX is assembled again
with triton's bundled ``ptxas -v`` to read registers and spills.

    python benchmarks/compile_kernels.py                  # all layer shapes, writes the table
    python benchmarks/compile_kernels.py --quick          # two shapes (the CI test)
    python benchmarks/compile_kernels.py --out FILE.md
    python benchmarks/compile_kernels.py --persistent     # only the persistent kernels'
                                                          # configurations (their own table)
    python benchmarks/compile_kernels.py --kernels staa_bwd_weights_kernel --out FILE.md
                                                          # only these kernels' configurations

The forward runs once per layer shape and option set; the backward once per surrogate kind
(``staa.surrogate.SURROGATE_KINDS``), since only the backward kernels specialise on the kind.

Exit status 1 when any configuration fails to compile. Must run without TRITON_INTERPRET.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

# Layer shapes (C, H, W) of the usual CIFAR/ImageNet-style SNN backbones the kernels ship
# tuned tile sizes for; (C, 1, 1) stands for a [T, B, C] input.
SHAPES = [(64, 32, 32), (128, 32, 32), (128, 16, 16), (256, 16, 16), (256, 8, 8), (512, 8, 8),
          (512, 4, 4), (512, 1, 1), (1000, 1, 1), (2048, 7, 7)]
# Neuron options: the default layer, plus soft reset with detach_reset and the blocks
# switched off one at a time (each changes the kernels' constexpr flags).
OPTIONS = [
    dict(name="default", gc=True, sa=True, pe=True, v_reset=0.0, detach=False),
    dict(name="soft+detach", gc=True, sa=True, pe=True, v_reset=None, detach=True),
    dict(name="no-gc", gc=False, sa=True, pe=True, v_reset=0.0, detach=False),
    dict(name="no-sa", gc=True, sa=False, pe=False, v_reset=0.0, detach=False),
]
# The default layer carrying its state across calls: an initial state h0 and an incoming
# dL/dH_{T-1} (the HAS_H0 / HAS_GHL variants). Only in the CI subset.
H0_OPTION = dict(OPTIONS[0], name="default+h0", h0=True)
# CI subset: the two goal layers of the GPU benchmark, default options, one dtype each, and
# the first one again with h0.
QUICK = [((128, 32, 32), OPTIONS[0], "float32"), ((512, 4, 4), OPTIONS[0], "bfloat16"),
         ((128, 32, 32), H0_OPTION, "float32"), ((512, 4, 4), H0_OPTION, "bfloat16")]


def _params(C, opt, torch):
    from staa._blocks import hidden_features
    from staa.reference import GCParams, SAParams

    ch = hidden_features(C, 4)

    def gc():
        return GCParams(torch.zeros(1, C), torch.zeros(1), torch.zeros(ch, C), torch.zeros(ch),
                        torch.ones(ch), torch.zeros(ch), torch.zeros(C, ch), torch.zeros(C))

    gcx = gc() if opt["gc"] else None
    gch = gc() if opt["gc"] else None
    sa = SAParams(torch.zeros(ch, C), torch.zeros(ch), torch.zeros(C, ch), torch.zeros(C)) if opt["sa"] else None
    pos = torch.zeros(4, C) if opt["pe"] else None
    return pos, gcx, gch, sa


# The parameter-gradient kernels, which are also recorded at batch WEIGHT_BATCH.
WEIGHT_KERNELS = ("staa_bwd_weights_kernel", "staa_bwd_weights_sum_kernel")
WEIGHT_BATCH = 64


def _launch_smem_limit() -> dict:
    from staa.kernels.launch import SMEM_LIMIT as limits

    return dict(limits)


def record_launches(combos, path=None, store_v=(False,), only=None, kinds=None, arch=90):
    """Run the launchers on CPU tensors for each ``((C, H, W), options, dtype name)`` with
    launches recorded instead of run; returns the distinct launches.

    ``path`` is the launchers' ``path`` argument (None: their automatic rule),
    ``store_v`` the ``store_v_seq`` values to run, ``only`` a set of kernel names to keep,
    ``kinds`` the surrogate kinds the backward runs with (default: all), ``arch`` the compute
    capability whose shared memory per block (``SMEM_LIMIT``) the launchers plan for, as they do
    on such a device."""
    import torch

    from staa.kernels import launch
    from staa.surrogate import DEFAULT_PARAM, SURROGATE_KINDS

    kinds = SURROGATE_KINDS if kinds is None else kinds

    seen = {}

    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", 90, 32))
    binders = {}

    def hook(kernel, grid, args, kwargs):
        # Key on the JIT's own specialisation of the arguments, so a launch that would reuse
        # an already compiled kernel on the GPU is not listed twice.
        if kernel not in binders:
            binders[kernel] = create_function_from_signature(kernel.signature, kernel.params, backend)
        if only is not None and kernel.__name__ not in only:
            return
        if weights_only[0] and kernel.__name__ not in WEIGHT_KERNELS:
            return
        _, spec, _ = binders[kernel](*args, **kwargs)
        key = (kernel.__name__, repr(spec), kwargs.get("num_warps"))
        seen.setdefault(key, (kernel, args, dict(kwargs), ctx_label[0]))

    ctx_label = [""]
    weights_only = [False]
    launch.launch_hook = hook
    launch.smem_limit = SMEM_LIMIT.get(arch)
    try:
        for (C, H, W), opt, dtype in combos:
            P = H * W
            ctx_label[0] = f"C={C} P={P} {opt['name']} {dtype}"
            pos, gcx, gch, sa = _params(C, opt, torch)
            x = torch.zeros(3, 1, C, P, dtype=getattr(torch, dtype))
            drop = torch.zeros(3, dtype=torch.bool)
            cd = torch.float64 if dtype == "float64" else torch.float32
            h0 = torch.zeros(1, C, P, dtype=cd) if opt.get("h0") else None
            ghl = torch.zeros(1, C, P, dtype=cd) if opt.get("h0") else None
            kw = dict(alpha=2.0, v_threshold=1.0, v_reset=opt["v_reset"], detach_reset=opt["detach"])
            for sv in store_v:  # the forward does not depend on the surrogate
                _, _, _, u, gate = launch.staa_lif_forward(x, drop, h0, pos, gcx, gch, sa, **kw, surrogate="rect",
                                                           surrogate_param=1.0, store_v_seq=sv, path=path)
            u.zero_()
            gate.fill_(0.5)
            for kind in kinds:
                launch.staa_lif_backward(torch.zeros_like(x), ghl, x, drop, h0, pos, gcx, gch, sa, u, gate, **kw,
                                         surrogate=kind, surrogate_param=DEFAULT_PARAM[kind], path=path)
            # The parameter-gradient passes also specialise on the row ranges (pass 2 adds up to
            # 64 per element), which grow with the batch: record them at a training batch too.
            weights_only[0] = True
            xb = torch.zeros(3, WEIGHT_BATCH, C, P, dtype=x.dtype)
            ub, gb = torch.zeros(xb.shape, dtype=cd), torch.full((3, WEIGHT_BATCH, C), 0.5, dtype=cd)
            h0b = torch.zeros(WEIGHT_BATCH, C, P, dtype=cd) if h0 is not None else None
            launch.staa_lif_backward(torch.zeros_like(xb), h0b, xb, drop, h0b, pos, gcx, gch, sa, ub, gb, **kw,
                                     surrogate=kinds[0], surrogate_param=DEFAULT_PARAM[kinds[0]], path=path)
            weights_only[0] = False
    finally:
        launch.launch_hook = None
        launch.smem_limit = None
    return list(seen.values())


def compile_launch(kernel, args, kwargs, target):
    """Compile one recorded launch as the JIT would for ``target``; returns the CompiledKernel."""
    import triton
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    src = ASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(src, target=target, options=options.__dict__)


def ptxas_usage(ptx: str, cc: int = 90) -> dict:
    """Registers and spill bytes of ``ptx`` from triton's bundled ``ptxas -v``."""
    from triton.backends.nvidia.compiler import get_ptxas

    path = get_ptxas(cc).path
    arch = f"sm_{cc}a" if cc >= 90 else f"sm_{cc}"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        res = subprocess.run([path, f"-arch={arch}", "-v", src, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True)
    out = res.stdout + res.stderr
    if res.returncode != 0:
        raise RuntimeError(f"ptxas failed:\n{out}")
    regs = re.search(r"Used (\d+) registers", out)
    stores = re.search(r"(\d+) bytes spill stores", out)
    loads = re.search(r"(\d+) bytes spill loads", out)
    return dict(regs=int(regs.group(1)) if regs else -1, spill_stores=int(stores.group(1)) if stores else 0,
                spill_loads=int(loads.group(1)) if loads else 0)


def _flags(kwargs):
    from staa.surrogate import SURROGATE_KINDS

    names = ("FIRST", "LAST", "FINISH", "START", "HAS_H0", "HAS_GHL", "HAS_POS", "HAS_GCX", "HAS_GCH", "HAS_SA", "HARD",
             "DETACH", "STORE_V")
    on = [n for n in names if kwargs.get(n) is True]
    if "SURROGATE" in kwargs and kwargs.get("START", True):  # the per-step t = 0 pass has no surrogate
        on.append(f"sg={SURROGATE_KINDS[kwargs['SURROGATE']]}")
    blocks = [f"{k}={v}" for k, v in kwargs.items() if k.startswith("BLOCK_")]
    cd = str(kwargs.get("CD", "")).replace("fp", "f")
    return " ".join(blocks), ",".join(on), cd


# Shared memory one block may use (opt-in maximum, bytes): the launchers' own table, which they plan
# their tiles for. A configuration over its architecture's limit would fail to launch there
# (triton's OutOfResources). The GPUs of each architecture:
SMEM_LIMIT = _launch_smem_limit()
ARCH_NAMES = {80: "A100", 86: "RTX 30-series / A40", 89: "RTX 40-series / L40", 90: "H100 / H200"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the two goal layer shapes, default options (CI)")
    ap.add_argument("--persistent", action="store_true",
                    help="only the persistent kernels (forward with and without store_v_seq, backward), "
                         "for every layer shape the launchers run them on")
    ap.add_argument("--out", default=None, help="table path (default: benchmarks/results/kernel_compile_sm90.md, "
                                                "or kernel_compile_sm90_persistent.md with --persistent)")
    ap.add_argument("--arch", type=int, default=90,
                    help="CUDA compute capability to compile for: 90 (H100/H200), 89 (RTX 40-series, L40), "
                         "80 (A100); the table defaults to results/kernel_compile_sm<arch>.md")
    ap.add_argument("--kernels", nargs="+", default=None, metavar="NAME",
                    help="compile only these kernels' configurations (e.g. the ones a change touched)")
    ap.add_argument("--options", nargs="+", default=None, choices=[o["name"] for o in OPTIONS],
                    help="only these option sets (default: all)")
    ns = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreter does not compile kernels", file=sys.stderr)
        return 2

    import torch
    import triton
    from triton.backends.compiler import GPUTarget

    from staa.kernels import launch as _launch

    if ns.out is None:
        name = f"kernel_compile_sm{ns.arch}" + ("_persistent" if ns.persistent else "") + ".md"
        ns.out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", name)
    target = GPUTarget("cuda", ns.arch, 32)
    shapes = SHAPES
    if ns.persistent:
        shapes = [s for s in SHAPES if _launch.loop_path(s[0], s[1] * s[2], "auto") == "persistent"]
    if ns.quick:
        combos = [c for c in QUICK if c[0] in shapes]
    else:
        combos = [(shape, opt, dt) for shape in shapes for opt in OPTIONS for dt in ("float32", "bfloat16")
                  if ns.options is None or opt["name"] in ns.options]
    if ns.persistent:
        only = {"staa_fwd_persistent_kernel", "staa_bwd_persistent_kernel"}
        launches = record_launches(combos, path="persistent", store_v=(False, True),
                                   only=only & set(ns.kernels) if ns.kernels else only, arch=ns.arch)
    else:
        launches = record_launches(combos, only=set(ns.kernels) if ns.kernels else None, arch=ns.arch)
    rows, failures = [], 0
    t0 = time.time()
    for kernel, args, kwargs, label in launches:
        warps = kwargs.get("num_warps", 4)
        blocks, flags, cd = _flags(kwargs)
        try:
            ck = compile_launch(kernel, args, kwargs, target)
            use = ptxas_usage(ck.asm["ptx"], ns.arch)
            use["shared"] = int(ck.metadata.shared)
            status = "ok"
            limit = SMEM_LIMIT.get(ns.arch)
            if limit is not None and use["shared"] > limit:
                failures += 1
                status = f"FAILED: {use['shared']} B of shared memory, over sm_{ns.arch}'s {limit} B per block"
            if "persistent" in kernel.__name__ and "ld.global.nc" in ck.asm["ptx"]:
                # A persistent program reads back its own global writes after a CTA barrier;
                # the non-coherent (read-only) load path would not see them.
                failures += 1
                status = "FAILED: non-coherent load (ld.global.nc) in a persistent kernel"
        except Exception as exc:  # report every failure, then fail the run
            failures += 1
            use = dict(regs=-1, spill_stores=-1, spill_loads=-1, shared=-1)
            status = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        rows.append((kernel.__name__, label, blocks, flags, warps, use["regs"], use["spill_stores"],
                     use["spill_loads"], use["shared"], status))
        print(f"{kernel.__name__:22s} {label:34s} {blocks:40s} warps={warps} regs={use['regs']} "
              f"spill st/ld={use['spill_stores']}/{use['spill_loads']} {status}", flush=True)
    dt = time.time() - t0
    spilling = sum(1 for r in rows if r[6] > 0 or r[7] > 0)
    os.makedirs(os.path.dirname(os.path.abspath(ns.out)), exist_ok=True)
    with open(ns.out, "w") as f:
        commit = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip() or "unknown"
        f.write(f"# Triton kernel configurations compiled for sm_{ns.arch} ({ARCH_NAMES.get(ns.arch, 'CUDA')})\n\n")
        f.write(f"Commit {commit}. ")
        f.write(f"Compiled on: {platform.machine()} CPU machine ({os.cpu_count()} cores, no GPU), "
                f"triton {triton.__version__}, torch {torch.__version__}, with triton's bundled ptxas; "
                f"`python benchmarks/compile_kernels.py{' --quick' if ns.quick else ''}"
                f"{' --persistent' if ns.persistent else ''}"
                f"{(' --kernels ' + ' '.join(ns.kernels)) if ns.kernels else ''}"
                f"{(' --options ' + ' '.join(ns.options)) if ns.options else ''}"
                f"{(' --arch ' + str(ns.arch)) if ns.arch != 90 else ''}` in {dt:.0f} s.\n\n")
        f.write(f"{len(rows)} distinct configurations, {failures} failed to compile, {spilling} spill registers "
                "to local memory (bytes per thread), shared memory per block in bytes"
                + (f" (sm_{ns.arch} allows {SMEM_LIMIT[ns.arch]})" if ns.arch in SMEM_LIMIT else "") + ".\n"
                "The first layer shape/options that produced a configuration labels it; launches that "
                "specialise identically are listed once.\n\n")
        f.write("| kernel | first seen for | tiles | flags | warps | registers | spill stores (B) | spill loads (B) | "
                "shared (B) | status |\n")
        f.write("|---|---|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            f.write("| " + " | ".join(str(v) for v in r) + " |\n")
    print(f"{len(rows)} configurations, {failures} failed, {spilling} spilling; table: {ns.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
