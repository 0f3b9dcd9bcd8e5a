"""A short CPU training run on character-level PTB: small HyperLSTM vs an LSTM of the same width.

Same steps, same seed, same data order; truncated BPTT with the state carried across segments
(as in the paper). Reports valid bpc over the whole valid split and training tokens/s.

    .venv/bin/python bench/ptb_char_short_run.py --steps 400

Writes bench/results/ptb_char_short_run.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hypermodels import (
    CharLM,
    CharVocab,
    bits_per_char,
    count_parameters,
    detach_state,
    stream_batches,
)
from service.tasks.char_lm.data import load_ptb_char

RESULTS = Path(__file__).resolve().parent / "results"


def train(cell: str, args, vocab: CharVocab, train_ids: torch.Tensor, valid_ids: torch.Tensor) -> dict:
    torch.manual_seed(args.seed)
    model = CharLM(len(vocab), cell=cell, hidden_size=args.hidden, hyper_size=args.hyper, embed_size=args.embed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs, targets = stream_batches(train_ids, args.batch)
    state, curve, t0 = None, [], time.perf_counter()
    for step in range(args.steps):
        start = (step * args.seq_len) % (inputs.shape[0] - args.seq_len)
        if start == 0:
            state = None
        logits, state = model(inputs[start : start + args.seq_len], state)
        state = detach_state(state)
        loss = F.cross_entropy(logits.flatten(0, 1), targets[start : start + args.seq_len].flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 50 == 0:
            curve.append((step + 1, loss.item() / 0.6931471805599453))
            print(f"  {cell} step {step + 1}: train bpc {curve[-1][1]:.3f}", flush=True)
    seconds = time.perf_counter() - t0
    return {
        "cell": cell,
        "parameters": count_parameters(model),
        "steps": args.steps,
        "train_tokens_per_s": args.steps * args.batch * args.seq_len / seconds,
        "valid_bpc": bits_per_char(model, valid_ids, batch_size=64, seq_len=200),
        "train_curve": curve,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--hyper", type=int, default=64)
    ap.add_argument("--embed", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cells", nargs="+", default=["hyperlstm", "lstm"])
    ap.add_argument("--out", type=Path, default=RESULTS / "ptb_char_short_run")
    args = ap.parse_args()
    train_symbols = load_ptb_char("train")
    vocab = CharVocab.build(train_symbols)
    train_ids = torch.tensor(vocab.encode(train_symbols))
    valid_ids = torch.tensor(vocab.encode(["\n"] + load_ptb_char("valid")))  # predict its first symbol too
    runs = [train(cell, args, vocab, train_ids, valid_ids) for cell in args.cells]
    report = {"args": {k: v for k, v in vars(args).items() if k != "out"}, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = [
        f"PTB char, {args.steps} steps, batch {args.batch} x seq {args.seq_len}, seed {args.seed}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "",
        "| cell | params | valid bpc (whole split) | train tokens/s |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['cell']} | {r['parameters']:,} | {r['valid_bpc']:.3f} | {r['train_tokens_per_s']:,.0f} |" for r in runs
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
