#!/usr/bin/env bash
# One-command setup: a virtual environment in .venv with the pinned versions of
# requirements.lock (CPU build of torch 2.13.0) and requirements-dev.lock (ruff, mypy), and this
# project installed editable.
# Idempotent: re-running only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.lock -r requirements-dev.lock
# The MLflow UI test drives Debian's chromium headless. Install it where setup may (root with
# apt-get, as on CI); elsewhere that one test is skipped and says why. Never fails setup.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get install -y -qq chromium >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; } ||
    echo "setup: chromium could not be installed; the browser test will be skipped"
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
# Build the fused HyperLSTM kernels now (cached by torch) rather than in the first training job;
# without a compiler the models fall back to their Python path, so this step never fails setup.
.venv/bin/python -c "from hypermodels.fast_hyperlstm import fused_extension; fused_extension()" || true
.venv/bin/python -c "import torch, ray, mlflow, hypermodels, service; print(f'setup ok: torch {torch.__version__}, ray {ray.__version__}, mlflow {mlflow.__version__}')"
