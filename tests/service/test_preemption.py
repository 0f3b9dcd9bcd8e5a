"""Preemption (issue 14): SIGTERM to a running job's driver (``hyperctl submit``, what a pod's main
process is) or to one of its Ray Train workers ends the job after the step it reached, with a
checkpoint at that step, the MLflow run KILLED and tagged ``hyperctl.preempted_at_step``, exit 130;
the same command resumes from that step and ends with the numbers of an uninterrupted run.

``checkpoint_every`` is larger than the run, so no periodic checkpoint lands before the signal:
the only checkpoint of the interrupted attempt is the one the signal asked for. One local Ray
instance serves the module; the ``hyperctl submit`` children join it (``--address``), as a warm
start does, so each costs no Ray start of its own.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.driver.local import run_job
from service.spec.loading import validate_job

from helpers import ROOT, tiny_job

pytestmark = pytest.mark.slow
MAX_STEPS, SIGNAL_AFTER = 240, 8


def raw_job(tmp: Path, name: str) -> dict[str, Any]:
    raw = tiny_job(tmp, name, max_steps=MAX_STEPS, checkpoint_every=1000, eval_every=100, log_every=1)
    raw["data"]["seq_len"] = 40
    raw["model"]["hidden_size"] = 64
    raw["train"]["sample_length"] = 0
    return raw


def metric_histories(uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in client.get_run(run_id).data.metrics
        if key != "tokens_per_s"
    }


def submit(job: Path, address: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "service", "submit", str(job), "--address", address],
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")},
        )


def reached(text: str) -> int:
    return max((int(s) for s in re.findall(r"\[train\] step +(\d+)", text)), default=0)


def wait_for_step(log: Path, proc: subprocess.Popen[bytes], step: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and reached(log.read_text()) < step:
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)


def checkpoints(run_folder: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in run_folder.glob("checkpoint_*") if p.is_dir())


def signal_a_worker_at(
    out: io.StringIO, step: int, gcs_address: str, record: dict[str, int], ended: threading.Event
) -> None:
    """Once ``out`` shows training at ``step`` (every worker has set its handler when it started),
    SIGTERM one live Ray Train worker process; nothing if the job ``ended`` before."""
    from ray.util.state import list_actors

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and reached(out.getvalue()) < step:
        if ended.is_set():
            return
        time.sleep(0.1)
    workers = list_actors(address=gcs_address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    if workers:
        record["pid"] = workers[-1].pid
        os.kill(workers[-1].pid, signal.SIGTERM)


def test_sigterm_checkpoints_the_step_reached_and_the_same_command_resumes(local_ray, tmp_path: Path) -> None:
    """Three attempts of one job: SIGTERM to its driver (`hyperctl submit`), then to one of its
    workers, then to nothing; each continues from the step the one before reached, and the result is
    the uninterrupted run's."""
    from mlflow.tracking import MlflowClient

    address = local_ray.get_runtime_context().gcs_address
    baseline = run_job(validate_job(raw_job(tmp_path, "baseline")), address=address)
    assert baseline.ok, baseline.error
    client = MlflowClient(tracking_uri=baseline.tracking_uri)
    run_folder = tmp_path / "runs" / "preempted"

    # 1. SIGTERM to `hyperctl submit` (a pod's main process): exit 130, the same command to resume.
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(raw_job(tmp_path, "preempted")))
    first = tmp_path / "first.log"
    proc = submit(job, address, first)
    wait_for_step(first, proc, SIGNAL_AFTER)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=240) == 130, first.read_text()[-3000:]
    text = first.read_text()
    found = re.search(
        r"\[stopped\] preempted at step (\d+): .* Resume from that step with the same command: (.*)", text
    )
    assert found, text[-3000:]
    step = int(found.group(1))
    assert SIGNAL_AFTER <= step < MAX_STEPS
    assert found.group(2) == f"hyperctl submit {job} --address {address}"
    summary = json.loads(text[text.index("{\n") : text.index("\n}\n") + 2])
    assert summary["status"] == "KILLED" and summary["preempted_at_step"] == step
    # The only checkpoint is the one at the step reached (no periodic one before it); no final
    # evaluation ran (it belongs to the finished run).
    assert checkpoints(run_folder) == [step]
    assert "[done]" not in text
    run_id = summary["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["hyperctl.preempted_at_step"] == str(step)
    assert run.data.tags["hyperctl.error"].startswith(f"interrupted: preempted (SIGTERM to the driver) at step {step}")
    assert max(s for s, _ in metric_histories(baseline.tracking_uri, run_id)["train_bpc"]) == step

    # 2. Relaunched; SIGTERM to one Ray Train worker: every rank stops at the same later step.
    record: dict[str, int] = {}
    out, ended = io.StringIO(), threading.Event()
    signaller = threading.Thread(target=signal_a_worker_at, args=(out, step + SIGNAL_AFTER, address, record, ended))
    signaller.start()
    try:
        second = run_job(validate_job(raw_job(tmp_path, "preempted")), address=address, out=out)
    finally:
        ended.set()
        signaller.join()
    assert record.get("pid"), "no worker to signal"
    assert f"[train] resumed at step {step}: {MAX_STEPS} steps" in out.getvalue()
    assert second.run_id == run_id and not second.ok and second.preempted_at_step is not None, out.getvalue()[-3000:]
    assert "SIGTERM to 1 worker: training stops after step" in out.getvalue()
    assert step + SIGNAL_AFTER <= second.preempted_at_step < MAX_STEPS
    step = second.preempted_at_step
    assert checkpoints(run_folder)[-1] == step
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["hyperctl.preempted_at_step"] == str(step)

    # 3. Relaunched again, undisturbed: it continues from that step to the end, with the uninterrupted
    # run's numbers. (In this process, as 2: what the same command runs, without its start-up.)
    out = io.StringIO()
    third = run_job(validate_job(raw_job(tmp_path, "preempted")), address=address, out=out)
    assert third.ok and third.run_id == run_id, third.error
    assert f"[train] resumed at step {step}: {MAX_STEPS} steps" in out.getvalue()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "hyperctl.preempted_at_step" not in run.data.tags
    got, want = (
        metric_histories(baseline.tracking_uri, run_id),
        metric_histories(baseline.tracking_uri, baseline.run_id),
    )
    assert set(got) == set(want)
    for key in want:
        assert [s for s, _ in got[key]] == [s for s, _ in want[key]], key
        for (at, a), (_, b) in zip(got[key], want[key], strict=True):
            assert a == pytest.approx(b, rel=1e-9, abs=1e-12), f"{key} at step {at}: {a} != {b}"
