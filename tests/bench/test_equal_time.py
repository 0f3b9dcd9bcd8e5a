"""``bench/equal_time.py``: end to end at a toy size (a 2-second budget, a few lines of PTB, one
model: the JSON, the table and the plot agree with each other and with the job's own record: the
budget's stop tag, steps, curves within the budget), and its verdict and table from given rows."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import ROOT, local_env, write_corpus

SCRIPT = ROOT / "bench" / "equal_time.py"


def bench() -> Any:
    spec = importlib.util.spec_from_file_location("equal_time", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(model: str, valid: float, steps: int, seconds: float = 60.0) -> dict[str, Any]:
    return {
        "model": model,
        "label": bench().LABELS[model],
        "parameters": 1000,
        "steps": steps,
        "train_seconds": seconds,
        "steps_per_s": steps / seconds,
        "final_valid_bpc": valid,
        "test_bpc": valid - 0.01,
        "curves": {"valid_seconds": [20.0, 40.0], "valid_steps": [steps // 3, 2 * steps // 3], "valid_bpc": [3.0, 2.5]},
    }


def test_the_verdict_says_who_wins_at_equal_time_and_by_how_much() -> None:
    et = bench()
    runs = [row("lstm", 1.80, 900), row("ln_lstm", 1.75, 500), row("ln_hyperlstm", 1.60, 400)]
    runs.append(row("ln_hyperlstm_reference", 2.10, 100))
    won, fast = et.verdict(runs)
    assert won == (
        "At equal wall-clock time the layer-norm HyperLSTM wins on this machine: valid 1.6000 bpc against 1.7500 "
        "for the best baseline (layer-norm LSTM), 0.1500 bpc (8.6%) lower, with 400 steps to its 500."
    )
    assert fast == ("Fast path: 6.67 steps/s against 1.67 for the reference path (4.00x), the same model and numbers.")
    [lost] = et.verdict([row("lstm", 1.50, 900), row("ln_hyperlstm", 1.65, 400)])
    assert lost.startswith("At equal wall-clock time the layer-norm HyperLSTM does not win on this machine: valid")
    assert "1.6500 bpc against 1.5000 for LSTM (0.1500 bpc, 10.0% higher), with 400 steps to its 900." in lost


@pytest.mark.slow
def test_equal_time_bench_writes_a_consistent_json_table_and_plot(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_corpus(corpus, {"train": 300, "valid": 20, "test": 20})
    out = tmp_path / "results" / "equal_time"
    args = ["--budget", "2s", "--models", "ln_hyperlstm", "--hidden", "16", "--hyper", "8", "--embed", "2"]
    args += ["--batch", "4", "--seq-len", "20", "--cpus", "1", "--log-every", "2", "--eval-every", "5"]
    args += ["--eval-symbols", "300", "--corpus", str(corpus), "--storage", str(tmp_path / "runs"), "--out", str(out)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--quiet-jobs"],
        cwd=ROOT,
        env=local_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[bench] ln_hyperlstm: layer-norm HyperLSTM (fast path)" in done.stdout

    report = json.loads(out.with_suffix(".json").read_text())
    assert report["plot"] == str(out.with_suffix(".png")) and out.with_suffix(".png").stat().st_size > 10_000
    assert report["args"]["budget"] == "2s" and [r["model"] for r in report["runs"]] == ["ln_hyperlstm"]
    table = out.with_suffix(".md").read_text()
    assert "2s of training each" in table and f"`{report['command']}`" in table and report["plot"] in table
    [r] = report["runs"]
    c = r["curves"]
    assert r["steps"] > 0 and r["stopped"] == f"time_budget 2s spent at step {r['steps']}"
    assert r["train_seconds"] == 2.0 and r["steps_per_s"] == pytest.approx(r["steps"] / 2.0)
    assert c["valid_steps"] == list(range(5, r["steps"], 5))  # the periodic evaluations (the final one is apart)
    assert c["train_steps"][-1] == r["steps"] and c["train_seconds"][-1] == 2.0
    assert len(c["valid_seconds"]) == len(c["valid_bpc"]) == len(c["valid_steps"])
    assert c["valid_seconds"] == sorted(c["valid_seconds"]) and all(
        0 < s <= r["train_seconds"] for s in c["valid_seconds"]
    )
    assert 0 < r["final_valid_bpc"] < 10 and 0 < r["test_bpc"] < 10
    line = f"| {r['label']} | {r['parameters']:,} | {r['steps']:,} | {r['steps_per_s']:.2f} | "
    assert line + f"{r['final_valid_bpc']:.4f} | {r['test_bpc']:.4f} |" in table, table
    assert report["verdict"] == []  # one model: nothing to compare
