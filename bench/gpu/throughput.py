"""Training throughput and peak GPU memory of the recurrent cells on one device, side by side.

Measures training tokens/s (forward, backward, Adam step of one recurrent layer plus a linear read-out
over a sequence of 100) in ONE process for:

* ``nn_lstm``: ``torch.nn.LSTM`` (cuDNN on CUDA), the baseline of every ratio;
* ``ln_lstm``: the layer-norm LSTM (:class:`hypermodels.LayerNormLSTM`);
* ``hyperlstm``: the layer-norm HyperLSTM's per-step reference path (``fast=False``); slow, so it is
  timed over fewer steps (``--slow-steps``, after one warm-up step);
* ``hyperlstm_fast``: the layer-norm HyperLSTM's fast path (``fast=True``); which implementation ran
  (``hypermodels.fast_hyperlstm.backend_for``: "triton" on CUDA, "fused" C++ on CPU, or "python")
  is recorded.

Sizes (hidden x batch): 256x32 and the paper's PTB model 1000x128 (HyperLSTM N_ĥ 128, N_z 4, 50
symbols), and the paper's enwik8 model 1800x128 (N_ĥ 256, N_z 64, 205 symbols; PAPER.md). Precisions:
fp32, and bf16 as the service runs it (``train.precision: bf16``: autocast through
:class:`service.worker.precision.MixedPrecision`). Ratios are against ``nn_lstm`` of the same size and
precision. Timing: warm-up steps first (Triton compiles there), CUDA synchronised before and after the
timed steps. Memory: ``torch.cuda.max_memory_allocated`` over one training step after a reset, with
only that cell's model, optimizer and batch alive (on CPU not measured: see bench/cell_throughput.py).

    python3 bench/gpu/throughput.py                          # on a GPU machine: the full table
    python3 bench/gpu/throughput.py --device cpu --quick     # tiny sizes, 1 step: the plumbing, anywhere

Writes ``<out>.json`` and ``<out>.md`` (default bench/results/gpu/throughput); exits 1 when a cell
failed (its row then holds the error).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, when run as a script

from hypermodels import HyperLSTM, LayerNormLSTM  # noqa: E402
from hypermodels.fast_hyperlstm import backend_for  # noqa: E402
from service.worker.precision import MixedPrecision  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "gpu" / "throughput"
CELLS = ("nn_lstm", "ln_lstm", "hyperlstm", "hyperlstm_fast")
SLOW = {"hyperlstm"}  # timed with --slow-steps


@dataclass(frozen=True)
class Size:
    hidden: int
    batch: int
    hyper: int  # N_ĥ
    embed: int  # N_z
    vocab: int  # input and output symbols

    @property
    def name(self) -> str:
        return f"{self.hidden}x{self.batch}"


PAPER_SIZES = (
    Size(256, 32, 128, 4, 50),
    Size(1000, 128, 128, 4, 50),  # PTB: LN HyperLSTM 1000 / 128 / 4
    Size(1800, 128, 256, 64, 205),  # enwik8: HyperLSTM 1800 / 256 / 64
)
QUICK_SIZES = (Size(32, 4, 8, 4, 11),)


def make_cell(name: str, size: Size) -> torch.nn.Module:
    if name == "nn_lstm":
        return torch.nn.LSTM(size.vocab, size.hidden)
    if name == "ln_lstm":
        return LayerNormLSTM(size.vocab, size.hidden)
    hyper = dict(hyper_size=size.hyper, embed_size=size.embed, layer_norm=True)
    return HyperLSTM(size.vocab, size.hidden, **hyper, fast=name == "hyperlstm_fast")  # type: ignore[arg-type]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    name: str, size: Size, precision: str, device: torch.device, seq: int, warmup: int, steps: int
) -> dict[str, Any]:
    """Tokens/s over ``steps`` training steps after ``warmup`` ones, and the peak memory of one step."""
    torch.manual_seed(0)
    rnn = make_cell(name, size).to(device)
    head = torch.nn.Linear(size.hidden, size.vocab).to(device)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    amp = MixedPrecision(precision, device)  # type: ignore[arg-type]
    x = torch.randn(seq, size.batch, size.vocab, device=device)
    y = torch.randint(0, size.vocab, (seq, size.batch), device=device)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with amp.autocast():
            out, _ = rnn(x)
            loss = F.cross_entropy(head(out).flatten(0, 1), y.flatten())
        amp.backward(loss, opt, params, None)
        amp.step(opt)
        return float(loss.detach())

    for _ in range(warmup):
        step()
    peak = None
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync(device)
    seconds = time.perf_counter() - t0
    row: dict[str, Any] = {
        "tokens_per_s": seq * size.batch * steps / seconds,
        "step_s": seconds / steps,
        "steps": steps,
        "warmup": warmup,
        "peak_memory_bytes": peak,
        "final_loss": loss,
        "parameters": sum(p.numel() for p in rnn.parameters()),
    }
    if name == "hyperlstm_fast":
        row["backend"] = backend_for(device)
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    sizes = QUICK_SIZES if args.quick else PAPER_SIZES
    if args.sizes:
        sizes = tuple(s for s in sizes if s.name in args.sizes)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "machine": f"{platform.node()} {platform.machine()}, {torch.get_num_threads()} CPU threads",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "fast_backend": backend_for(device),
        "seq_len": args.seq_len,
        "quick": args.quick,
        "rows": [],
    }
    for size in sizes:
        for precision in args.precisions:
            base = None
            for cell in CELLS:
                steps, warmup = (args.slow_steps, 1) if cell in SLOW else (args.steps, args.warmup)
                print(f"[bench] {size.name} {precision} {cell}: {warmup} warm-up + {steps} steps", flush=True)
                row: dict[str, Any] = {"size": size.name, "hidden": size.hidden, "batch": size.batch}
                row |= {"hyper": size.hyper, "embed": size.embed, "vocab": size.vocab}
                row |= {"precision": precision, "cell": cell}
                try:
                    row |= measure(cell, size, precision, device, args.seq_len, warmup, steps)
                except Exception as e:  # noqa: BLE001 - one failing cell must not hide the others' figures
                    traceback.print_exc()
                    row["error"] = f"{type(e).__name__}: {e}"
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if cell == "nn_lstm" and "error" not in row:
                    base = row
                for key, ratio in (("tokens_per_s", "speed_vs_nn_lstm"), ("peak_memory_bytes", "memory_vs_nn_lstm")):
                    ok = base is not None and row.get(key) is not None and base.get(key)
                    row[ratio] = row[key] / base[key] if ok else None  # type: ignore[index]
                report["rows"].append(row)
                print(f"[bench]   {_brief(row)}", flush=True)
    return report


def _version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except Exception:  # noqa: BLE001 - not installed (CPU-only machines)
        return None


def _brief(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"FAILED: {row['error']}"
    return f"{row['tokens_per_s']:,.0f} tokens/s, x{row['speed_vs_nn_lstm']:.2f} nn.LSTM"


def to_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Device: {report['device']} ({report['device_type']}); torch {report['torch']}, CUDA {report['cuda']}, "
        f"triton {report['triton']}; fast HyperLSTM backend: {report['fast_backend']}; seq {report['seq_len']}"
        + ("; quick (tiny sizes, not figures)" if report["quick"] else "")
        + ".",
        "",
        "| hidden x batch | precision | cell | tokens/s | x nn.LSTM | peak memory (MiB) | x nn.LSTM | steps |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        cell = r["cell"] + (f" ({r['backend']})" if "backend" in r else "")
        if "error" in r:
            lines.append(f"| {r['size']} | {r['precision']} | {cell} | failed: {r['error'][:80]} | | | | |")
            continue
        speed = f"{r['speed_vs_nn_lstm']:.2f}" if r["speed_vs_nn_lstm"] is not None else "-"
        mem = f"{r['peak_memory_bytes'] / 2**20:,.1f}" if r["peak_memory_bytes"] is not None else "-"
        mem_ratio = f"{r['memory_vs_nn_lstm']:.2f}" if r["memory_vs_nn_lstm"] is not None else "-"
        lines.append(
            f"| {r['size']} | {r['precision']} | {cell} | {r['tokens_per_s']:,.0f} | {speed} | {mem} | {mem_ratio} "
            f"| {r['steps']} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, sequence 10, 1 warm-up and 1 timed step")
    ap.add_argument("--sizes", nargs="+", help="only these HIDDENxBATCH sizes")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="timed steps of every cell but the per-step HyperLSTM")
    ap.add_argument("--slow-steps", type=int, default=3, help="timed steps of the per-step HyperLSTM")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.seq_len, args.warmup, args.steps, args.slow_steps = 10, 1, 1, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    table = to_markdown(report)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    print(f"[bench] wrote {args.out.with_suffix('.json')} and .md", flush=True)
    failed = [f"{r['size']} {r['precision']} {r['cell']}" for r in report["rows"] if "error" in r]
    if failed:
        print(f"[bench] FAILED cells: {', '.join(failed)}", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
