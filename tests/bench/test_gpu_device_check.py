"""``bench/gpu/device_check.sh`` in its dry mode (``DEVICE_CHECK_CPU=1``: the non-CUDA tests of the
GPU path, then ``bench/gpu/throughput.py --device cpu --quick``), end to end on this machine: the
script's plumbing, and the bench's JSON and table (every row, positive figures, ratios against
nn.LSTM of the same size and precision, the fast path's implementation). The GPU figures come from
the same script on a GPU machine."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu" / "device_check.sh"
CELLS = ["nn_lstm", "ln_lstm", "hyperlstm", "hyperlstm_fast"]


def device_check(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT)],
        env={**os.environ, "PYTHON": sys.executable, "OUT": str(out), "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dry_run_on_the_cpu_writes_the_log_and_every_row(tmp_path: Path) -> None:
    done = device_check(tmp_path, DEVICE_CHECK_CPU="1")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "[device_check] OK" in done.stdout
    log = (tmp_path / "device_check.log").read_text()
    assert "tests: exit 0" in log and "bench: exit 0" in log and " passed" in log

    out = tmp_path / "throughput"
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["device_type"] == "cpu" and report["quick"] is True
    assert report["fast_backend"] in ("fused", "python")

    rows = report["rows"]
    assert [(r["precision"], r["cell"]) for r in rows] == [(p, c) for p in ("fp32", "bf16") for c in CELLS]
    for r in rows:
        assert "error" not in r, r
        assert r["tokens_per_s"] > 0 and r["step_s"] > 0 and r["steps"] == 1, r
        assert math.isfinite(r["final_loss"]) and r["parameters"] > 0, r
        assert r["peak_memory_bytes"] is None and r["memory_vs_nn_lstm"] is None  # GPU memory: CUDA only
        base = next(b for b in rows if b["precision"] == r["precision"] and b["cell"] == "nn_lstm")
        assert math.isclose(r["speed_vs_nn_lstm"], r["tokens_per_s"] / base["tokens_per_s"]), r
    assert [r["backend"] for r in rows if r["cell"] == "hyperlstm_fast"] == [report["fast_backend"]] * 2

    table = out.with_suffix(".md").read_text()
    assert sum(line.startswith("| 32x4 |") for line in table.splitlines()) == len(rows)
    assert f"hyperlstm_fast ({report['fast_backend']})" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_the_real_run_fails_loudly(tmp_path: Path) -> None:
    done = device_check(tmp_path)
    assert done.returncode == 1
    assert "FAILED: torch.cuda.is_available() is false (for a dry run on a CPU: DEVICE_CHECK_CPU=1)" in done.stdout
    assert not (tmp_path / "throughput.json").exists()
