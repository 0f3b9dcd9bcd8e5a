#!/usr/bin/env bash
# One-command setup: a virtual environment in .venv with the pinned versions of
# requirements.lock (CPU build of torch 2.13.0) and this project installed editable.
# Idempotent: re-running only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
# Build the fused HyperLSTM kernels now (cached by torch) rather than in the first training job;
# without a compiler the models fall back to their Python path, so this step never fails setup.
.venv/bin/python -c "from hypermodels.fast_hyperlstm import fused_extension; fused_extension()" || true
.venv/bin/python -c "import torch, ray, mlflow, hypermodels, service; print(f'setup ok: torch {torch.__version__}, ray {ray.__version__}, mlflow {mlflow.__version__}')"
