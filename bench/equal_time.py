"""Equal wall-clock time on character-level PTB: LSTM vs layer-norm LSTM vs layer-norm HyperLSTM
(and the HyperLSTM's reference path, to show what the fast path buys), each trained through the
product for the same budget, one after another, on the same machine.

Every model is a ``char_lm`` job run by the service's own driver (:func:`service.driver.local.run_job`,
what ``hyperctl submit`` runs; one local Ray instance for all of them) with ``train.time_budget``
= the budget, the same seed, data, batch and hidden size; training stops at the first step past the
budget and the job's final evaluation then scores the whole valid and test splits. The curves are
the jobs' MLflow metrics: ``valid_bpc`` every ``--eval-every`` steps on the first
``--eval-symbols`` valid symbols (cheap, inside the budget), against steps and against training
seconds (the job's clock: a metric's MLflow timestamp counted back from the last step, which is
the first past the budget). steps/s = steps reached / budget.

    .venv/bin/python bench/equal_time.py --budget 75s        # 4 jobs, ~7 minutes on 2 cores

Run it on a quiet machine (the load average is recorded). Writes bench/results/equal_time.json,
.md and .png (valid bpc against seconds and against steps). The cells' raw throughput at several
sizes is bench/cell_throughput.py's.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"

# name -> model section (the shared sizes are filled in by job())
MODELS: dict[str, dict[str, Any]] = {
    "lstm": {"cell": "lstm", "layer_norm": False},
    "ln_lstm": {"cell": "ln_lstm", "layer_norm": False},
    "ln_hyperlstm": {"cell": "hyperlstm", "layer_norm": True, "fast": True},
    "ln_hyperlstm_reference": {"cell": "hyperlstm", "layer_norm": True, "fast": False},
}
LABELS = {
    "lstm": "LSTM",
    "ln_lstm": "layer-norm LSTM",
    "ln_hyperlstm": "layer-norm HyperLSTM (fast path)",
    "ln_hyperlstm_reference": "layer-norm HyperLSTM (reference path)",
}


def job(args: argparse.Namespace, name: str, storage: Path) -> dict[str, Any]:
    data: dict[str, Any] = {"dataset": "ptb-char"}
    if args.corpus is not None:  # ptb-char-format files (tests use a few lines of PTB)
        data = {"dataset": None, "format": "ptb-char"}
        data.update({split: str(args.corpus / f"{split}.txt") for split in ("train", "valid", "test")})
    model = {
        **MODELS[name],
        "hidden_size": args.hidden,
        "hyper": {"hidden_size": args.hyper, "embed_size": args.embed},
        "dropout": {},
    }
    return {
        "name": f"equal-time-{name}",
        "data": {**data, "seq_len": args.seq_len, "batch_size": args.batch, "eval_batch_size": 16},
        "model": model,
        "train": {
            "optimizer": {"name": "adam", "lr": args.lr},
            "grad_clip": 1.0,
            "time_budget": args.budget,
            "log_every": args.log_every,
            "eval_every": args.eval_every,
            "eval_max_symbols": args.eval_symbols,
            "checkpoint_every": 1_000_000,  # one checkpoint, at the end
            "keep_checkpoints": 1,
            "seed": args.seed,
            "sample_length": 0,
        },
        "resources": {"workers": 1, "cpus_per_worker": args.cpus, "max_failures": 0},
        "storage": str(storage),
        "tracking": {"experiment": "equal-time"},
    }


def curves(uri: str, run_id: str, budget_s: float) -> dict[str, Any]:
    """valid_bpc (periodic, capped) and train_bpc by step and by training seconds. The seconds are the
    job's own clock: training stopped at the first step past ``budget_s``, logged right after it, so a
    metric logged ``d`` seconds before that last one is at ``budget_s - d`` (within one step)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)

    def history(key: str) -> list[Any]:
        return sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)

    train, valid = history("train_bpc"), history("valid_bpc")
    end_ms, final_step = train[-1].timestamp, train[-1].step

    def seconds(m: Any) -> float:
        return round(budget_s - (end_ms - m.timestamp) / 1000.0, 3)

    periodic = [m for m in valid if m.step < final_step]  # the last one is the final whole-split pass
    return {
        "valid_steps": [m.step for m in periodic],
        "valid_seconds": [seconds(m) for m in periodic],
        "valid_bpc": [m.value for m in periodic],
        "train_steps": [m.step for m in train],
        "train_seconds": [seconds(m) for m in train],
        "train_bpc": [m.value for m in train],
    }


def run(args: argparse.Namespace, name: str, storage: Path) -> dict[str, Any]:
    from service.driver.local import run_job
    from service.io import tracking
    from service.spec.loading import validate_job
    from service.tasks import task_of

    spec = validate_job(job(args, name, storage))
    params = task_of(spec).parameter_count(spec)
    print(f"[bench] {name}: {LABELS[name]}, {params:,} parameters, budget {args.budget} ...", flush=True)
    out = io.StringIO() if args.quiet_jobs else None
    t0 = time.perf_counter()
    outcome = run_job(spec, num_cpus=args.cpus, out=out)
    wall = time.perf_counter() - t0
    if not outcome.ok:
        raise SystemExit(f"[bench] {name} failed: {outcome.error}")
    m = outcome.metrics
    steps = int(max(s for s, _ in tracking.metric_history(outcome.tracking_uri, outcome.run_id, "train_bpc")))
    stopped = tracking.describe_run(outcome.tracking_uri, outcome.run_id)["tags"].get(tracking.TAG_STOPPED, "")
    seconds = float(spec.train.time_budget_s or 0.0)
    c = curves(outcome.tracking_uri, outcome.run_id, seconds)
    row = {
        "model": name,
        "label": LABELS[name],
        "parameters": params,
        "steps": steps,
        "train_seconds": seconds,
        "steps_per_s": steps / seconds,
        "tokens_per_s": steps * args.batch * args.seq_len / seconds,
        "final_valid_bpc": m["valid_bpc"],
        "test_bpc": m.get("test_bpc"),
        "stopped": stopped,
        "job_wall_s": round(wall, 1),
        "run_id": outcome.run_id,
        "curves": c,
    }
    print(
        f"[bench] {name}: {steps} steps in {seconds:.1f} s ({row['steps_per_s']:.2f} steps/s), "
        f"valid {row['final_valid_bpc']:.4f} bpc" + (f", test {row['test_bpc']:.4f}" if row["test_bpc"] else ""),
        flush=True,
    )
    return row


def table(report: dict[str, Any]) -> str:
    a = report["args"]
    lines = [
        f"# Equal wall-clock time on character-level PTB: {a['budget']} of training each",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']}; torch {report['torch']}; load average before/after "
        f"{report['load_before']:.2f}/{report['load_after']:.2f} (1 min). One worker, {a['cpus']} CPU threads; "
        f"hidden {a['hidden']}, HyperLSTM N_ĥ {a['hyper']}, N_z {a['embed']}; batch {a['batch']} x "
        f"seq {a['seq_len']}; Adam {a['lr']}, clip 1.0, no dropout; seed {a['seed']}. Valid/test bpc: whole "
        f"splits, at the first step past the budget.",
        "",
        "| model | params | steps reached | steps/s | valid bpc at budget | test bpc |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["runs"]:
        test = f"{r['test_bpc']:.4f}" if r["test_bpc"] is not None else "-"
        lines.append(
            f"| {r['label']} | {r['parameters']:,} | {r['steps']:,} | {r['steps_per_s']:.2f} | "
            f"{r['final_valid_bpc']:.4f} | {test} |"
        )
    lines += ["", *report["verdict"], "", f"Plot: `{report['plot']}`. Raw cell throughput: bench/cell_throughput.py."]
    return "\n".join(lines) + "\n"


def verdict(runs: list[dict[str, Any]]) -> list[str]:
    """Plain sentences: does the HyperLSTM win at equal time, by how much; what the fast path buys."""
    by = {r["model"]: r for r in runs}
    said = []
    hyper = by.get("ln_hyperlstm")
    rivals = [by[n] for n in ("lstm", "ln_lstm") if n in by]
    if hyper and rivals:
        best = min(rivals, key=lambda r: r["final_valid_bpc"])
        gap = best["final_valid_bpc"] - hyper["final_valid_bpc"]
        if gap > 0:
            said.append(
                f"At equal wall-clock time the layer-norm HyperLSTM wins on this machine: valid "
                f"{hyper['final_valid_bpc']:.4f} bpc against {best['final_valid_bpc']:.4f} for the best "
                f"baseline ({best['label']}), {gap:.4f} bpc ({100 * gap / best['final_valid_bpc']:.1f}%) lower, "
                f"with {hyper['steps']:,} steps to its {best['steps']:,}."
            )
        else:
            said.append(
                f"At equal wall-clock time the layer-norm HyperLSTM does not win on this machine: valid "
                f"{hyper['final_valid_bpc']:.4f} bpc against {best['final_valid_bpc']:.4f} for {best['label']} "
                f"({-gap:.4f} bpc, {100 * -gap / best['final_valid_bpc']:.1f}% higher), with {hyper['steps']:,} "
                f"steps to its {best['steps']:,}."
            )
    ref = by.get("ln_hyperlstm_reference")
    if hyper and ref:
        said.append(
            f"Fast path: {hyper['steps_per_s']:.2f} steps/s against {ref['steps_per_s']:.2f} for the reference "
            f"path ({hyper['steps_per_s'] / ref['steps_per_s']:.2f}x), the same model and numbers."
        )
    return said


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_time, by_step) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in report["runs"]:
        c = r["curves"]
        (line,) = by_time.plot(c["valid_seconds"], c["valid_bpc"], marker=".", label=r["label"])
        by_step.plot(c["valid_steps"], c["valid_bpc"], marker=".", color=line.get_color(), label=r["label"])
        by_time.plot([r["train_seconds"]], [r["final_valid_bpc"]], marker="*", ms=12, color=line.get_color())
        by_step.plot([r["steps"]], [r["final_valid_bpc"]], marker="*", ms=12, color=line.get_color())
    budget = report["args"]["budget"]
    for ax, xlabel in ((by_time, "training seconds"), (by_step, "optimizer steps")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("valid bpc")
        ax.grid(alpha=0.3)
    by_time.set_title(f"valid bpc against time (budget {budget}; star: whole split at the end)")
    by_step.set_title("valid bpc against steps")
    by_step.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="60s", help="train.time_budget of every job: 90s, 5m, ...")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--hyper", type=int, default=64, help="HyperLSTM N_ĥ")
    ap.add_argument("--embed", type=int, default=4, help="HyperLSTM N_z")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpus", type=int, default=2, help="CPU threads of the one worker")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-symbols", type=int, default=20_000, help="valid symbols per periodic evaluation")
    ap.add_argument("--corpus", type=Path, default=None, help="a folder of ptb-char train/valid/test.txt (tests)")
    ap.add_argument("--storage", type=Path, default=None, help="runs and MLflow store (default: a temporary folder)")
    ap.add_argument("--quiet-jobs", action="store_true", help="only the bench's own lines, not each job's")
    ap.add_argument("--out", type=Path, default=RESULTS / "equal_time")
    args = ap.parse_args(argv)

    import torch

    os.environ.pop("RAY_ADDRESS", None)  # a new local instance: the machine's own, nothing else on it
    load_before = os.getloadavg()[0]
    if load_before > 1.5:
        print(f"[bench] warning: load average {load_before:.2f}: the machine is busy, the timings are not quiet")
    with tempfile.TemporaryDirectory(prefix="hyperctl-equal-time-") as tmp:
        storage = (args.storage or Path(tmp) / "runs").resolve()
        runs = [run(args, name, storage) for name in args.models]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.resolve().with_suffix(".png")
    shown = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {
        "command": "python bench/equal_time.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": shown,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs ({platform.node()})",
        "torch": torch.__version__,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "plot": str(png.relative_to(ROOT) if png.is_relative_to(ROOT) else png),
        "runs": runs,
    }
    report["verdict"] = verdict(runs)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, png)
    text = table(report)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    bad = [r["model"] for r in runs if not math.isfinite(r["final_valid_bpc"])]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
