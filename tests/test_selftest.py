"""``python -m staa selftest``: the Triton kernels against the torch path, run here under the interpreter."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra):
    env = dict(os.environ)
    for k in ("STAA_BACKEND", "STAA_TRITON_PATH", "TRITON_INTERPRET"):
        env.pop(k, None)
    env.update(extra)
    return env


def _run(args, code=None, timeout=600, **env):
    cmd = [sys.executable, "-m", "staa", "selftest", *args] if code is None else [sys.executable, "-c", code, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(**env), cwd=ROOT, timeout=timeout)


def _rows(out):
    return [line for line in out.splitlines() if line.startswith(("PASS", "FAIL"))]


@pytest.mark.slow
def test_selftest_passes_under_the_interpreter():
    pytest.importorskip("triton")
    proc = _run(["--interpret"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _rows(proc.stdout)
    # 4 tiny cases (float64 hard and soft, float32, bfloat16) x both loop paths
    assert len(rows) == 8 and all(r.startswith("PASS") for r in rows), proc.stdout
    for dtype in ("float64", "float32", "bfloat16"):
        for path in ("per_step", "persistent"):
            assert any(dtype in r and path in r for r in rows), (dtype, path)
    for r in rows:
        assert re.search(r"spikes 0/\d+ differ", r) and "fwd+bwd triton" in r
        # the reduced-precision cases kept every V at least 1e-4 from the threshold and the window edges
        m = re.search(r"margin ([0-9.e+-]+)\)", r)
        if "float64" not in r:
            assert m and float(m.group(1)) >= 1e-4, r
    assert "8 of 8 cases agree" in proc.stdout


@pytest.mark.slow
def test_selftest_reports_a_mismatch_and_exits_non_zero():
    """A triton layer whose weights differ slightly from the torch one must be caught."""
    pytest.importorskip("triton")
    code = textwrap.dedent(
        """
        import sys, torch
        import staa.__main__ as m
        pair = m._selftest_pair
        def skewed(*a, **k):
            ref, tri = pair(*a, **k)
            with torch.no_grad():
                tri.gc_h.value.bias.add_(1e-3)
            return ref, tri
        m._selftest_pair = skewed
        sys.exit(m.main(["selftest", *sys.argv[1:]]))
        """
    )
    proc = _run(["--interpret", "--dtypes", "float64", "--paths", "persistent"], code=code)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = _rows(proc.stdout)
    assert len(rows) == 2 and all(r.startswith("FAIL") for r in rows), proc.stdout
    assert "FAILED" in proc.stdout and "backend='torch'" in proc.stdout


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


def test_main_job_keeps_its_defaults_and_mentions_selftest():
    proc = subprocess.run([sys.executable, "-m", "staa", "--help"], capture_output=True, text=True, env=_env(),
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "selftest" in proc.stdout
    proc = _run(["--help"])
    assert proc.returncode == 0
    for flag in ("--interpret", "--device", "--dtypes", "--paths", "--tiny"):
        assert flag in proc.stdout


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_selftest_on_the_gpu():
    proc = _run([], timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(_rows(proc.stdout)) == 12
