"""``bench/gpu/throughput.py`` end to end on the CPU (``--quick``: tiny sizes, one step): every row
is there with positive figures, the ratios are against nn.LSTM of the same size and precision, and
the fast path's implementation is recorded. The GPU figures come from ``bench/gpu/device_check.sh``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CELLS = ["nn_lstm", "ln_lstm", "hyperlstm", "hyperlstm_fast"]


def test_quick_cpu_run_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "throughput"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu" / "throughput.py"),
            "--device",
            "cpu",
            "--quick",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
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
