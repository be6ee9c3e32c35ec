"""benchmarks/gpu_check.sh without a GPU: argument parsing, the wheel list, the dry run."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
WHEEL_LIST = os.path.join(ROOT, "benchmarks", "gpu_wheels.txt")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _reqs():
    out = []
    for line in open(WHEEL_LIST):
        line = line.split("#")[0].strip()
        if line:
            out.append(line)
    return out


def _fake_wheels(folder, skip=()):
    folder.mkdir(exist_ok=True)
    for req in _reqs():
        name, ver = req.split("==")
        if name not in skip:
            (folder / f"{name.replace('-', '_')}-{ver}-py3-none-any.whl").write_bytes(b"")
    return folder


def _run(*args):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", SCRIPT, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def test_wheel_list_is_pinned_and_has_spikingjelly():
    reqs = _reqs()
    assert reqs and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+", r) for r in reqs)
    assert any(r.startswith("spikingjelly==") for r in reqs)


def test_dry_run_plans_every_step(tmp_path):
    wheels = _fake_wheels(tmp_path / "wheels")
    res = _run(tmp_path / "out", "--dry-run", "--wheels", wheels)
    assert res.returncode == 0, res.stderr
    plan = (tmp_path / "out" / "dry_run.txt").read_text()
    assert "SJ_LIF_CUDA_IMPLEMENTATION=triton" in plan
    assert "tests/test_triton_cuda.py" in plan and "bench_gpu.py" in plan and "--no-index" in plan
    assert "row: early [4,64,128,32,32] bfloat16" in plan and "row: deep [4,64,512,4,4] float32" in plan


def test_missing_wheel_is_named_with_the_preparation_command(tmp_path):
    wheels = _fake_wheels(tmp_path / "wheels", skip=("loguru",))
    res = _run(tmp_path / "out", "--dry-run", "--wheels", wheels)
    assert res.returncode == 4
    assert "loguru==" in res.stderr and "pip download" in res.stderr


@pytest.mark.parametrize("args, code", [((), 2), (("--bogus",), 2), (("a", "b"), 2), (("out", "--wheels"), 2)])
def test_bad_arguments(tmp_path, args, code):
    res = _run(*args)
    assert res.returncode == code and "usage" in res.stderr


def test_benchmark_script_runs_end_to_end_on_cpu(tmp_path):
    """The benchmark's CPU smoke mode (tiny shape, no GPU): every code path up to the tables."""
    script = os.path.join(ROOT, "benchmarks", "bench_gpu.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, script, "--out", str(tmp_path), "--cpu-smoke", "--rounds", "3",
                          "--warmup", "1", "--providers", "reference-eager,staa-triton,staa-triton-persistent"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    table = (tmp_path / "gpu_neuron.md").read_text()
    assert "| smoke [2,2,6,3,3] | float32 | reference-eager |" in table
    assert "staa-triton | failed: RuntimeError: backend='triton' cannot run" in table  # CPU without interpreter
    assert "not measured in this run" in table
    assert (tmp_path / "gpu_neuron.json").exists()
