#!/usr/bin/env bash
# Creates .venv-torch: Python 3.11 with the CPU build of torch 2.13 and torchvision 0.28, used
# by the tests to compare jaxcnn's models with torchvision's (tests/torch_reference.py).
# torchvision is installed without its dependencies so that pip does not fetch a CUDA build
# of torch; its compiled detection ops are not needed for the classification models.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${TORCH_PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv-torch/bin/python ] || "$PY" -m venv .venv-torch
.venv-torch/bin/pip install -q torch==2.13.0 numpy pillow
.venv-torch/bin/pip install -q --no-deps torchvision==0.28.0
.venv-torch/bin/python -c "import torch; print('torch', torch.__version__, 'for the torchvision reference checks')"
