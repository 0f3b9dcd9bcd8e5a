"""What the service costs: training tokens/s of one model in the service (1 Ray Train worker)
vs the same model in a bare PyTorch loop, and the seconds from `hyperctl submit` to the first step.

Both sides use the same model, batch, sequence length, optimizer, thread count (1, as a worker
with cpus_per_worker: 1 gets) and data (PTB char), in one run. Throughput is the median over
windows of ``--window`` steps, the first window (warm-up) left out, so that start-up does not
count against either side.

    .venv/bin/python bench/service_overhead.py            # about 3 minutes on 2 cores

Writes bench/results/service_overhead.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from hypermodels import CharVocab, detach_state, stream_batches

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from service.io import tracking  # noqa: E402
from service.spec.loading import validate_job  # noqa: E402
from service.tasks.char_lm.data import load_ptb_char  # noqa: E402
from service.tasks.char_lm.model import build_model  # noqa: E402


def job(args, storage: Path) -> dict:
    return {
        "name": "overhead",
        "data": {"dataset": "ptb-char", "seq_len": args.seq_len, "batch_size": args.batch},
        "model": {"cell": args.cell, "hidden_size": args.hidden, "hyper": {"hidden_size": args.hyper, "embed_size": 4}},
        "train": {
            "max_steps": args.steps,
            "log_every": args.window,
            "eval_every": 10 * args.steps,
            "checkpoint_every": args.steps,
            "sample_length": 0,
            "seed": 0,
        },
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "storage": str(storage),
        "tracking": {"experiment": "bench"},
    }


def bare_loop(spec, steps: int, window: int) -> list[float]:
    """tokens/s per window of the same training step, written as a plain loop."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    symbols = load_ptb_char("train")
    vocab = CharVocab.build(symbols)
    inputs, targets = stream_batches(torch.tensor(vocab.encode(symbols)), spec.data.batch_size)
    model = build_model(spec, len(vocab))
    opt = torch.optim.Adam(model.parameters(), lr=spec.train.optimizer.lr)
    T, state, rates, t0 = spec.data.seq_len, None, [], time.perf_counter()
    for step in range(steps):
        x, y = inputs[step * T : (step + 1) * T], targets[step * T : (step + 1) * T]
        logits, state = model(x, state)
        state = detach_state(state)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.train.grad_clip)
        opt.step()
        if (step + 1) % window == 0:
            now = time.perf_counter()
            rates.append(window * T * spec.data.batch_size / (now - t0))
            t0 = now
    return rates


def service_run(job_file: Path, storage: Path) -> tuple[list[float], float, float]:
    """tokens/s per window from the run's MLflow metrics; seconds to the first step line and to the end."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "submit", str(job_file), "--num-cpus", "2"],
        cwd=storage.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first_step = None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if first_step is None and line.startswith("[train] step"):
            first_step = time.perf_counter() - t0
    if proc.wait() != 0:
        raise SystemExit("service run failed:\n" + "".join(lines[-40:]))
    total = time.perf_counter() - t0
    summary = json.loads("".join(lines)[("".join(lines)).rindex("\n{") + 1 :])
    rates = [rate for _, rate in tracking.metric_history(summary["tracking_uri"], summary["run_id"], "tokens_per_s")]
    return rates, first_step, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", default="hyperlstm")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--hyper", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--out", type=Path, default=RESULTS / "service_overhead")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hyperctl-bench-") as tmp:
        storage = Path(tmp) / "runs"
        raw = job(args, storage)
        spec = validate_job(raw)
        job_file = Path(tmp) / "job.yaml"
        job_file.write_text(yaml.safe_dump(raw))
        print("bare PyTorch loop ...", flush=True)
        bare = bare_loop(spec, args.steps, args.window)
        print("service (hyperctl submit, 1 worker) ...", flush=True)
        service, first_step_s, total_s = service_run(job_file, storage)
    bare_tps, service_tps = statistics.median(bare[1:]), statistics.median(service[1:])
    report = {
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "torch_threads": 1,
        "bare_tokens_per_s": bare_tps,
        "service_tokens_per_s": service_tps,
        "service_over_bare": service_tps / bare_tps,
        "submit_to_first_step_s": first_step_s,
        "submit_to_exit_s": total_s,
        "bare_windows": bare,
        "service_windows": service,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    table = (
        "\n".join(
            [
                f"{args.cell} {args.hidden}/{args.hyper}, batch {args.batch} x seq {args.seq_len}, {args.steps} steps, "
                f"1 thread; median over {args.window}-step windows (first left out)",
                "",
                "| measure | value |",
                "|---|---:|",
                f"| bare PyTorch loop, tokens/s | {bare_tps:,.0f} |",
                f"| service, 1 Ray Train worker, tokens/s | {service_tps:,.0f} |",
                f"| service / bare | {service_tps / bare_tps:.3f} |",
                f"| `hyperctl submit` to first training step (s) | {first_step_s:.1f} |",
                f"| `hyperctl submit` to exit (s) | {total_s:.1f} |",
            ]
        )
        + "\n"
    )
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
