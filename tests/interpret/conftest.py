"""The Triton kernels under the interpreter, in a pytest process of their own.

Triton decides at decoration time whether a kernel is compiled or interpreted (it reads
``TRITON_INTERPRET`` when ``@triton.jit`` runs), and tests of the main run check that
``backend="triton"`` refuses CPU tensors when the variable is unset. So this directory runs
only as ``TRITON_INTERPRET=1 python -m pytest tests/interpret`` (scripts/test.sh runs it after
the main suite; tests/conftest.py leaves it out of a run without the variable).
"""
import importlib.util
import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    raise pytest.UsageError(
        "tests/interpret runs the Triton kernels under the interpreter: run it as "
        "TRITON_INTERPRET=1 python -m pytest tests/interpret (scripts/test.sh does)"
    )
if importlib.util.find_spec("triton") is None and os.environ.get("STAA_REQUIRE_OPTIONAL") != "1":
    collect_ignore_glob = ["test_*.py"]  # no triton on this platform: nothing to interpret

