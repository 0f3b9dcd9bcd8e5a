"""Training throughput of LSTM, LayerNormLSTM and HyperLSTM (reference and fast path), side by side.

Measures training tokens/s (forward, backward, Adam step) of one recurrent layer plus a linear
read-out at (hidden, batch) sizes, sequence length 100, and memory: the bytes autograd keeps alive for
backward (saved-tensor hooks), and on CPU the peak RSS a fresh process gains over two training steps
(everything allocated, transients and caches included); on CUDA torch.cuda.max_memory_allocated. Cells are
interleaved per round so that machine noise hits all alike; the median round counts. Ratios are relative to
torch.nn.LSTM.

    .venv/bin/python bench/cell_throughput.py                 # all three sizes
    .venv/bin/python bench/cell_throughput.py --sizes 256x32  # one size, quicker

Writes bench/results/cell_throughput.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hypermodels import LSTM, HyperLSTM, LayerNormLSTM

RESULTS = Path(__file__).resolve().parent / "results"


def make_cells(hidden: int, input_size: int) -> dict[str, torch.nn.Module]:
    return {
        "lstm": LSTM(input_size, hidden),
        "ln_lstm": LayerNormLSTM(input_size, hidden),
        "hyperlstm": HyperLSTM(input_size, hidden, hyper_size=128, embed_size=4, layer_norm=True, fast=False),
        "hyperlstm_fast": HyperLSTM(input_size, hidden, hyper_size=128, embed_size=4, layer_norm=True, fast=True),
    }


def train_step(rnn, head, opt, x, y):
    out, _ = rnn(x)
    loss = F.cross_entropy(head(out).flatten(0, 1), y.flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def saved_bytes(rnn, head, x, y) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass (deduplicated by storage)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = rnn(x)
        loss = F.cross_entropy(head(out).flatten(0, 1), y.flatten())
    loss.backward()
    return sum(seen.values())


def peak_rss_growth(name: str, hidden: int, batch: int, seq: int, vocab: int) -> int:
    """Peak resident memory a fresh process gains over two training steps of one cell (CPU): everything the
    step allocates, transient buffers and caches included, unlike ``saved_bytes``."""
    import subprocess
    import sys

    code = f"""
import resource, torch, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from bench.cell_throughput import make_cells, train_step
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
torch.manual_seed(0)
x = torch.randn({seq}, {batch}, {vocab}); y = torch.randint(0, {vocab}, ({seq}, {batch}))
rnn = make_cells({hidden}, {vocab})[{name!r}]
head = torch.nn.Linear({hidden}, {vocab})
opt = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=1e-3)
# A tiny step of the same cell first: libraries' one-time set-up (MKL, oneDNN, the extension, threads)
# lands before the baseline, so the figure is the step's own memory.
tiny = make_cells(8, {vocab})[{name!r}]
th = torch.nn.Linear(8, {vocab})
train_step(tiny, th, torch.optim.Adam(list(tiny.parameters()) + list(th.parameters())), x[:, :2], y[:, :2])
base = rss()
for _ in range(2):
    train_step(rnn, head, opt, x, y)
# VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork and exec.
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(hwm - base)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def bench_size(hidden: int, batch: int, seq: int, vocab: int, rounds: int, device: str) -> dict:
    torch.manual_seed(0)
    x = torch.randn(seq, batch, vocab, device=device)
    y = torch.randint(0, vocab, (seq, batch), device=device)
    setups = {}
    for name, rnn in make_cells(hidden, vocab).items():
        rnn = rnn.to(device)
        head = torch.nn.Linear(hidden, vocab).to(device)
        opt = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=1e-3)
        train_step(rnn, head, opt, x, y)  # warm-up
        setups[name] = (rnn, head, opt)
    times: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, (rnn, head, opt) in setups.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            train_step(rnn, head, opt, x, y)
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    result = {}
    for name, (rnn, head, opt) in setups.items():
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            train_step(rnn, head, opt, x, y)
            mem = torch.cuda.max_memory_allocated() - base
        else:
            mem = saved_bytes(rnn, head, x, y)
        median = statistics.median(times[name])
        result[name] = {"tokens_per_s": seq * batch / median, "step_s": median, "memory_bytes": mem}
        if device == "cpu":
            result[name]["peak_rss_bytes"] = peak_rss_growth(name, hidden, batch, seq, vocab)
    for name in result:
        result[name]["speed_ratio_vs_lstm"] = result[name]["tokens_per_s"] / result["lstm"]["tokens_per_s"]
        result[name]["memory_ratio_vs_lstm"] = result[name]["memory_bytes"] / result["lstm"]["memory_bytes"]
        if "peak_rss_bytes" in result[name]:
            result[name]["peak_rss_ratio_vs_lstm"] = result[name]["peak_rss_bytes"] / result["lstm"]["peak_rss_bytes"]
    return result


def to_markdown(report: dict) -> str:
    lines = [
        f"Machine: {report['machine']}; device {report['device']}; torch {report['torch']}; "
        f"{report['threads']} threads; seq {report['seq_len']}; median of {report['rounds']} rounds.",
        "",
        "| hidden x batch | cell | tokens/s | x LSTM speed | saved for backward (MiB) | x LSTM | "
        "peak RSS growth (MiB) | x LSTM |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size, cells in report["results"].items():
        for name, r in cells.items():
            peak = (
                f"{r['peak_rss_bytes'] / 2**20:,.1f} | {r['peak_rss_ratio_vs_lstm']:.2f}"
                if "peak_rss_bytes" in r
                else "- | -"
            )
            lines.append(
                f"| {size} | {name} | {r['tokens_per_s']:,.0f} | {r['speed_ratio_vs_lstm']:.2f} | "
                f"{r['memory_bytes'] / 2**20:,.1f} | {r['memory_ratio_vs_lstm']:.2f} | {peak} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["256x32", "512x64", "1000x128"], help="HIDDENxBATCH")
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--vocab", type=int, default=50, help="input and output size (one-hot chars)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=RESULTS / "cell_throughput")
    args = ap.parse_args()
    report = {
        "machine": f"{platform.node()} {platform.machine()} {torch.get_num_threads()} threads",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seq_len": args.seq_len,
        "rounds": args.rounds,
        "results": {},
    }
    for size in args.sizes:
        hidden, batch = (int(v) for v in size.split("x"))
        print(f"measuring {size} ...", flush=True)
        report["results"][size] = bench_size(hidden, batch, args.seq_len, args.vocab, args.rounds, args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    table = to_markdown(report)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
