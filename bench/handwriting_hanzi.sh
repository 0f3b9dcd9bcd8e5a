#!/usr/bin/env bash
# Handwriting on the built-in strokes (data/handwriting): HyperLSTM 256 vs LSTM 256, same data,
# mixture output, optimiser, steps (3,000 x 32 characters) and seed, one after the other, each
# with 2 Ray Train workers on the 2 cores. Writes bench/results/handwriting_hanzi.{json,md};
# the sample grids are the runs' MLflow artifacts samples/*.png.
#   bench/handwriting_hanzi.sh [STORE]        (STORE: the runs' storage, default /tmp/hanzi-cmp)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
STORE=${1:-/tmp/hanzi-cmp}
for cell in hyperlstm lstm; do
  "$PYTHON" -m service submit "jobs/hanzi-$cell.yaml" --num-cpus 2 --set "storage=$STORE/runs"
done
"$PYTHON" bench/runs_table.py --tracking-uri "sqlite:///$STORE/runs/mlflow.db" \
  --runs hanzi-hyperlstm hanzi-lstm --out bench/results/handwriting_hanzi \
  --metrics valid_nll valid_nll_per_point test_nll test_nll_per_point points_per_s \
  --title "Built-in strokes (Make Me a Hanzi medians): HyperLSTM 256 vs LSTM 256, 3,000 steps, seed 0" \
  --note "Commands: bench/handwriting_hanzi.sh $STORE (jobs/hanzi-{hyperlstm,lstm}.yaml)"
