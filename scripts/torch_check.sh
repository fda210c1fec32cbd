#!/usr/bin/env bash
# PyTorch tensors over tensorpool memory (crates/tensorpool-py/python/tests/test_torch.py).
# torch is several GB from PyPI (with its CUDA libraries), so it is not in the test
# command, whose pytest skips that file; this script installs it, pinned, into a venv of
# its own (.venv-torch), builds the package into it and runs the tests.
#
#   ./scripts/torch_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=2.15.0
if [ ! -x .venv-torch/bin/python ]; then
    python3 -m venv .venv-torch
fi
.venv-torch/bin/pip install --quiet --disable-pip-version-check \
    -r crates/tensorpool-py/requirements.txt "torch==$TORCH_VERSION"
(cd crates/tensorpool-py && ../../.venv-torch/bin/maturin develop --release --locked --quiet)
.venv-torch/bin/python -m pytest -q -p no:cacheprovider crates/tensorpool-py/python/tests/test_torch.py
