"""The self-test (``staa.selftest``, ``python -m staa selftest``).

The runs go through the Triton interpreter in subprocesses (``TRITON_INTERPRET=1`` must be
set before triton is imported); the criteria, the case plan, the timing and the
recommendation are also tested in-process on synthetic data, so that each can be seen to fail.
"""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import staa
from staa import _selftest as st

from conftest import requires_spikingjelly

ROOT = Path(__file__).resolve().parents[1]
requires_triton = pytest.mark.skipif(
    __import__("importlib").util.find_spec("triton") is None, reason="triton is not installed")


def _env(**extra):
    env = dict(os.environ)
    for k in ("STAA_BACKEND", "STAA_TRITON_PATH", "TRITON_INTERPRET"):
        env.pop(k, None)
    env.update(extra)
    return env


def _run(args, code=None, timeout=900, **env):
    cmd = [sys.executable, "-m", "staa", "selftest", *args] if code is None else [sys.executable, "-c", code, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(**env), cwd=ROOT, timeout=timeout)


def _rows(out):
    return [line for line in out.splitlines() if line.startswith(("PASS", "FAIL"))]


# ----------------------------------------------------------------------------- the plan

def test_plan_covers_what_a_user_needs():
    cases = st.plan()
    assert {c.path for c in cases} == set(st.PATHS)
    layer = {(c.shape, c.dtype) for c in cases if c.group == "layer"}
    assert layer == {(s, d) for s in [(4, 32, 128, 32, 32), (4, 64, 512, 4, 4)] for d in st.CASE_DTYPES}
    assert {c.surrogate for c in cases if c.group == "surrogate"} == set(st.SURROGATES)
    assert {c.criterion for c in cases if c.group == "layer" and c.dtype != "float64"} == {"statistical"}
    assert {c.dtype for c in cases if c.group == "chain"} == {"float64", "float32"}
    mine = st.plan(shapes=[(8, 16, 64, 32, 32), (4, 2, 10)], groups=["layer"], dtypes=["float32"])
    assert [c.shape for c in mine] == [(8, 16, 64, 32, 32)] * 2 + [(4, 2, 10)] * 2
    assert st.plan(shapes=(4, 2, 8, 4, 4), groups=["layer"], paths=["per_step"])[0].shape == (4, 2, 8, 4, 4)
    with pytest.raises(ValueError, match=r"shape must be \[T, B, C\] or \[T, B, C, H, W\]"):
        st.plan(shapes=[(4, 2, 8, 4)])


# ----------------------------------------------------------------------------- the criteria, on synthetic data

def _outcome(T=2, B=3, C=4, P=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(T, B, C, P, generator=g, dtype=torch.float64)
    spikes = (v > 0.5).double()
    return st._Outcome(spikes, torch.randn(B, C, P, generator=g, dtype=torch.float64),
                       {"x": torch.randn(T, B, C, P, generator=g, dtype=torch.float64),
                        "w": torch.randn(C, C, generator=g, dtype=torch.float64)})


def _noisy(o, scale, seed):
    g = torch.Generator().manual_seed(seed)
    n = lambda t: t + scale * t.abs().max() * torch.randn(t.shape, generator=g, dtype=t.dtype)  # noqa: E731
    return st._Outcome(o.spikes.clone(), n(o.h_last), {k: n(v) for k, v in o.grads.items()})


CASE = st.Case("layer", "layer", (2, 3, 4, 5), "float32")


def test_statistical_criterion_passes_noise_of_the_torch_routes_size():
    ref = _outcome()
    tor, tri = _noisy(ref, 1e-4, 1), _noisy(ref, 1e-4, 2)
    problems, m = st._statistical_compare(CASE, tri, tor, ref)
    assert problems == [] and m["spike_agreement"] == 1.0 and m["clean_samples"] == 3
    assert 0.3 < m["max_error_ratio"] < 2.0


def test_statistical_criterion_catches_a_larger_error_than_torchs():
    ref = _outcome()
    tor, tri = _noisy(ref, 1e-4, 1), _noisy(ref, 5e-4, 2)
    problems, _ = st._statistical_compare(CASE, tri, tor, ref)
    assert any("error vs float64" in p and "2 x the torch route's" in p for p in problems), problems
    # within the relative floor, a larger ratio is accepted (both far below any real defect)
    tor, tri = _noisy(ref, 1e-9, 1), _noisy(ref, 1e-7, 2)
    assert st._statistical_compare(CASE, tri, tor, ref)[0] == []


def test_a_block_parameters_floor_scales_with_its_block():
    """A GC key bias gradient (one number, summed with cancellation) is held to 1e-5 of its block's
    gradients, not of its own size: rounding noise there passes, a real error is still caught."""
    ref = _outcome()
    g = torch.Generator().manual_seed(5)
    ref.grads["gc_x.key.bias"] = torch.tensor([0.02], dtype=torch.float64)
    ref.grads["gc_x.query.weight"] = torch.randn(4, 4, generator=g, dtype=torch.float64)  # norm ~4
    tor, tri = _noisy(ref, 1e-9, 1), _noisy(ref, 1e-9, 2)
    tor.grads["gc_x.key.bias"] = ref.grads["gc_x.key.bias"] + 1.6e-7  # the torch route's rounding
    tri.grads["gc_x.key.bias"] = ref.grads["gc_x.key.bias"] + 5e-7  # 2.5e-5 of its own size, 3x torch's
    assert st._statistical_compare(CASE, tri, tor, ref)[0] == []
    tri.grads["gc_x.key.bias"] = ref.grads["gc_x.key.bias"] * 1.01  # a 1% error: far above the block's floor
    problems, _ = st._statistical_compare(CASE, tri, tor, ref)
    assert any(p.startswith("grad gc_x.key.bias: error vs float64") for p in problems), problems
    # a tensor outside any block keeps its own norm as the scale
    tri = _noisy(ref, 1e-9, 2)
    tri.grads["w"] = ref.grads["w"] * (1 + 3e-5)
    problems, _ = st._statistical_compare(CASE, tri, tor, ref)
    assert any(p.startswith("grad w: error vs float64") for p in problems), problems


def test_statistical_criterion_catches_flipped_spikes_and_a_wrong_gradient():
    ref = _outcome(T=4, B=50, C=10, P=10)
    tor = _noisy(ref, 1e-6, 1)
    tri = _noisy(ref, 1e-6, 2)
    tri.spikes.view(-1)[:3] = 1 - tri.spikes.view(-1)[:3]  # 3 of 20000: 99.985% agreement
    problems, m = st._statistical_compare(CASE, tri, tor, ref)
    assert m["spike_mismatches"] == 3 and any("spikes agree" in p for p in problems)
    tri = _noisy(ref, 1e-6, 2)
    tri.grads["w"] = -tri.grads["w"] + 0.02 * ref.grads["w"]
    problems, m = st._statistical_compare(CASE, tri, tor, ref)
    assert m["min_cosine_of"] == "grad w" and any("grad w: cosine" in p for p in problems)


def test_statistical_criterion_measures_errors_only_where_no_spike_flipped():
    ref = _outcome(T=4, B=50, C=10, P=10)
    tor, tri = _noisy(ref, 1e-6, 1), _noisy(ref, 1e-6, 2)
    tri.spikes[1, 7, 0, 0] = 1 - tri.spikes[1, 7, 0, 0]  # one flip (99.995%): sample 7 changes as a whole
    tri.grads["x"][:, 7] += 0.05
    tri.h_last[7] += 0.05
    problems, m = st._statistical_compare(CASE, tri, tor, ref)
    assert problems == [] and m["clean_samples"] == 49 and m["spike_mismatches"] == 1
    tri.grads["x"][:, 8] *= 1.001  # a sample without a flip is held to the 2x rule
    problems, _ = st._statistical_compare(CASE, tri, tor, ref)
    assert any(p.startswith("grad x: error vs float64") for p in problems), problems


def test_exact_criterion_and_structure_checks():
    ref = _outcome()
    case = st.Case("exact", "conv", (2, 3, 4, 5), "float32")
    assert st._exact_compare(case, _noisy(ref, 1e-7, 1), ref, "t")[0] == []
    problems, m = st._exact_compare(case, _noisy(ref, 1e-3, 1), ref, "t")
    assert any("gradient of w differs" in p for p in problems) and any("last state differs" in p for p in problems)
    bad = _noisy(ref, 0.0, 1)
    bad.spikes[0, 0, 0, 0] = 1 - bad.spikes[0, 0, 0, 0]
    assert st._exact_compare(case, bad, ref, "t")[0] == ["t: 1 spikes differ"]

    m = staa.STAALIF(4, 2)
    x = torch.randn(2, 3, 4)
    grads = {"x": torch.zeros_like(x), **{n: torch.zeros_like(p) for n, p in m.named_parameters()}}
    good = st._Outcome(torch.zeros_like(x), torch.zeros(3, 4), grads)
    assert st._structure(case, good, x, m) == []
    grads = dict(grads, x=torch.full_like(x, float("nan")))
    grads["sa.fc1.weight"] = grads["sa.fc1.weight"].double()
    broken = st._Outcome(torch.zeros_like(x).bfloat16(), torch.zeros(3, 4), grads)
    problems = st._structure(case, broken, x, m)
    assert any(p.startswith("spikes torch.bfloat16") for p in problems)
    assert "gradient of x not finite" in problems
    assert any(p.startswith("gradient of sa.fc1.weight: torch.float64") for p in problems)


# ----------------------------------------------------------------------------- timing and recommendation

def test_time_layer_on_the_cpu_reports_times_and_failures(monkeypatch):
    """The timing machinery on a tiny CPU layer (correctness only; the figures mean nothing here)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    row = st.time_layer((2, 1, 4), "float32", "cpu", providers=("torch", "triton"), repeat=2, warmup=1)
    assert row["shape"] == [2, 1, 4] and row["ms"]["torch"] > 0
    assert "triton" not in row["ms"] and row["notes"]["triton"].startswith("failed: RuntimeError")
    lines = st.timing_lines([row])
    assert lines[0].split()[-4:] == list(st.PROVIDERS)
    assert "failed" in lines[1] and "2x1x4 float32" in lines[1]


@requires_spikingjelly
def test_time_layer_times_spikingjellys_lif():
    row = st.time_layer((2, 1, 4, 2, 2), "float32", "cpu", providers=("spikingjelly",), repeat=1, warmup=1)
    assert row["ms"]["spikingjelly"] > 0 and "LIFNode" in row["notes"]["spikingjelly"]


def _result(ok):
    return st.CaseResult(st.Case("layer", "layer", (4, 2, 8), "float32"), ok, [] if ok else ["x"], {})


def _timing(triton, torch_ms, compile_ms=None, shape=(4, 32, 128, 32, 32)):
    ms = {"triton": triton, "torch": torch_ms}
    if compile_ms is not None:
        ms["compile"] = compile_ms
    return {"shape": list(shape), "dtype": "float32", "ms": ms, "notes": {}}


def test_recommendation():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    rec = st.recommend([_result(True)], [], cpu, True, "torch")
    assert rec[0] == "torch" and "interpreter" in rec[1]
    rec = st.recommend([_result(True), _result(False)], [_timing(1.0, 5.0)], cuda, False, "torch")
    assert rec[0] == "torch" and "1 of 2 cases failed" in rec[1]
    rec = st.recommend([_result(True)], [_timing(2.0, 5.0)], cuda, False, "torch")
    assert rec[0] == "triton" and "2.50x" in rec[1] and "pass backend='triton'" in rec[1]
    rec = st.recommend([_result(True)], [_timing(2.0, 5.0)], cuda, False, "triton")
    assert rec[0] == "triton" and "pass backend='triton'" not in rec[1]
    rec = st.recommend([_result(True)], [_timing(6.0, 5.0, compile_ms=4.0)], cuda, False, "torch")
    assert rec[0] == "torch" and "not faster" in rec[1] and "torch.compile of the reference was faster" in rec[1]
    rec = st.recommend([_result(True)], [_timing(2.0, 5.0), _timing(6.0, 5.0, shape=(4, 64, 512, 4, 4))], cuda,
                       False, "torch")
    assert rec[0] == "triton" and "per layer" in rec[1] and "4x64x512x4x4" in rec[1]
    rec = st.recommend([_result(True)], [], cuda, False, "torch")
    assert rec[0] == "torch" and "nothing was timed" in rec[1]


def test_report_text_ends_with_the_recommendation():
    report = st.SelftestReport("cuda:0", "GPU", False, ["head"], [_result(True), _result(False)],
                               [_timing(2.0, 5.0)], ("torch", "because"), "torch (auto: ...)", 1.0)
    lines = str(report).splitlines()
    assert lines[0] == "head" and lines[-1] == "recommendation: backend='torch': because"
    assert not report.ok and len(report.failed) == 1 and "1 of 2 cases pass" in report.summary()
    assert json.loads(json.dumps(report.to_dict()))["recommendation"] == {"backend": "torch", "why": "because"}
    assert not st.SelftestReport("cpu", "", True, [], [], [], ("torch", ""), "", 0.0).ok  # no case is no pass


def test_verified_entry_only_after_a_complete_passing_gpu_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L4")
    monkeypatch.setattr(torch.version, "hip", None)
    cuda, ok = torch.device("cuda", 0), [_result(True)]
    entry = st.verified_entry(cuda, ok, dtypes=["float64", "float32", "bfloat16"])
    assert entry.startswith("VerifiedRun(arch=(8, 9), device='NVIDIA L4', commit=")
    assert f"kernels='{staa._backend.kernels_fingerprint()}'" in entry
    assert st.verified_entry(cuda, ok + [_result(False)]) is None
    assert st.verified_entry(torch.device("cpu"), ok) is None
    assert st.verified_entry(cuda, []) is None
    why = st.verified_entry(cuda, ok, dtypes=["float32", "bfloat16"], paths=["persistent"])
    assert why.startswith("none: a run with --paths, --dtypes leaves cases out")
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert st.verified_entry(cuda, ok) is None


# ----------------------------------------------------------------------------- the command line

def test_selecting_no_case_is_an_error_naming_the_filter():
    proc = _run(["--interpret", "--dtypes", "float16"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no case selected: --dtypes float16 leaves none" in proc.stderr
    assert not _rows(proc.stdout)
    with pytest.raises(st.NoCaseSelected) as err:
        st.plan(tiny=True, groups=["chain"], surrogates=["atan"])
    assert err.value.filter == "surrogates" and "--surrogates atan" in str(err.value)
    with pytest.raises(st.NoCaseSelected, match="--paths") as err:
        st.plan(paths=[])
    assert err.value.filter == "paths"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_selftest_without_gpu_says_how_to_run():
    proc = _run([])
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "--interpret" in proc.stderr


def test_selftest_refuses_bad_arguments():
    proc = _run(["--interpret", "--paths", "fast"])
    assert proc.returncode == 2 and "unknown path 'fast'" in proc.stderr
    proc = _run(["--interpret", "--dtypes", "int8"])
    assert proc.returncode == 2 and "unknown dtype 'int8'" in proc.stderr
    proc = _run(["--interpret", "--shape", "4,2"])
    assert proc.returncode == 2 and "T,B,C or T,B,C,H,W" in proc.stderr
    proc = _run(["--interpret", "--providers", "cupy"])
    assert proc.returncode == 2 and "unknown provider 'cupy'" in proc.stderr


def test_main_job_keeps_its_defaults_and_mentions_selftest():
    proc = subprocess.run([sys.executable, "-m", "staa", "--help"], capture_output=True, text=True, env=_env(),
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "selftest" in proc.stdout
    proc = _run(["--help"])
    assert proc.returncode == 0
    for flag in ("--interpret", "--device", "--shape", "--dtypes", "--paths", "--surrogates", "--groups", "--tiny",
                 "--no-timing", "--providers", "--json"):
        assert flag in proc.stdout


# ----------------------------------------------------------------------------- whole runs (interpreter)

@pytest.mark.slow
@requires_triton
def test_selftest_with_a_user_shape_passes_under_the_interpreter(tmp_path):
    """The target run: every group, the user's layer at [4, 2, 8, 4, 4], exit 0, a JSON report."""
    out = tmp_path / "report.json"
    proc = _run(["--interpret", "--shape", "4,2,8,4,4", "--json", str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _rows(proc.stdout)
    # exact 4 + layer 3 dtypes + surrogate 4 kinds x 2 dtypes + chain 2, each on both loop paths
    assert len(rows) == 2 * (4 + 3 + 8 + 2) == 34 and all(r.startswith("PASS") for r in rows), proc.stdout
    report = json.loads(out.read_text())
    assert report["ok"] is True and report["interpret"] is True and len(report["results"]) == 34
    cases = [r for r in report["results"]]
    assert {c["group"] for c in cases} == set(st.GROUPS)
    assert {c["surrogate"] for c in cases} == set(st.SURROGATES)
    assert {c["path"] for c in cases} == set(st.PATHS)
    layer = [c for c in cases if c["group"] == "layer"]
    assert {tuple(c["shape"]) for c in layer} == {(4, 2, 8, 4, 4)}
    assert {c["dtype"]: c["criterion"] for c in layer} == {"float64": "exact", "float32": "statistical",
                                                          "bfloat16": "statistical"}
    for c in cases:
        m = c["metrics"]
        if c["criterion"] == "statistical":
            assert m["spike_agreement"] >= 0.9999 and m["min_cosine"] >= 0.999 and m["max_error_ratio"] <= 2.0
        else:
            assert m["spike_mismatches"] == 0
            if c["dtype"] != "float64":  # reduced-precision exact cases kept every V 1e-4 from the threshold
                assert m["margin"] >= 1e-4
    assert report["timings"] == []  # no timing under the interpreter
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("recommendation: backend='torch': ") and "interpreter" in lines[-1]
    assert "34 of 34 cases pass" in proc.stdout
    assert report["recommendation"]["backend"] == "torch"


@pytest.mark.slow
@requires_triton
def test_selftest_reports_a_mismatch_and_exits_non_zero():
    """A Triton route whose weights differ slightly from the torch route's fails both criteria."""
    code = textwrap.dedent(
        """
        import copy, sys, torch
        import staa.__main__ as main
        from staa import _selftest as st
        run = st._run
        def skewed(m, *a, **k):
            if a[4] == "triton":
                m = copy.deepcopy(m)
                with torch.no_grad():
                    m.gc_h.value.bias.add_(1e-2)
            return run(m, *a, **k)
        st._run = skewed
        sys.exit(main.main(["selftest", *sys.argv[1:]]))
        """
    )
    proc = _run(["--interpret", "--groups", "exact", "layer", "--dtypes", "float64,float32", "--paths", "persistent"],
                code=code)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = _rows(proc.stdout)
    assert len(rows) == 5 and all(r.startswith("FAIL") for r in rows), proc.stdout
    stat = [r for r in rows if "statistical" in r]
    assert len(stat) == 1 and "error vs float64" in stat[0]
    assert "0 of 5 cases pass" in proc.stdout and "5 FAILED" in proc.stdout


@requires_triton
def test_selftest_library_call_under_the_interpreter():
    code = textwrap.dedent(
        """
        import json, staa
        r = staa.selftest(interpret=True, groups=["chain"], dtypes=["float64"], paths=["persistent"])
        assert isinstance(r, staa.SelftestReport) and r.ok and len(r.results) == 1, str(r)
        assert r.results[0].case.group == "chain" and r.results[0].case.criterion == "exact"
        assert str(r).splitlines()[-1].startswith("recommendation: backend='torch'")
        json.dumps(r.to_dict())
        print("OK")
        """
    )
    proc = _run([], code=code, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr


@requires_triton
def test_interpret_after_triton_was_imported_is_refused():
    code = "import triton, staa\nstaa.selftest(interpret=True)"
    proc = _run([], code=code, timeout=300)
    assert proc.returncode != 0 and "TRITON_INTERPRET=1 before triton is imported" in proc.stderr


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_selftest_on_the_gpu(tmp_path):
    out = tmp_path / "selftest.json"
    proc = _run(["--json", str(out)], timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["ok"] and len(report["results"]) == len(st.plan())
    assert re.match(r"recommendation: backend='(torch|triton)': ", proc.stdout.strip().splitlines()[-1])
