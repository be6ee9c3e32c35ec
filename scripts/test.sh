#!/usr/bin/env bash
# Install staa with its test extra into the active Python environment and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0        # CPU build; pin it so pip does not pull a CUDA build
python -m pip install -q -e '.[test]'
# spikingjelly 2.0's declared dependencies (torchvision, tensorboard, ...) are not needed by staa:
python -m pip install -q --no-deps spikingjelly==2.0.0
python -m pip install -q loguru tqdm packaging
python -m pytest -q "$@"
