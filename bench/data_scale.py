"""How data preparation and a training worker's memory scale with the corpus (issue 15).

    .venv/bin/python bench/data_scale.py [--char 10M,100M,1G] [--preparation local,ray] [--out bench/results/data_scale]

For each synthetic corpus (generated here in a temporary folder, deleted afterwards; none is stored):

* **preparation time**: :func:`service.tasks.char_lm.data.prepare_text` from the raw file to the
  committed shards, once in this process (``local``) and once on Ray Data (``ray``, a local Ray
  instance of ``--num-cpus`` CPUs started beforehand, as the driver has one), and the rate;
* **worker peak memory**: the peak resident set (VmHWM) of a fresh process that does what
  rank 0 of a 2-worker char-LM job does with the data: open the prepared split, read its own
  streams (128 streams in all, sequence 100) window by window for ``--steps`` training steps of a
  tiny LSTM, from the start and from the end of its streams (the far shards), then evaluate 200,000
  validation symbols streamed; and, for contrast, the same after loading the whole training split
  into memory as the loop did before the data was sharded (``whole split``).

Corpus kinds are functions (:data:`KINDS`): ``char`` is an enwik8-shaped file prepared as enwik8
(bytes, 90/5/5); another kind (e.g. a parallel corpus) adds a function returning rows of the same
keys and a command-line option. Results: ``<out>.json`` and ``<out>.md``.

``parallel`` (``--parallel 100K,2M``; :func:`parallel_points`): synthetic parallel corpora of that many
sentence pairs (gzip'd aligned files, Zipf-like words, 5-30 a sentence) prepared as a translation
job's training split (shards of 10k pairs, so that even 100k pairs fill the Ray path's waves of 2
shards per CPU; sentencepiece on a sample of 50k pairs): ``local`` in a fresh process (its peak
RSS), ``ray`` on the Ray instance above (the peak RSS, VmHWM, of its worker processes and of this
driver, and their peak private memory, sampled), and the worker probe: rank 0 of 2 reading one epoch of its batches
(:class:`service.tasks.translation.batches.RankBatches`) in a fresh process. The verdicts compare the
largest size with the smallest: peak memory within 20%, time no faster than linear.

    .venv/bin/python bench/data_scale.py --char "" --parallel 100K,2M --out bench/results/data_scale_parallel
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


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MB. Not ``ru_maxrss``: Linux keeps that across exec,
    so a probe started from this bench would report at least the bench's own peak."""
    (hwm,) = [line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:")]
    return int(hwm.split()[1]) / 1024


def worker_probe(root: str, steps: int, whole: bool) -> dict[str, Any]:
    """Rank 0 of 2 of a char-LM job on the prepared folder ``root``: its streams, a few steps of a
    tiny model from the start and the end of the streams, a streamed evaluation; peak RSS."""
    import torch
    import torch.nn.functional as F

    from hypermodels import CharLM, detach_state, stream_batches
    from service.tasks.char_lm.data import load_prepared, load_split, open_split
    from service.tasks.char_lm.streams import Streams, bits_per_char

    torch.set_num_threads(1)
    base = peak_rss_mb()
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
    return {"peak_rss_mb": peak_rss_mb(), "rss_after_imports_mb": base, "segments": segments, "bpc": bpc}


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


PAIRS_PER_SHARD = 10_000
SAMPLE_PAIRS = 50_000


def synthetic_pairs(folder: Path, pairs: int, seed: int = 0) -> tuple[Path, Path]:
    """Two aligned gzip'd files of ``pairs`` synthetic sentences (the target: the source's words
    reversed and a full stop), written 10,000 lines at a time."""
    import gzip
    import random

    rng = random.Random(seed)
    words = [f"w{i}" for i in range(20_000)]
    weights = [1.0 / (i + 1) for i in range(len(words))]
    src, tgt = folder / f"pairs-{pairs}.en.gz", folder / f"pairs-{pairs}.fr.gz"
    with gzip.open(src, "wt", encoding="utf-8", compresslevel=1) as a, gzip.open(tgt, "wt", compresslevel=1) as b:
        for start in range(0, pairs, 10_000):
            lengths = [rng.randint(5, 30) for _ in range(min(10_000, pairs - start))]
            flat = rng.choices(words, weights, k=sum(lengths))
            lines, i = [], 0
            for length in lengths:
                lines.append(" ".join(flat[i : i + length]))
                i += length
            a.write("\n".join(lines) + "\n")
            b.write("\n".join(" ".join(reversed(line.split())) + " ." for line in lines) + "\n")
    return src, tgt


def parallel_job(folder: Path, src: Path, tgt: Path, how: str) -> dict[str, Any]:
    valid = folder / "valid.tsv"
    if not valid.exists():
        valid.write_text("".join(f"w{i} w{i + 1}\tw{i + 1} w{i} .\n" for i in range(200)), encoding="utf-8")
    return {
        "name": "b",
        "task": "translation",
        "data": {
            "dataset": None,
            "train": {"src": str(src), "tgt": str(tgt)},
            "valid": {"tsv": str(valid)},
            "subwords": {"vocab_size": 8000, "sample_pairs": SAMPLE_PAIRS},
            "shard_pairs": PAIRS_PER_SHARD,
            "preparation": how,
            "batch_size": 64,
        },
        "train": {"max_steps": 1},
    }


class MemorySampler:
    """Samples, every ``period`` seconds in a thread, the private memory (smaps_rollup's Private_Clean +
    Private_Dirty, MB) of this process and of its Ray worker processes; keeps each one's maximum. Private
    memory leaves out the pages of Ray's shared object store that a process maps (RSS counts them)."""

    def __init__(self, period: float = 0.5) -> None:
        import threading

        self.period, self.peaks = period, {"driver": 0.0, "worker": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def private_mb(pid: int) -> float:
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            return 0.0
        return (
            sum(int(line.split()[1]) for line in lines if line.startswith(("Private_Clean:", "Private_Dirty:"))) / 1024
        )

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.peaks["driver"] = max(self.peaks["driver"], self.private_mb(os.getpid()))
            for pid in ray_worker_pids():
                self.peaks["worker"] = max(self.peaks["worker"], self.private_mb(pid))

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def ray_worker_pids() -> list[int]:
    """The Ray worker processes (``ray::...``) descended from this process (the Ray instance it started)."""
    parent, title = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent[int(pid)] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            title[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
    me, found = os.getpid(), []
    for pid in parent:
        p, hops = pid, 0
        while p not in (0, 1, me) and hops < 50:
            p, hops = parent.get(p, 0), hops + 1
        if p == me and title[pid].startswith("ray::"):
            found.append(pid)
    return found


def ray_worker_peaks_mb() -> list[float]:
    """VmHWM (MB: peak RSS, shared object-store pages included) of every Ray worker process of ours."""
    peaks = []
    for pid in ray_worker_pids():
        try:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        peaks += [int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:")]
    return peaks


def parallel_probe(mode: str, folder: str, src: str, tgt: str) -> dict[str, Any]:
    """In a fresh process: ``local``, the single-process preparation into ``folder/cache``; ``worker``,
    rank 0 of 2 reading one epoch of its batches (32 pairs, data.max_len 64) from that cache."""
    from service.spec.loading import validate_job
    from service.tasks.translation.data import prepare_corpus

    f = Path(folder)
    spec = validate_job(parallel_job(f, Path(src), Path(tgt), "local"))
    t0 = time.perf_counter()
    prepared = prepare_corpus(spec, str(f / "cache"), say=lambda line: print(line, file=sys.stderr))
    seconds = time.perf_counter() - t0
    out = {"prepare_s": seconds, "root": prepared.root, "shards": len(prepared.train.shards)}
    if mode == "worker":
        from service.tasks.translation.batches import RankBatches

        t0 = time.perf_counter()
        batches = sum(1 for _ in RankBatches(prepared, 0, 2, 32, 64, 0).epoch(0))
        out |= {"epoch_s": time.perf_counter() - t0, "batches": batches}
    return out | {"peak_rss_mb": peak_rss_mb()}


def run_parallel_probe(mode: str, folder: Path, src: Path, tgt: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--parallel-probe", mode, str(folder), str(src), str(tgt)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def parallel_points(
    sizes: list[int], preparations: list[str], tmp: Path, steps: int, whole_max: int
) -> list[dict[str, Any]]:
    """Synthetic parallel corpora of ``sizes`` pairs, prepared as a translation job's training split
    (``local`` in a fresh process, ``ray`` here on the Ray instance ``main`` started), and a worker's
    epoch of batches (in a fresh process, after the first preparation). ``steps`` and ``whole_max``
    are the char kind's: unused."""
    from service.spec.loading import validate_job
    from service.tasks.translation.data import prepare_corpus

    rows = []
    for pairs in sizes:
        t0 = time.perf_counter()
        src, tgt = synthetic_pairs(tmp, pairs)
        generated = time.perf_counter() - t0
        size = src.stat().st_size + tgt.stat().st_size
        for how in preparations:
            if how == "local":
                probe = run_parallel_probe("local", tmp, src, tgt)
                seconds, peak, shards = probe["prepare_s"], probe["peak_rss_mb"], probe["shards"]
                extra: dict[str, Any] = {}
            else:
                driver_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                spec = validate_job(parallel_job(tmp, src, tgt, "ray"))
                t0 = time.perf_counter()
                with MemorySampler() as sampled:
                    prepared = prepare_corpus(spec, str(tmp / f"cache-ray-{pairs}"), say=lambda line: None)
                seconds, shards = time.perf_counter() - t0, len(prepared.train.shards)
                peaks = ray_worker_peaks_mb()
                peak = max(peaks) if peaks else float("nan")
                extra = {
                    "ray_workers": len(peaks),
                    "ray_worker_private_mb": round(sampled.peaks["worker"], 1),
                    "driver_private_mb": round(sampled.peaks["driver"], 1),
                    "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                    "driver_peak_before_mb": round(driver_before, 1),
                }
                shutil.rmtree(tmp / f"cache-ray-{pairs}")
            row = {
                "kind": "parallel",
                "corpus": f"{pairs:,} pairs",
                "pairs": pairs,
                "bytes": size,
                "preparation": how,
                "prepare_s": round(seconds, 2),
                "prepare_mb_per_s": round(size / 1e6 / seconds, 2),
                "pairs_per_s": round(pairs / seconds),
                "generate_s": round(generated, 2),
                "shards": shards,
                "prepare_peak_rss_mb": round(peak, 1),
                **extra,
            }
            if how == preparations[0]:
                worker = run_parallel_probe("worker", tmp, src, tgt)  # reads the cache "local" wrote (or writes it)
                row |= {
                    "worker_peak_rss_mb": round(worker["peak_rss_mb"], 1),
                    "worker_epoch_s": round(worker["epoch_s"], 2),
                    "worker_batches": worker["batches"],
                }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
        shutil.rmtree(tmp / "cache", ignore_errors=True)
        src.unlink()
        tgt.unlink()
    return rows


def parallel_table(rows: list[dict[str, Any]]) -> str:
    """The parallel rows, and the verdicts: largest vs smallest corpus, peak memory within 20% and
    time no faster than linear (time ratio at most the size ratio x 1.2)."""
    rows = [r for r in rows if r["kind"] == "parallel"]
    if not rows:
        return ""
    out = (
        f"\n## Parallel corpora (shards of {PAIRS_PER_SHARD:,} pairs, sentencepiece sample {SAMPLE_PAIRS:,})\n\n"
        "| corpus | preparation | prepare (s) | pairs/s | peak RSS (MB): preparing process / Ray worker | "
        "Ray worker, driver: peak private (MB) | Ray driver peak RSS (MB) | worker epoch (s) | "
        "worker peak RSS (MB) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    for r in rows:
        out += (
            f"| {r['corpus']} | {r['preparation']} | {r['prepare_s']} | {r['pairs_per_s']:,} | "
            f"{r['prepare_peak_rss_mb']} | "
            + (f"{r['ray_worker_private_mb']}, {r['driver_private_mb']}" if "driver_private_mb" in r else "")
            + f" | {r.get('driver_peak_rss_mb', '')} | {r.get('worker_epoch_s', '')} | "
            f"{r.get('worker_peak_rss_mb', '')} |\n"
        )
    small, large = min(r["pairs"] for r in rows), max(r["pairs"] for r in rows)
    if small == large:
        return out
    out += (
        "\n| measure | smallest | largest | ratio (sizes x"
        + f"{large / small:g}"
        + ") | verdict |\n|---|---:|---:|---:|---|\n"
    )
    for how in dict.fromkeys(r["preparation"] for r in rows):
        a = next(r for r in rows if r["pairs"] == small and r["preparation"] == how)
        b = next(r for r in rows if r["pairs"] == large and r["preparation"] == how)
        checks = [
            (f"{how}: peak RSS (MB)", "prepare_peak_rss_mb", "memory"),
            (f"{how}: prepare (s)", "prepare_s", "time"),
        ]
        if "ray_worker_private_mb" in a:
            checks += [
                ("ray: worker peak private (MB)", "ray_worker_private_mb", "memory"),
                ("ray: driver peak private (MB)", "driver_private_mb", "memory"),
            ]
        if "worker_peak_rss_mb" in a:
            checks += [
                ("worker: peak RSS (MB)", "worker_peak_rss_mb", "memory"),
                ("worker: epoch (s)", "worker_epoch_s", "time"),
            ]
        for label, key, what in checks:
            ratio = b[key] / a[key]
            ok = ratio <= 1.2 if what == "memory" else ratio <= large / small * 1.2
            verdict = (
                ("flat (within 20%)" if ok else "NOT flat")
                if what == "memory"
                else ("at most linear" if ok else "FASTER than linear")
            )
            out += f"| {label} | {a[key]} | {b[key]} | {ratio:.2f} | {verdict} |\n"
    return out


KINDS: dict[str, Callable[[list[int], list[str], Path, int, int], list[dict[str, Any]]]] = {
    "char": char_points,
    "parallel": parallel_points,
}


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
    ap.add_argument("--parallel", default="", help="sizes of the parallel corpora in pairs, e.g. 100K,2M (empty: none)")
    ap.add_argument("--parallel-probe", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    ap.add_argument("--whole", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        print(json.dumps(worker_probe(args.probe, args.steps, args.whole)))
        return 0
    if args.parallel_probe:
        print(json.dumps(parallel_probe(*args.parallel_probe)))
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
        pairs = [parse_size(s) for s in args.parallel.split(",") if s.strip()]
        if pairs:
            rows += KINDS["parallel"](pairs, preparations, Path(tmp), args.steps, parse_size(args.whole_max))
    load = os.getloadavg()
    meta = {
        "command": "python bench/data_scale.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.1f} at the end",
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    char_rows = [r for r in rows if r["kind"] != "parallel"]
    md = f"# Data scale\n\n`{meta['command']}` ({meta['machine']})\n\n{table(char_rows) if char_rows else ''}"
    md += parallel_table(rows)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
