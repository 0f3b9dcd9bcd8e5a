"""Where the time goes between `hyperctl submit` and the first training step, cold and warm.

* cold: `hyperctl submit JOB` starts a new local Ray instance for the job (the default);
* warm: `ray start --head` once, then `hyperctl submit JOB --address HOST:PORT` joins it (twice: the
  first join also starts the instance's worker processes, later ones find them).

Each run is a tiny char-LM job (1 worker, 3 steps, log every step) on the vendored PTB. The phases are
read off the progress lines as they arrive: process start -> `[ray]` (imports, preflight, Ray start or
join) -> `[data]` ready (preparation; cached after the first run) -> `[mlflow] run` (tracking store) ->
`[train] starting` (Ray Train controller and worker group, model built) -> first `[train] step` (first
step done). Writes JSON and a Markdown table (bench/results/startup.{json,md} unless --out).

    .venv/bin/python bench/startup.py [--repeats 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
HYPERCTL = str(Path(sys.executable).parent / "hyperctl")
RAY = str(Path(sys.executable).parent / "ray")
# (phase name, the progress line that ends it)
MARKS = (
    ("ray start or join", "[ray]"),
    ("data", "[data]  /"),
    ("mlflow run", "[mlflow] run"),
    ("train controller + workers", "[train] starting"),
    ("first step", "[train] step"),
)


def job(folder: Path) -> Path:
    spec = {
        "name": "startup",
        "data": {"seq_len": 50, "batch_size": 8, "eval_batch_size": 4},
        "model": {"cell": "hyperlstm", "hidden_size": 64, "hyper": {"hidden_size": 16, "embed_size": 4}},
        "train": {
            "max_steps": 3,
            "log_every": 1,
            "eval_every": 1000,
            "checkpoint_every": 1000,
            "eval_max_symbols": 500,
            "sample_length": 10,
        },
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "storage": str(folder / "runs"),
        "tracking": {"experiment": "startup"},
    }
    path = folder / "startup.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def timed_submit(job_file: Path, extra: list[str], env: dict[str, str], name: str) -> dict[str, float]:
    """Seconds from the process start to each mark, and the total. Each run has a name of its own, so it
    trains from step 0; the prepared data stays cached, as for a user's second job."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [HYPERCTL, "submit", str(job_file), "--set", f"name={name}", *extra],
        cwd=job_file.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen: dict[str, float] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        for phase, mark in MARKS:
            if phase not in seen and line.startswith(mark):
                seen[phase] = time.monotonic() - t0
    proc.wait()
    seen["exit"] = time.monotonic() - t0
    if proc.returncode != 0 or len(seen) != len(MARKS) + 1:
        raise RuntimeError(f"{name}: exit {proc.returncode}, marks seen {sorted(seen)}")
    return seen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_head(folder: Path) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    """`ray start --head --block` on free ports with a token of its own (never ~/.ray)."""
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    gcs, dash = free_port(), free_port()
    temp = Path(tempfile.mkdtemp(prefix="hyperctl-bench-", dir="/tmp"))
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs)]
        + ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "2"]
        + ["--disable-usage-stats", "--temp-dir", str(temp)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", dash), timeout=1):
                break
        except OSError:
            time.sleep(1)
    else:
        raise RuntimeError("ray start --head did not come up in 180 s")
    client_env = {**os.environ, "RAY_AUTH_TOKEN_PATH": str(token)}
    client_env.pop("RAY_AUTH_MODE", None)
    client_env.pop("RAY_ADDRESS", None)
    return head, f"127.0.0.1:{gcs}", client_env


def stop_head(head: subprocess.Popen[bytes]) -> None:
    import signal

    try:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        os.killpg(head.pid, signal.SIGKILL)


def phases(marks: dict[str, float]) -> dict[str, float]:
    out, last = {}, 0.0
    for phase, _ in MARKS:
        out[phase] = marks[phase] - last
        last = marks[phase]
    out["submit to first step"] = marks[MARKS[-1][0]]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="startup-bench-"))
    job_file = job(folder)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    runs: dict[str, list[dict[str, float]]] = {"cold": [], "warm (first join)": [], "warm": []}
    timed_submit(job_file, [], env, "prepare")  # prepares and caches the data set once, like a user's first job
    for i in range(args.repeats):
        runs["cold"].append(phases(timed_submit(job_file, [], env, f"cold{i}")))
        print(f"cold: {runs['cold'][-1]['submit to first step']:.1f} s", flush=True)
    head, address, client_env = start_head(folder)
    try:
        for i in range(args.repeats + 1):
            key = "warm (first join)" if i == 0 else "warm"
            runs[key].append(phases(timed_submit(job_file, ["--address", address], client_env, f"warm{i}")))
            print(f"{key}: {runs[key][-1]['submit to first step']:.1f} s", flush=True)
    finally:
        stop_head(head)
    load = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"cpus": os.cpu_count(), "load_1min_at_end": load, "runs": runs}
    (args.out / "startup.json").write_text(json.dumps(result, indent=2))
    names = [p for p, _ in MARKS] + ["submit to first step"]
    lines = [
        f"Submit to first step, seconds (median of {args.repeats}; {os.cpu_count()} CPUs; 1-min load {load:.1f} "
        "at the end). Command: `.venv/bin/python bench/startup.py`",
        "",
        "| phase | " + " | ".join(runs) + " |",
        "|---" * (len(runs) + 1) + "|",
    ]
    for name in names:
        cells = []
        for rows in runs.values():
            values = sorted(r[name] for r in rows)
            cells.append(f"{values[len(values) // 2]:.1f}" if values else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (args.out / "startup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
