#!/usr/bin/env bash
# Install staa with its test extra into the active Python environment and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0        # CPU build; pin it so pip does not pull a CUDA build
python -m pip install -q -e '.[test]'
# spikingjelly 2.0's declared dependencies (torchvision, tensorboard, ...) are not needed by staa:
python -m pip install -q --no-deps spikingjelly==2.0.0
python -m pip install -q loguru tqdm packaging
# snnTorch 1.0 for staa.convert's snnTorch tests. Its modules that convert and the tests use import only
# torch and numpy (staa's own dependencies); --no-deps keeps pip from resolving anything else:
python -m pip install -q --no-deps snntorch==1.0.0
# Optional packages installed above must be present: their tests fail instead of skipping.
export STAA_REQUIRE_OPTIONAL=1
# The legacy spikingjelly 0.0.0.0.14 release (pure Python) for staa.convert's tests, kept out of
# the environment and used from a subprocess:
if [ ! -d .cache/sj0014/unpacked ]; then
    python -m pip download -q --no-deps spikingjelly==0.0.0.0.14 -d .cache/sj0014
    python -m zipfile -e .cache/sj0014/spikingjelly-0.0.0.0.14-py3-none-any.whl .cache/sj0014/unpacked
fi
export STAA_SJ0014_PATH="$PWD/.cache/sj0014/unpacked"
python -m pytest -q "$@"
# The Triton kernels under the interpreter, in a pytest process of their own (TRITON_INTERPRET=1 must
# be set before triton is imported; tests/interpret/conftest.py). Skipped when arguments pick tests.
if [ "$#" -eq 0 ]; then
    TRITON_INTERPRET=1 python -m pytest -q tests/interpret
fi
