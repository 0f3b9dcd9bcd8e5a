#!/usr/bin/env bash
# The project's tests, in the order CI runs them: lint and format (ruff), types (mypy: strict on
# hypermodels, the defaults on service), then the test suite (pytest, against real Ray, MLflow and
# S3 servers that the tests start and stop).
#   ./test.sh               everything (what CI runs; about 15 minutes on 2 cores)
#   ./test.sh --fast        the fast tier for iteration: checks + unit tests (pytest -m "not slow")
#   ./test.sh --fast -k X   further arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")"
tier=()
if [ "${1:-}" = "--fast" ]; then
  shift
  tier=(-m "not slow")
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "${tier[@]}" "$@"
