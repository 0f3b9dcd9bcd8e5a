"""How data preparation and a training worker's memory scale with the corpus (issue 15).

    .venv/bin/python bench/data_scale.py [--char 10M,100M,1G] [--preparation local,ray] [--out bench/results/data_scale]

For each synthetic corpus (generated here in a temporary folder, deleted afterwards; none is stored):

* **preparation time**: :func:`service.tasks.char_lm.data.prepare_text` from the raw file to the
  committed shards, once in this process (``local``) and once on Ray Data (``ray``, a local Ray
  instance of ``--num-cpus`` CPUs started beforehand, as the driver has one), and the rate;
* **worker peak memory**: the peak resident set (``ru_maxrss``) of a fresh process that does what
  rank 0 of a 2-worker char-LM job does with the data: open the prepared split, read its own
  streams (128 streams in all, sequence 100) window by window for ``--steps`` training steps of a
  tiny LSTM, from the start and from the end of its streams (the far shards), then evaluate 200,000
  validation symbols streamed; and, for contrast, the same after loading the whole training split
  into memory as the loop did before the data was sharded (``whole split``).

Corpus kinds are functions (:data:`KINDS`): ``char`` is an enwik8-shaped file prepared as enwik8
(bytes, 90/5/5); another kind (e.g. a parallel corpus) adds a function returning rows of the same
keys and a command-line option. Results: ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

UNITS = {"K": 10**3, "M": 10**6, "G": 10**9}


def parse_size(text: str) -> int:
    text = text.strip().upper()
    return int(float(text[:-1]) * UNITS[text[-1]]) if text[-1] in UNITS else int(text)


def human(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"


# ---- the worker's side, in a fresh process ---------------------------------------------------------


def worker_probe(root: str, steps: int, whole: bool) -> dict[str, Any]:
    """Rank 0 of 2 of a char-LM job on the prepared folder ``root``: its streams, a few steps of a
    tiny model from the start and the end of the streams, a streamed evaluation; peak RSS."""
    import torch
    import torch.nn.functional as F

    from hypermodels import CharLM, detach_state, stream_batches
    from service.tasks.char_lm.data import load_prepared, load_split, open_split
    from service.tasks.char_lm.streams import Streams, bits_per_char

    torch.set_num_threads(1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    prepared = load_prepared(root)
    batch, world, seq_len = 128, 2, 100
    b = batch // world
    torch.manual_seed(0)
    model = CharLM(len(prepared.vocab), "lstm", 32)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    if whole:  # the loop before sharding: the whole split in memory, then this rank's columns
        inputs, targets = stream_batches(load_split(prepared, "train"), batch, pad_id=-100)
        inputs, targets = inputs[:, :b].contiguous(), targets[:, :b].contiguous()
        segments = -(-inputs.shape[0] // seq_len)

        def segment(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return inputs[i * seq_len : (i + 1) * seq_len], targets[i * seq_len : (i + 1) * seq_len]
    else:
        streams = Streams(open_split(prepared, "train"), batch, 0, b, seq_len)
        segments, segment = streams.segments, streams.segment
    state = None
    for i in [*range(steps // 2), *range(segments - steps // 2, segments)]:
        x, y = segment(i)
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state = detach_state(state)
    bpc = bits_per_char(model, open_split(prepared, "valid"), 16, seq_len, num_ids=200_001)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_mb": peak / 1024, "rss_after_imports_mb": base / 1024, "segments": segments, "bpc": bpc}


def run_probe(root: str, steps: int, whole: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--probe", root, "--steps", str(steps)] + (["--whole"] if whole else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- corpus kinds ---------------------------------------------------------------------------------


def char_points(
    sizes: list[int], preparations: list[str], tmp: Path, steps: int, whole_max: int
) -> list[dict[str, Any]]:
    """enwik8-shaped corpora of ``sizes`` bytes, prepared as ``data.dataset: enwik8``."""
    from service.spec.loading import validate_job
    from service.tasks.char_lm.data import prepare_text
    from service.tasks.char_lm.synthetic import write_standin

    rows = []
    for size in sizes:
        src = tmp / f"enwik8-{size}"
        t0 = time.perf_counter()
        write_standin(src, size)
        generated = time.perf_counter() - t0
        for how in preparations:
            cache = tmp / f"cache-{how}-{size}"
            spec = validate_job(
                {
                    "name": "b",
                    "train": {"max_steps": 1},
                    "data": {"dataset": "enwik8", "path": str(src), "preparation": how},
                }
            )
            t0 = time.perf_counter()
            prepared = prepare_text(spec, str(cache), say=lambda line: print(line, file=sys.stderr))
            seconds = time.perf_counter() - t0
            row = {
                "kind": "char",
                "corpus": human(size),
                "bytes": size,
                "preparation": how,
                "prepare_s": round(seconds, 2),
                "prepare_mb_per_s": round(size / 1e6 / seconds, 1),
                "generate_s": round(generated, 2),
                "shards": len([n for n in os.listdir(prepared.root) if n.endswith(".parquet")]),
                "prepared_mb": round(sum(p.stat().st_size for p in Path(prepared.root).iterdir()) / 1e6, 1),
            }
            if how == preparations[0]:
                sharded = run_probe(prepared.root, steps, whole=False)
                row |= {
                    "worker_peak_rss_mb": round(sharded["peak_rss_mb"], 1),
                    "worker_rss_after_imports_mb": round(sharded["rss_after_imports_mb"], 1),
                    "segments_per_epoch": sharded["segments"],
                }
                if size <= whole_max:  # the whole split as int64, several copies: ~25x the corpus
                    row["whole_split_peak_rss_mb"] = round(
                        run_probe(prepared.root, steps, whole=True)["peak_rss_mb"], 1
                    )
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
            shutil.rmtree(cache)
        src.unlink()
    return rows


KINDS: dict[str, Callable[[list[int], list[str], Path, int, int], list[dict[str, Any]]]] = {"char": char_points}


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| corpus | preparation | prepare (s) | MB/s | shards | worker peak RSS (MB) | whole split in memory (MB) |\n"
        "|---|---|---:|---:|---:|---:|---:|\n"
    )
    body = ""
    for r in rows:
        rss = r.get("worker_peak_rss_mb", "")
        whole = r.get("whole_split_peak_rss_mb", "")
        body += (
            f"| {r['kind']} {r['corpus']} | {r['preparation']} | {r['prepare_s']} | {r['prepare_mb_per_s']} | "
            f"{r['shards']} | {rss} | {whole} |\n"
        )
    return head + body


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--char", default="10M,100M,1G", help="sizes of the char corpora (empty: none)")
    ap.add_argument("--preparation", default="local,ray", help="local, ray or both (the first also probes memory)")
    ap.add_argument("--steps", type=int, default=30, help="training steps of the worker probe")
    ap.add_argument("--whole-max", default="100M", help="largest corpus also probed with the whole split loaded")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance (preparation ray)")
    ap.add_argument("--tmp", default=None, help="folder for the generated corpora (default: the system's)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "data_scale"))
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    ap.add_argument("--whole", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        print(json.dumps(worker_probe(args.probe, args.steps, args.whole)))
        return 0

    preparations = [p.strip() for p in args.preparation.split(",") if p.strip()]
    if "ray" in preparations:
        os.environ.pop("RAY_ADDRESS", None)
        from service.driver.local import init_ray

        init_ray(num_cpus=args.num_cpus)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hyperctl-data-scale-", dir=args.tmp) as tmp:
        sizes = [parse_size(s) for s in args.char.split(",") if s.strip()]
        if sizes:
            rows += KINDS["char"](sizes, preparations, Path(tmp), args.steps, parse_size(args.whole_max))
    load = os.getloadavg()
    meta = {
        "command": "python bench/data_scale.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.1f} at the end",
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    md = f"# Data scale\n\n`{meta['command']}` ({meta['machine']})\n\n{table(rows)}"
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
