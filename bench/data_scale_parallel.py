"""Parallel corpora at scale: does preparing a translation corpus, and a worker reading its share of
it, keep memory flat and time no worse than linear as the corpus grows?

For each size (default 100k and 2M synthetic sentence pairs, gzip'd aligned files; Zipf-like words,
5-30 per sentence) three fresh processes run:

* ``local``: the single-process preparation (``data.prepare_with: local``): seconds, peak RSS;
* ``ray``: the Ray Data preparation on a new local Ray instance (``--cpus``): seconds, and the peak
  RSS (VmHWM) of each of its worker processes, the largest reported;
* ``worker``: a training worker's data side: rank 0 of 2 reads one epoch of its batches
  (:class:`service.tasks.translation.batches.RankBatches`): seconds, peak RSS.

Memory is bounded by ``data.shard_pairs`` (20k here; Ray has 2 shards per CPU in flight) and
``data.subwords.sample_pairs`` (50k),
not by the corpus: the check is that peak memory at the largest size is within 20% of the smallest,
and that time per pair does not fall (no faster than linear). Writes JSON and a Markdown table
(bench/results/data_scale_parallel.{json,md} unless --out).

    .venv/bin/python bench/data_scale_parallel.py [--sizes 100000 2000000] [--cpus 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARD_PAIRS = 20_000
SAMPLE_PAIRS = 50_000


def synthetic_corpus(folder: Path, pairs: int, seed: int = 0) -> tuple[str, str]:
    """Two aligned gzip'd files of ``pairs`` synthetic sentences (written a block at a time)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(20_000)]
    weights = [1.0 / (i + 1) for i in range(len(words))]
    src, tgt = folder / f"train{pairs}.en.gz", folder / f"train{pairs}.fr.gz"
    with (
        gzip.open(src, "wt", encoding="utf-8", compresslevel=1) as a,
        gzip.open(tgt, "wt", encoding="utf-8", compresslevel=1) as b,
    ):
        for start in range(0, pairs, 10_000):
            n = min(10_000, pairs - start)
            lengths = [rng.randint(5, 30) for _ in range(n)]
            flat = rng.choices(words, weights, k=sum(lengths))
            lines, i = [], 0
            for length in lengths:
                lines.append(" ".join(flat[i : i + length]))
                i += length
            a.write("\n".join(lines) + "\n")
            b.write("\n".join(" ".join(reversed(s.split())) + " ." for s in lines) + "\n")
    return str(src), str(tgt)


def job(folder: Path, src: str, tgt: str, mode: str) -> dict[str, Any]:
    valid = folder / "valid.tsv"
    if not valid.exists():
        valid.write_text("".join(f"w{i} w{i + 1}\tw{i + 1} w{i} .\n" for i in range(200)), encoding="utf-8")
    return {
        "name": "scale",
        "task": "translation",
        "data": {
            "dataset": None,
            "train": {"src": src, "tgt": tgt},
            "valid": {"tsv": str(valid)},
            "subwords": {"vocab_size": 8000, "sample_pairs": SAMPLE_PAIRS},
            "shard_pairs": SHARD_PAIRS,
            "prepare_with": mode,
            "batch_size": 64,
        },
        "train": {"max_steps": 1},
        "storage": str(folder / "runs"),
    }


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_peaks() -> list[float]:
    """VmHWM (MiB) of every Ray worker process (``ray::...``) descended from this process (the local
    Ray instance it started)."""
    parent, title = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            parent[int(pid)] = int(stat.rsplit(")", 1)[1].split()[1])
            title[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
    me, peaks = os.getpid(), []
    for pid in parent:
        p, seen = pid, 0
        while p not in (0, 1, me) and seen < 50:
            p, seen = parent.get(p, 0), seen + 1
        if p != me or not title[pid].startswith("ray::"):
            continue
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return peaks


def child(mode: str, folder: str, src: str, tgt: str, cpus: int) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    sys.path.insert(0, str(ROOT))
    from service.spec.loading import validate_job
    from service.tasks.translation.data import prepare_corpus

    f = Path(folder)
    if mode == "worker":
        from service.tasks.translation.batches import RankBatches

        prepared = prepare_corpus(validate_job(job(f, src, tgt, "local")), str(f / "cache"), say=lambda s: None)
        t0 = time.perf_counter()
        reader = RankBatches(prepared, 0, 2, 32, 64, 0)
        batches = sum(1 for _ in reader.epoch(0))
        return {"seconds": time.perf_counter() - t0, "peak_mib": peak_rss_mib(), "batches": batches}
    spec = validate_job(job(f, src, tgt, mode))
    # local prepares into the cache the worker run reads; ray into a folder of its own (same bytes)
    cache = str(f / "cache") if mode == "local" else tempfile.mkdtemp(dir=folder, prefix="cache-ray-")
    if mode == "local":
        t0 = time.perf_counter()
        prepared = prepare_corpus(spec, cache, say=lambda s: None)
        return {"seconds": time.perf_counter() - t0, "peak_mib": peak_rss_mib(), "pairs": prepared.counts["train"]}
    import ray

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        prepared = prepare_corpus(spec, cache, say=lambda s: None)
        seconds = time.perf_counter() - t0
        peaks = worker_peaks()
    finally:
        ray.shutdown()
    return {
        "seconds": seconds,
        "peak_mib": max(peaks) if peaks else float("nan"),
        "driver_peak_mib": peak_rss_mib(),
        "workers": len(peaks),
        "pairs": prepared.counts["train"],
    }


def run_child(mode: str, folder: Path, src: str, tgt: str, cpus: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(folder), src, tgt, str(cpus)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parallel_corpus_scale(sizes: list[int], cpus: int, work: Path) -> dict[str, Any]:
    """Every measurement for every size, and the verdicts (flat memory, no faster than linear time)."""
    rows: dict[str, dict[str, Any]] = {}
    for n in sizes:
        src, tgt = synthetic_corpus(work, n)
        rows[str(n)] = {mode: run_child(mode, work, src, tgt, cpus) for mode in ("local", "ray", "worker")}
        print(f"{n:>10,} pairs: {json.dumps(rows[str(n)])}", flush=True)
    small, large = rows[str(min(sizes))], rows[str(max(sizes))]
    ratio = max(sizes) / min(sizes)
    verdicts = {}
    for mode in ("local", "ray", "worker"):
        memory = large[mode]["peak_mib"] / small[mode]["peak_mib"]
        time_ratio = large[mode]["seconds"] / small[mode]["seconds"]
        verdicts[mode] = {
            "memory_ratio": round(memory, 3),
            "memory_flat_within_20pct": memory <= 1.2,
            "time_ratio": round(time_ratio, 2),
            "size_ratio": ratio,
            "time_no_faster_than_linear": time_ratio <= ratio * 1.2,
        }
    return {
        "sizes": sizes,
        "cpus": cpus,
        "shard_pairs": SHARD_PAIRS,
        "sample_pairs": SAMPLE_PAIRS,
        "runs": rows,
        "verdicts": verdicts,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"Parallel corpora (synthetic, gzip'd aligned files), shard_pairs {SHARD_PAIRS:,}, "
        f"sample_pairs {SAMPLE_PAIRS:,}, {result['cpus']} CPUs for Ray",
        "",
        "| pairs | path | seconds | pairs/s | peak MiB (per process / Ray worker) |",
        "|---:|---|---:|---:|---:|",
    ]
    for n, runs in result["runs"].items():
        for mode, r in runs.items():
            lines.append(
                f"| {int(n):,} | {mode} | {r['seconds']:.1f} | {int(n) / r['seconds']:,.0f} | {r['peak_mib']:.0f} |"
            )
    lines += [
        "",
        "| path | memory large/small | time large/small (size ratio) | flat memory | no faster than linear |",
        "|---|---:|---:|---|---|",
    ]
    for mode, v in result["verdicts"].items():
        lines.append(
            f"| {mode} | {v['memory_ratio']:.2f} | {v['time_ratio']:.1f} ({v['size_ratio']:.0f}) | "
            f"{'yes' if v['memory_flat_within_20pct'] else 'NO'} | "
            f"{'yes' if v['time_no_faster_than_linear'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, folder, src, tgt, cpus = sys.argv[2:7]
        print(json.dumps(child(mode, folder, src, tgt, int(cpus))))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 2_000_000])
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="data-scale-") as tmp:
        result = parallel_corpus_scale(sorted(args.sizes), args.cpus, Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_scale_parallel.json").write_text(json.dumps(result, indent=1))
    (args.out / "data_scale_parallel.md").write_text(table(result))
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
