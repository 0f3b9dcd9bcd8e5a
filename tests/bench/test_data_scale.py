"""``bench/data_scale.py`` at a toy size: two char corpora prepared in this process, each probed by a
fresh worker process; the JSON and the table agree and the probe reports its own peak memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, local_env


@pytest.mark.slow
def test_data_scale_bench_writes_rows_for_every_corpus(tmp_path: Path) -> None:
    out = tmp_path / "data_scale"
    args = ["--char", "200K,400K", "--preparation", "local", "--steps", "2", "--whole-max", "0"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "data_scale.py"), *args, "--tmp", str(tmp_path), "--out", str(out)],
        cwd=ROOT,
        env=local_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    rows = report["rows"]
    assert [r["kind"] for r in rows] == ["char", "char"], rows
    table = out.with_suffix(".md").read_text()
    small, large = rows
    assert (small["bytes"], large["bytes"]) == (200_000, 400_000)
    # Twice the corpus: twice the segments of a rank's streams (90% training bytes / 128 streams / 100).
    assert 1.8 < large["segments_per_epoch"] / small["segments_per_epoch"] < 2.2, rows
    for r in rows:
        # The probe's own peak (VmHWM), over what its imports took; not the bench's (ru_maxrss would be).
        assert r["worker_rss_after_imports_mb"] <= r["worker_peak_rss_mb"] < 2000, r
        assert f"| char {r['corpus']} | local | {r['prepare_s']:.2f} |" in table, table
