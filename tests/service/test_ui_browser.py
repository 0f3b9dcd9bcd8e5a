"""A new user's look at a run: a tiny quickstart-like job submitted with `--set` overrides, then
`hyperctl ui JOB --set ...` (the same overrides find its store), and headless Chromium on the
pages it prints. Checks: the URL is printed only once the server answers; the experiment's page
opens on the runs table (MLflow's training view, not its GenAI overview) with the run named by its
overrides; the run's learning curve and weight-scaling pictures are shown; Ctrl-C stops the UI and
leaves no process behind. Screenshots and DOMs go to test-artifacts/ui/ (printed)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from helpers import ARTIFACTS, CHROMIUM, chromium, free_port, hyperctl, local_env, tiny_job

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (needed for the headless UI check)"),
]
OVERRIDES = ["model.hyper.embed_size=8"]  # plus storage=..., below


def descendants(pid: int) -> set[int]:
    """The processes started, directly or not, by ``pid``."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def health(base: str) -> int | None:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
            return r.status
    except OSError:
        return None


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_ui_serves_the_runs_table_and_leaves_nothing_behind(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    job = tiny_job(
        tmp_path, "firsthour", max_steps=10, eval_every=5, checkpoint_every=10, log_every=5, sample_length=20
    )
    job["resources"] = {"workers": 1, "cpus_per_worker": 1, "max_failures": 1}
    job["tracking"] = {"experiment": "first-hour"}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    sets = [a for o in [*OVERRIDES, f"storage={tmp_path / 'elsewhere'}"] for a in ("--set", o)]
    proc = hyperctl("submit", "job.yaml", *sets, "--num-cpus", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run_id = json.loads(proc.stdout[proc.stdout.rindex("\n{") + 1 :])["run_id"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}")
    assert client.get_run(run_id).info.run_name == "firsthour embed_size=8"

    port = free_port()
    started = time.monotonic()
    ui = subprocess.Popen(
        [sys.executable, "-m", "service", "ui", "job.yaml", *sets, "--port", str(port)],
        cwd=tmp_path,
        env=local_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    url_seen = threading.Event()
    status_at_url: list[int | None] = []

    def read() -> None:  # drains the pipe to the end: the server writes its log to it too
        assert ui.stdout is not None
        for line in ui.stdout:
            lines.append(line)
            if line.startswith("MLflow UI: ") and not url_seen.is_set():
                status_at_url.append(health(f"http://127.0.0.1:{port}"))
                url_seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    out_dir = ARTIFACTS / "ui"
    try:
        assert url_seen.wait(300), "".join(lines)[-3000:]
        answered_s = time.monotonic() - started
        print(f"\nhyperctl ui printed its URL after {answered_s:.1f}s")
        assert status_at_url == [200], "the URL was printed before the server answered"
        children = descendants(ui.pid)
        assert children, "the MLflow server is not a child of hyperctl ui"
        time.sleep(1)  # the experiment lines follow the URL line
        pages = dict(re.findall(r"^  experiment (\S+): (\S+)$", "".join(lines), re.M))
        experiment = client.get_experiment_by_name("first-hour")
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
        runs_page = pages["first-hour"]
        assert (
            runs_page
            == f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
        )
        assert next(iter(pages)) == "first-hour", "the job's experiment is not listed first"

        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"screenshots and DOMs: {out_dir}")
        dom = chromium(runs_page, tmp_path / "chrome-runs", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        (out_dir / "experiment_runs.html").write_text(dom.stdout)
        page = text_of(dom.stdout)
        assert "Run Name" in page and "1 matching run" in page, page[:3000]  # the runs table
        assert "firsthour embed_size=8" in page
        assert "Detect Issues" not in page and "Traces 0" not in page  # not the GenAI overview
        shot = chromium(runs_page, tmp_path / "chrome-runs-shot", f"--screenshot={out_dir / 'experiment_runs.png'}")
        assert shot.returncode == 0, shot.stderr[-2000:]

        base = runs_page.split("?")[0]
        for picture in ("learning_curve", "scaling_vectors"):
            url = f"{base}/runs/{run_id}/artifacts/plots/{picture}.png?workflowType=machine_learning"
            dom = chromium(url, tmp_path / f"chrome-{picture}", "--dump-dom")
            assert dom.returncode == 0, dom.stderr[-2000:]
            (out_dir / f"{picture}.html").write_text(dom.stdout)
            assert f"plots/{picture}.png" in text_of(dom.stdout)  # the artifact viewer's title
            shown = re.findall(r'<img[^>]+src="(blob:[^"]+)"', dom.stdout)
            assert shown, "the picture was not loaded into the page"  # fetched from the server as a blob
            shot = chromium(url, tmp_path / f"chrome-{picture}-shot", f"--screenshot={out_dir / f'{picture}.png'}")
            assert shot.returncode == 0, shot.stderr[-2000:]
    finally:
        ui.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            code = ui.wait(timeout=60)
        except subprocess.TimeoutExpired:
            ui.kill()
            raise
        reader.join(timeout=10)

    assert code == 0, "".join(lines)[-3000:]
    deadline = time.monotonic() + 10
    while any(alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in children if alive(p)], "hyperctl ui left processes behind"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "something still listens on the UI's port"
