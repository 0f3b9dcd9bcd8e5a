#!/usr/bin/env bash
# The GPU checks of the project in one script, for a single-GPU machine, within 8 minutes (the tests
# are stopped after 3, the bench after 4.5):
#   1. the CUDA tests (pytest -m cuda: tests/hypermodels and tests/service/test_gpu_path.py),
#   2. bench/gpu/throughput.py: tokens/s and peak memory of nn.LSTM, LN LSTM and both HyperLSTM paths,
#      fp32 and bf16, at 256x32, 1000x128 and 1800x128,
# writing device_check.log, throughput.json and throughput.md to $OUT if set, else bench/results/gpu/.
# Both steps run even when the first fails (the figures still come back); the script exits non-zero
# when either failed, and says which.
#
# Needs python3 with torch (CUDA build), triton, pytest, numpy, pyyaml; pydantic too: where it is
# missing, the wheels in .whl/ (bench/gpu/fetch_wheels.sh, run where there is network) are installed
# into /tmp/site. Ray and MLflow are not needed.
#
#   bench/gpu/device_check.sh                     # on a GPU machine
#   DEVICE_CHECK_CPU=1 bench/gpu/device_check.sh  # dry run anywhere: the non-CUDA tests of the GPU path
#                                                 # and the CPU-quick bench, to check this script's plumbing
# Variables: PYTHON (default python3), OUT (where results go).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
DEST=${OUT:-$ROOT/bench/results/gpu}
CPU_MODE=${DEVICE_CHECK_CPU:-0}
mkdir -p "$DEST"
LOG="$DEST/device_check.log"
: >"$LOG"
export PYTHONUNBUFFERED=1
say() { echo "[device_check] $*" | tee -a "$LOG"; }
die() { say "FAILED: $*"; exit 1; }

SITE=""
# The carried wheels are for a python3 without pydantic (CPython 3.12, x86-64); one that has it uses its own.
if compgen -G ".whl/*.whl" >/dev/null && ! "$PY" -c "import pydantic" 2>/dev/null; then
  SITE=/tmp/site
  say "installing the carried wheels: $(ls .whl | tr '\n' ' ')"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    2>&1 | tee -a "$LOG" || die "pip could not install .whl/*.whl"
fi
export PYTHONPATH="$ROOT${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'PY' 2>&1 | tee -a "$LOG" || die "python3 cannot import torch"
import platform, torch
print(f"[device_check] python {platform.python_version()}, torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"cuda available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
PY
if [ "$CPU_MODE" = 1 ]; then
  say "DEVICE_CHECK_CPU=1: dry run on the CPU (non-CUDA tests of the GPU path, CPU-quick bench)"
  TESTS=(tests/service/test_gpu_path.py -m "not cuda")
  BENCH=(--device cpu --quick)
  BENCH_LIMIT=120
else
  "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || die "torch.cuda.is_available() is false (for a dry run on a CPU: DEVICE_CHECK_CPU=1)"
  TESTS=(tests/hypermodels tests/service/test_gpu_path.py -m cuda)
  BENCH=(--device cuda)
  BENCH_LIMIT=270
fi

failed=()
say "1/2 tests: pytest ${TESTS[*]}"
start=$SECONDS
timeout 180 "$PY" -m pytest "${TESTS[@]}" -q -p no:cacheprovider -o timeout=120 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
say "tests: exit $rc in $((SECONDS - start)) s"
[ "$rc" = 0 ] || failed+=("tests (pytest exit $rc$([ "$rc" = 5 ] && echo ': no test collected')$([ "$rc" = 124 ] && echo ': timed out'))")

say "2/2 bench: bench/gpu/throughput.py ${BENCH[*]} --out $DEST/throughput"
start=$SECONDS
timeout "$BENCH_LIMIT" "$PY" bench/gpu/throughput.py "${BENCH[@]}" --out "$DEST/throughput" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
say "bench: exit $rc in $((SECONDS - start)) s"
[ "$rc" = 0 ] || failed+=("bench (exit $rc$([ "$rc" = 124 ] && echo ': timed out'))")
[ -s "$DEST/throughput.json" ] || failed+=("bench wrote no $DEST/throughput.json")

if [ ${#failed[@]} -gt 0 ]; then
  die "$(IFS=';'; echo "${failed[*]}")"
fi
say "OK: results in $DEST (device_check.log, throughput.json, throughput.md)"
