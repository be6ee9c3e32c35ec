"""benchmarks/gpu_check.sh without a GPU: argument parsing, the wheel list, the dry run, the stop
without a GPU and a rehearsal of the steps; the benchmark script's CPU smoke mode."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

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


STEP_FILES = ("pip.log", "env.txt", "nvidia-smi.txt", "tests_cuda_graphs.log", "tests_triton_cuda.log",
              "selftest_u1.txt", "selftest_u2.txt", "bench.log", "graph.log", "profile.log", "host_cost.log",
              "cost_model.txt",
              "summary.md")


def _run(*args, **env_vars):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "STAA_GPU_CHECK_REHEARSE", "STAA_COMMIT")}
    env.update(PYTHON=sys.executable, **env_vars)
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
    assert "tests/test_triton_cuda.py" in plan and "tests/test_cuda_graphs.py" in plan and "--no-index" in plan
    # every dtype (float64 too): only a run with every case can add the device to auto's verified list
    assert "selftest --shape 4,32,128,32,32 >" in plan and "--dtypes" not in plan
    assert "selftest --shape 4,64,512,4,4" in plan
    for script in ("bench_gpu.py", "graph_gpu.py", "profile_gpu.py", "host_cost.py --trees ROOT",
                   "cost_model.py --compare"):
        assert script in plan
    assert "row: u1 [4,32,128,32,32] bfloat16" in plan and "row: u2 [4,64,512,4,4] float32" in plan
    big = [ln for ln in plan.splitlines() if ln.startswith("row: big [16,128,256,64,64]")]
    assert len(big) == 2 and all(ln.endswith("staa-triton, sj-lif, staa-triton-graph, sj-lif-graph") for ln in big)
    u1_bf16 = next(ln for ln in plan.splitlines() if ln.startswith("row: u1 [4,32,128,32,32] bfloat16"))
    assert "staa-triton-graph" in u1_bf16 and "reference-compile" not in u1_bf16  # compiled at float32 only


def test_out_variable_is_the_default_outdir(tmp_path):
    wheels = _fake_wheels(tmp_path / "wheels")
    res = _run("--dry-run", "--wheels", wheels, OUT=str(tmp_path / "from_env"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "from_env" / "dry_run.txt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the stop without a GPU; this machine has one")
def test_without_a_gpu_it_stops_before_doing_anything(tmp_path):
    wheels = _fake_wheels(tmp_path / "wheels")  # empty files: installing one would fail loudly
    res = _run(tmp_path / "out", "--wheels", wheels)
    assert res.returncode == 6
    assert "no GPU" in res.stderr and "nothing was run" in res.stderr
    assert not (tmp_path / "out").exists()


def test_rehearsal_writes_a_file_per_step_naming_commit_and_device(tmp_path):
    """STAA_GPU_CHECK_REHEARSE=1 with an overall budget too small for any step: every step writes its
    file (skipped), each naming the commit and the device, and the summary has a line per step."""
    res = _run(tmp_path / "out", "--wheels", _fake_wheels(tmp_path / "wheels"), STAA_GPU_CHECK_REHEARSE="1",
               STAA_GPU_CHECK_BUDGET="1", STAA_COMMIT="abc1234")
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"
    for name in STEP_FILES:
        text = (out / f"gpu_abc1234_{name}").read_text()
        if name != "summary.md":
            assert "commit abc1234, device rehearsal without a GPU" in text.splitlines()[1], name
    summary = (out / "gpu_abc1234_summary.md").read_text()
    for step in ("CUDA-graph tests", "Triton CUDA tests", "self-test [4,32,128,32,32]", "self-test [4,64,512,4,4]",
                 "benchmark", "CUDA-graph replay", "device profile", "host cost", "cost model comparison"):
        assert f"- {step}: skipped" in summary, step
    assert "wall time" in summary


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
                          "--warmup", "1", "--providers",
                          "reference-eager,staa-triton,staa-triton-persistent,staa-torch-graph,staa-torch-compile"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    table = (tmp_path / "gpu_neuron.md").read_text()
    assert "| smoke [2,2,6,3,3] | float32 | reference-eager |" in table
    assert "staa-triton | failed: RuntimeError: backend='triton' cannot run" in table  # CPU without interpreter
    assert "not measured in this run" in table
    assert "staa-torch-graph | failed: RuntimeError: CUDA graphs need a CUDA device" in table
    assert "| smoke [2,2,6,3,3] | bfloat16 | staa-torch-compile | not run at bfloat16" in table
    assert (tmp_path / "gpu_neuron.json").exists()
