"""staa.convert against the real spikingjelly 0.0.0.0.14 release, in subprocesses.

0.0.0.0.14 is pure Python but cannot share a process with the installed spikingjelly 2.x,
so its wheel is unpacked into a folder (see docs/convert.md) named by the environment
variable ``STAA_SJ0014_PATH``, and tests/sj0014_check.py runs with that folder first on
``PYTHONPATH``. Without the variable these tests are skipped.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SJ0014 = os.environ.get("STAA_SJ0014_PATH")

pytestmark = pytest.mark.skipif(
    not SJ0014, reason="set STAA_SJ0014_PATH to an unpacked spikingjelly 0.0.0.0.14 wheel (see docs/convert.md)"
)


def _run(mode: str) -> subprocess.CompletedProcess:
    root = Path(SJ0014)
    assert (root / "spikingjelly" / "clock_driven" / "neuron.py").is_file(), (
        f"STAA_SJ0014_PATH={SJ0014} does not hold an unpacked spikingjelly 0.0.0.0.14 wheel"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(HERE)]), PYTHONWARNINGS="ignore::SyntaxWarning")
    return subprocess.run(
        [sys.executable, str(HERE / "sj0014_check.py"), mode], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.parametrize("mode", ["legacy", "activation"])
def test_sj0014_detection_and_conversion(mode):
    """legacy: clock_driven {LIF, MultiStepLIF, PLIF, MultiStepPLIF, IF, MultiStepIF}Node;
    activation: activation_based {LIF, PLIF, IF}Node of the same release."""
    out = _run(mode)
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr[-4000:]}"
    assert out.stdout.strip().endswith(f"{mode} ok")
