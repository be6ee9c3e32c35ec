"""Mutation check: do the tests catch the bugs we fear?

Each mutation below is one hand-written bug (a wrong threshold or reset, a window edge, a
dropped gradient term, the wrong position-encoding row, an ignored initial state, a wrong
surrogate formula, one per Triton kernel family). For each, the package is copied to a
temporary directory, the mutation is applied to the copy, and the tests relevant to it run
against the copy (``PYTHONPATH`` puts it ahead of the installed package; the Triton tests'
interpreter worker inherits it). A mutation is *killed* when those tests fail, and
*survives* when they pass. Every mutation must be killed: the script exits 1 if one
survives, 2 if a mutation no longer applies (its code moved: update the list).

    python scripts/mutation_check.py                 # all mutations
    python scripts/mutation_check.py --fast          # the subset CI runs
    python scripts/mutation_check.py --only T4 K2    # some of them
    python scripts/mutation_check.py --list

Run it from an environment where ``bash scripts/test.sh`` has installed the test
dependencies.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List, NamedTuple, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Test groups, as pytest arguments (paths relative to the repository root).
TORCH = ["tests/test_ops.py", "tests/test_exact_edges.py", "tests/test_single_step_op.py",
         "tests/test_reference.py", "tests/test_dropin.py"]
MODULE = TORCH + ["tests/test_reliability_state.py", "tests/test_reliability_settings.py"]
SURROGATES = TORCH + ["tests/test_surrogate_spec.py"]
TRITON = ["tests/interpret/test_kernels.py"]  # run with TRITON_INTERPRET=1 (run_tests)
BACKEND = ["tests/test_backend.py"]
SELFTEST = ["tests/test_selftest.py"]  # its in-process tests come first, so -x stops before the slow runs
GRAPHS = ["tests/test_cuda_graphs.py"]  # the CPU checks of the route a device runs (capture-safe)
REDUCTIONS = ["tests/interpret/test_reductions.py"]  # the blocked sums, split small (also TRITON_INTERPRET=1)
REPEAT = ["tests/interpret/test_reductions_repeat.py"]  # their bitwise repeatability
DIRECT = ["tests/test_direct_launch.py"]  # direct launching against triton's binder (no GPU needed)


class Mutation(NamedTuple):
    key: str
    what: str
    path: str  # inside the package copy: staa/... (staa/kernels/... is the repository's kernels/)
    old: str
    new: str
    tests: Sequence[str]
    fast: bool = False  # in the subset CI runs


MUTATIONS: List[Mutation] = [
    # ---- the torch op (the default CPU path)
    Mutation("T1", "hard reset goes to 0 instead of v_reset", "staa/ops/torch_impl.py",
             "h_out.add_(spike_out, alpha=v_reset)", "h_out.add_(spike_out, alpha=0.0)", TORCH, True),
    Mutation("T2", "the reset potential's term of dL/dV is dropped", "staa/ops/torch_impl.py",
             "g_v.add_(g_h, alpha=h_rest)", "g_v.add_(g_h, alpha=0.0)", TORCH, True),
    Mutation("T3", "the surrogate window is centred on 1.0 instead of v_threshold", "staa/ops/torch_impl.py",
             "x = torch.sub(v, v_threshold, out=out)", "x = torch.sub(v, 1.0, out=out)", TORCH, True),
    Mutation("T4", "the strict window |x| < a/2 becomes <=", "staa/ops/torch_impl.py",
             "x.abs_().lt_(p / 2)", "x.abs_().le_(p / 2)", TORCH, True),
    Mutation("T5", "firing at V > v_th instead of V >= v_th", "staa/ops/torch_impl.py",
             "torch.ge(v, v_threshold, out=spike_out)", "torch.gt(v, v_threshold, out=spike_out)", TORCH, True),
    Mutation("T6", "soft reset subtracts 1 instead of v_threshold", "staa/ops/torch_impl.py",
             "return torch.add(v, spike_out, alpha=-v_threshold, out=h_out)",
             "return torch.add(v, spike_out, alpha=-1.0, out=h_out)", TORCH),
    Mutation("T7", "detach_reset is ignored by the hard-reset backward", "staa/ops/torch_impl.py",
             "    if detach_reset:\n        g_v = torch.mul(win, gs_t, out=out)\n    else:",
             "    if False:\n        g_v = torch.mul(win, gs_t, out=out)\n    else:", TORCH),
    Mutation("T8", "the initial state h0 is ignored (every call starts from 0)", "staa/ops/torch_impl.py",
             "h, h_out = h0.to(cd), torch.empty(", "h, h_out = torch.zeros_like(h0, dtype=cd), torch.empty(", TORCH),
    Mutation("T9", "dL/dh0 is dropped (no gradient between single-step calls)", "staa/ops/torch_impl.py",
             "return from_step0.to(h0.dtype)", "return torch.zeros_like(h0)", TORCH),
    Mutation("T10", "atan surrogate: p instead of p / 2 (twice the gradient)", "staa/ops/torch_impl.py",
             ".square_().add_(1.0).reciprocal_().mul_(p / 2)", ".square_().add_(1.0).reciprocal_().mul_(p)", TORCH),
    Mutation("T11", "sigmoid surrogate: the factor p is dropped", "staa/ops/torch_impl.py",
             "return x.addcmul_(x, x, value=-1.0).mul_(p)", "return x.addcmul_(x, x, value=-1.0)", TORCH),
    Mutation("T12", "fast_sigmoid surrogate: 1/(p|x|+1) instead of its square", "staa/ops/torch_impl.py",
             "x.abs_().mul_(p).add_(1.0).square_().reciprocal_()", "x.abs_().mul_(p).add_(1.0).reciprocal_()", TORCH),
    Mutation("T13", "step attention pools U without the scale alpha", "staa/ops/torch_impl.py",
             "y1 = F.linear(alpha * m, p.fc1_weight, p.fc1_bias)", "y1 = F.linear(m, p.fc1_weight, p.fc1_bias)", TORCH),
    # ---- the spec's surrogate formulas (shared by the reference and the module)
    Mutation("S1", "the atan formula loses its factor 1/2 everywhere", "staa/surrogate.py",
             "return p / (2.0 * (1.0 + (math.pi / 2 * p * x) ** 2))", "return p / (1.0 + (math.pi / 2 * p * x) ** 2)",
             SURROGATES),
    # ---- the module (TSRD, single-step bookkeeping, position-encoding rows)
    Mutation("M1", "TSRD may drop the first step of a sequence", "staa/neuron.py",
             "                drop[0] = False\n", "                pass\n", MODULE, True),
    Mutation("M2", "a call that starts at t0 > 0 reads position-encoding rows from 0", "staa/functional.py",
             "return pos[t0:t0 + T]", "return pos[0:T]", MODULE, True),
    Mutation("M3", "single-step calls do not advance the step counter", "staa/neuron.py",
             "            self._t = t0 + 1\n", "            self._t = t0\n", MODULE),
    # ---- the torch route's device branch (TSRD selected on the device) and the captured step counter
    Mutation("G1", "on a device, a dropped step keeps the aggregator's U", "staa/ops/torch_impl.py",
             "torch.where(d_t, xc[t] + h, u_t, out=u_t)", "torch.where(d_t, u_t, u_t, out=u_t)", GRAPHS),
    Mutation("G2", "on a device, a dropped step's GC key gradient joins the weight gradients",
             "staa/ops/_global_context.py", "g_key_t = _zero_if(dropped, g_key_t)", "g_key_t = g_key_t", GRAPHS),
    Mutation("G3", "a compiled or captured single-step call starts its device counter at 0", "staa/neuron.py",
             "torch.full((), self._t, dtype=torch.long", "torch.full((), 0, dtype=torch.long", GRAPHS),
    # ---- the Triton kernels, one per family (run under TRITON_INTERPRET=1)
    Mutation("K1", "kernels' reset helper fires at V > v_th", "staa/kernels/staa_fwd.py",
             "    s = v >= v_th\n", "    s = v > v_th\n", TRITON, True),
    Mutation("K2", "backward elementwise: the rect window edge counts as inside", "staa/kernels/staa_bwd.py",
             "g = tl.where(tl.abs(x) < p * 0.5, gs / p, 0.0)", "g = tl.where(tl.abs(x) <= p * 0.5, gs / p, 0.0)",
             TRITON, True),
    Mutation("K3", "backward elementwise: dL/dH_{-1} is written as 0", "staa/kernels/staa_bwd.py",
             "tl.store(gh0_ptr + state, gh, mask=m)", "tl.store(gh0_ptr + state, gh * 0.0, mask=m)", TRITON),
    Mutation("K4", "backward MLPs: step attention's alpha dropped in dL/dmean", "staa/kernels/staa_bwd.py",
             "gm = tl.where(dropped, 0.0, alpha * tl.sum(w1.to(CD) * ghid[:, None], axis=0))",
             "gm = tl.where(dropped, 0.0, tl.sum(w1.to(CD) * ghid[:, None], axis=0))", TRITON),
    Mutation("K5", "forward MLPs: step attention pools without alpha", "staa/kernels/staa_fwd.py",
             "pooled = alpha * (gx + gh)", "pooled = (gx + gh)", TRITON),
    Mutation("K6", "plane reduction: the loaded h0 is ignored in the first step's context", "staa/kernels/staa_fwd.py",
             "z = tl.where(t > 0, h, hi)", "z = tl.where(t > 0, h, h0)", TRITON),
    Mutation("K7", "per-step forward: the first step ignores the loaded h0", "staa/kernels/staa_fwd.py",
             "            h = tl.load(h0_ptr + b.to(tl.int64) * C * P + tile, mask=m, other=0.0)\n",
             "            h = tl.zeros([BLOCK_C, BLOCK_P], dtype=CD) + h0\n", TRITON),
    Mutation("K8", "forward (both loop paths): position encoding read from row 0 at every step", "staa/kernels/staa_fwd.py",
             "xx = xx + tl.load(pos_ptr + t * C + offs_c, mask=mc, other=0.0)",
             "xx = xx + tl.load(pos_ptr + 0 * C + offs_c, mask=mc, other=0.0)", TRITON),
    # ---- the backend choice and the self-test's criteria
    Mutation("BK1", "auto trusts a verified entry whatever the kernels' fingerprint", "staa/_backend.py",
             "        if r.kernels == mine:", "        if True:", BACKEND),
    Mutation("BK2", "auto does not recognise a ROCm build", "staa/_backend.py", "    if hip:\n", "    if False:\n", BACKEND),
    Mutation("ST1", "the self-test never applies the spike-agreement threshold", "staa/_selftest_criteria.py",
             "    if agreement < SPIKE_AGREEMENT:", "    if False:", SELFTEST),
    Mutation("ST2", "the self-test's 2x error rule becomes 200x", "staa/_selftest_criteria.py",
             "        if e_tri > max(ERROR_RATIO * e_tor, floor):", "        if e_tri > max(100 * ERROR_RATIO * e_tor, floor):",
             SELFTEST),
    Mutation("ST3", "a filter that selects no case is not an error", "staa/_selftest.py",
             "        if not cases:\n            raise NoCaseSelected", "        if False:\n            raise NoCaseSelected",
             SELFTEST),
    # ---- the blocked reductions (sums over the batch and the plane, split into blocks and ranges)
    Mutation("R1", "parameter gradients: pass 2 drops the last row range's partial", "staa/kernels/staa_bwd.py",
             "mask=(sp < NS)[:, None] & me[None, :], other=0.0)", "mask=(sp < NS - 1)[:, None] & me[None, :], other=0.0)",
             REDUCTIONS, True),
    Mutation("R2", "MLP kernels: the last plane tile's partial is dropped from every tile sum", "staa/kernels/staa_fwd.py",
             "mask=(rows < NP)[:, None] & mc[None, :], other=0.0)", "mask=(rows < NP - 1)[:, None] & mc[None, :], other=0.0)",
             REDUCTIONS),
    Mutation("R3", "weight-matrix sums: a row range's blocks are read from row 0 (range offset lost)",
             "staa/kernels/staa_bwd.py",
             "n = lo + k * BLOCK_N + offs_n\n            mn = n < hi", "n = k * BLOCK_N + offs_n\n            mn = n < hi",
             REDUCTIONS),
    Mutation("R4", "MLP kernels: every block of plane-tile partials re-reads the first block", "staa/kernels/staa_fwd.py",
             "rows = j0 + offs_j", "rows = offs_j", REDUCTIONS),
    Mutation("R5", "pass 2 adds the row ranges in an order set by the output's address (not bitwise repeatable)",
             "staa/kernels/staa_bwd.py", "sp = s0 + offs_s",
             "sp = tl.where(s0 + offs_s < NS, (s0 + offs_s + out_ptr.to(tl.int64) // 4) % NS, NS)", REPEAT),
    # ---- direct launching of the compiled kernels
    Mutation("L1", "direct launch: a tensor's 16-byte alignment left out of the key", "staa/kernels/_direct.py",
             "(a.dtype, a.data_ptr() % 16 == 0) if isinstance", "(a.dtype,) if isinstance", DIRECT, True),
    Mutation("L2", "direct launch: a kernel's constexpr defaults left off the argument list", "staa/kernels/_direct.py",
             "kwargs[name] if name in kwargs else default for", "kwargs[name] for", DIRECT),
]


def copy_package(dst: str) -> str:
    """The package as it installs (``staa`` from src/staa, ``staa.kernels`` from kernels/) under ``dst``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(os.path.join(ROOT, "src", "staa"), os.path.join(dst, "staa"), ignore=ignore)
    shutil.copytree(os.path.join(ROOT, "kernels"), os.path.join(dst, "staa", "kernels"), ignore=ignore)
    return dst


def apply(m: Mutation, pkg: str) -> None:
    path = os.path.join(pkg, m.path)
    with open(path) as f:
        src = f.read()
    n = src.count(m.old)
    if n != 1:
        raise LookupError(f"{m.key}: the code to mutate occurs {n} times in {m.path} (expected once); "
                          f"update the mutation list in scripts/mutation_check.py")
    with open(path, "w") as f:
        f.write(src.replace(m.old, m.new))


def run_tests(m: Mutation, pkg: str, timeout: float) -> tuple:
    """(killed, seconds, last line of pytest's output)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg, env.get("PYTHONPATH", "")) if p)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["HYPOTHESIS_PROFILE"] = "mutation"  # tests/conftest.py: fixed examples, no example database
    if any(t.startswith("tests/interpret/") for t in m.tests):
        env["TRITON_INTERPRET"] = "1"  # tests/interpret/conftest.py: the interpreter's own pytest process
    # -x: the first failing test kills the mutation; no cache, so runs do not see each other.
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-rf", "-p", "no:cacheprovider", "-W", "ignore", *m.tests]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return True, time.perf_counter() - t0, f"timed out after {timeout:.0f}s (counted as killed)"
    lines = [ln for ln in res.stdout.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else res.stderr.strip()[-200:]
    failed = [ln.split(" ", 1)[1].split(" - ")[0] for ln in lines if ln.startswith("FAILED ")]
    if failed:  # which test killed it
        last = f"{last}; by {failed[0]}"
    if res.returncode not in (0, 1):  # 2+: collection/usage error, not a test verdict
        raise RuntimeError(f"{m.key}: pytest exited {res.returncode}:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return res.returncode == 1, time.perf_counter() - t0, last


def check_imports_come_from(pkg: str) -> None:
    """The tests must import the copy, not the installed package (else nothing is mutated)."""
    env = dict(os.environ, PYTHONPATH=pkg)
    out = subprocess.run([sys.executable, "-c", "import staa, staa.ops, staa.functional; print(staa.__file__)"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    if not out.stdout.strip().startswith(pkg):
        raise RuntimeError(f"'import staa' does not pick the temporary copy ({out.stdout.strip() or out.stderr})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fast", action="store_true", help="only the subset marked fast (what CI runs)")
    ap.add_argument("--only", nargs="+", metavar="KEY", help="only these mutations (e.g. T4 K2)")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutation's test run")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if (not args.fast or m.fast) and (not args.only or m.key in args.only)]
    if args.only and len(chosen) != len(set(args.only)):
        known = {m.key for m in MUTATIONS}
        ap.error(f"unknown mutation keys {sorted(set(args.only) - known)}; see --list")
    if args.list:
        for m in chosen:
            print(f"{m.key:4} {'fast' if m.fast else '    '} {m.path:28} {m.what}")
        return 0
    survived, started = [], time.perf_counter()
    print(f"{len(chosen)} mutations; each runs the tests relevant to it against a mutated copy of the package",
          flush=True)
    for m in chosen:
        with tempfile.TemporaryDirectory(prefix="staa-mut-") as tmp:
            pkg = copy_package(os.path.join(tmp, "pkg"))
            check_imports_come_from(pkg)
            try:
                apply(m, pkg)
            except LookupError as e:
                print(e, file=sys.stderr)
                return 2
            killed, secs, last = run_tests(m, pkg, args.timeout)
        verdict = "killed  " if killed else "SURVIVED"
        print(f"{verdict} {m.key:4} {secs:6.1f}s  {m.what}  [{last}]", flush=True)
        if not killed:
            survived.append(m)
    total = time.perf_counter() - started
    print(f"\n{len(chosen) - len(survived)}/{len(chosen)} killed in {total:.0f}s")
    if survived:
        print("survived: " + ", ".join(f"{m.key} ({m.what})" for m in survived))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
