#!/usr/bin/env bash
# Download, on a machine with network, the wheels that bench/gpu/device_check.sh installs on a GPU
# machine without network (CPython 3.12, x86-64 manylinux) into .whl/ at the checkout's root.
#
# Only what the GPU checks import beyond what such a machine has (torch, triton, pytest, numpy,
# pyyaml): pydantic and its dependencies, at the versions of requirements.lock. Ray and MLflow stay
# behind (too big to carry): the GPU checks do not import them.
#
#   bench/gpu/fetch_wheels.sh            # then: ls .whl/
set -euo pipefail
cd "$(dirname "$0")/../.."

# name==version from requirements.lock (one version of each: two would stop the install there).
pinned() { grep -i -E "^$1==" requirements.lock | head -1; }
WHEELS=(pydantic pydantic_core annotated-types typing-inspection)

git check-ignore -q .whl/ || { echo "fetch_wheels: .whl/ is not ignored by git (see .gitignore)" >&2; exit 1; }
mkdir -p .whl
PY=${PYTHON:-python3}
for name in "${WHEELS[@]}"; do
  spec=$(pinned "$name")
  [ -n "$spec" ] || { echo "fetch_wheels: $name is not pinned in requirements.lock" >&2; exit 1; }
  echo "[wheels] $spec"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec"
done
du -sh .whl
ls .whl
