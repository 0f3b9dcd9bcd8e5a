"""Fault tolerance: SIGKILL a Ray Train worker mid-run; the job resumes from its latest checkpoint
in the same MLflow run and ends with exactly the numbers of an uninterrupted run (a char LM on
sharded data, and a hyper convnet with augmentation).

Both runs share one local Ray instance (started once for the module). The worker's pid comes from
Ray's state API (`ray.util.state.list_actors`), not from hooks in the product code.
"""

from __future__ import annotations

import io
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from service.driver.local import run_job
from service.spec.loading import validate_job
from service.tasks.char_lm.data import prepare_text
from service.tasks.char_lm.synthetic import write_standin

from helpers import tiny_job

pytestmark = pytest.mark.slow
MAX_STEPS, CKPT_EVERY = 100, 25


def job_spec(tmp: Path, name: str, task: str = "char_lm"):
    raw = tiny_job(tmp, name, max_steps=MAX_STEPS, checkpoint_every=CKPT_EVERY, eval_every=CKPT_EVERY, log_every=5)
    if task == "image_classification":  # a hyper convnet with augmentation: data order and RNG restored too
        raw.update(
            task=task,
            model={"arch": "mnist_convnet", "kernels": "hyper"},
            data={"dataset": "mnist-test", "batch_size": 16, "augment": {"pad_crop": 2}},
        )
        raw["train"].pop("eval_max_symbols")
        raw["train"].pop("sample_length")
        return validate_job(raw)
    # Sharded data (service/tasks/char_lm/streams.py): a 120 kB enwik8 stand-in prepared beforehand in 9
    # training shards of 1,024-id row groups (the run finds it in the cache: the hash ignores the cut);
    # each rank's streams span several shards, and their 2,048-position windows turn at step 51.
    standin = tmp / "enwik8"
    if not standin.exists():
        write_standin(standin, 120_000)
    raw["data"] = {"dataset": "enwik8", "path": str(standin), "seq_len": 40, "batch_size": 8, "eval_batch_size": 4}
    raw["model"]["hidden_size"] = 64
    spec = validate_job(raw)
    prepare_text(spec, os.path.join(spec.storage, "datasets"), piece_bytes=12_000, rows_per_group=1024)
    return spec


def alive_train_workers() -> list:
    import ray
    from ray.util.state import list_actors

    # this instance by address: the state API's "auto" refuses when other Ray instances run here
    return list_actors(
        address=ray.get_runtime_context().gcs_address,
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
    )


def train_workers() -> list:
    """Every Ray Train worker actor this instance has started, alive or dead."""
    import ray
    from ray.util.state import list_actors

    return list_actors(
        address=ray.get_runtime_context().gcs_address, filters=[("class_name", "=", "RayTrainWorker")], limit=10_000
    )


def kill_after_first_checkpoint(run_dir: Path, record: dict) -> None:
    """Wait until Ray has registered the first checkpoint (it is in the run's checkpoint-manager
    snapshot, not merely being uploaded), then SIGKILL one live training worker."""
    snapshot, first = run_dir / "checkpoint_manager_snapshot.json", f"checkpoint_{CKPT_EVERY:08d}"
    deadline = time.time() + 300
    while time.time() < deadline and not (snapshot.is_file() and first in snapshot.read_text()):
        time.sleep(0.05)
    workers = alive_train_workers()
    record["final_checkpoint_existed"] = (run_dir / f"checkpoint_{MAX_STEPS:08d}").exists()
    if workers:
        record["pid"] = workers[0].pid
        os.kill(workers[0].pid, signal.SIGKILL)


def histories(uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in client.get_run(run_id).data.metrics
    }


@pytest.mark.parametrize("task", ["char_lm", "image_classification"])
def test_killed_worker_resumes_exactly(local_ray, tmp_path: Path, task: str) -> None:
    from mlflow.tracking import MlflowClient

    baseline = run_job(job_spec(tmp_path, "baseline", task), num_cpus=2)
    assert baseline.ok, baseline.error

    record: dict = {}
    killer = threading.Thread(target=kill_after_first_checkpoint, args=(tmp_path / "runs" / "killed", record))
    killer.start()
    out = io.StringIO()
    killed = run_job(job_spec(tmp_path, "killed", task), num_cpus=2, out=out)
    killer.join()
    print(out.getvalue())
    assert killed.ok, killed.error
    assert "[train] starting: 100 steps" in out.getvalue()
    assert re.search(r"\[train\] resumed at step (25|50|75): 100 steps", out.getvalue()), "no resume from a checkpoint"
    assert record.get("pid"), "no live RayTrainWorker found to kill"
    assert not record["final_checkpoint_existed"], "the kill came too late to interrupt training"
    from ray.util.state import list_actors

    dead = list_actors(
        address=local_ray.get_runtime_context().gcs_address,
        filters=[("class_name", "=", "RayTrainWorker"), ("pid", "=", record["pid"])],
    )
    assert dead and all(a.state == "DEAD" for a in dead)

    # One MLflow run for the killed job, finished, with strictly increasing steps and no duplicates.
    client = MlflowClient(tracking_uri=killed.tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("tests").experiment_id], filter_string="tags.`hyperctl.job` = 'killed'"
    )
    assert [r.info.run_id for r in runs] == [killed.run_id]
    assert runs[0].info.status == "FINISHED"
    got, want = histories(killed.tracking_uri, killed.run_id), histories(baseline.tracking_uri, baseline.run_id)
    for key, series in got.items():
        steps = [s for s, _ in series]
        assert steps == sorted(set(steps)), f"{key}: steps {steps}"
    train_metric = "train_bpc" if task == "char_lm" else "train_loss"
    assert [s for s, _ in got[train_metric]] == list(range(5, MAX_STEPS + 1, 5))

    # Same numbers as the uninterrupted run (tokens/s aside): restarts happen at checkpoint
    # boundaries, and model, optimizer, recurrent state and RNG states are all restored.
    assert set(got) == set(want)
    for key in set(got) - {"tokens_per_s", "images_per_s"}:
        assert [s for s, _ in got[key]] == [s for s, _ in want[key]], key
        for (step, a), (_, b) in zip(got[key], want[key], strict=True):
            assert a == pytest.approx(b, rel=1e-9, abs=1e-12), f"{key} at step {step}: {a} != {b}"


def test_deterministic_worker_error_is_told_and_not_retried(local_ray, tmp_path: Path) -> None:
    """Issue 16, kind 4: a worker's error from its data is printed as the worker raised it (type,
    message, the project's file:line), not as Ray's ``WorkerGroupError``, and ``max_failures`` (2
    here) does not run the job again: the retried attempt returns before training."""
    import pyarrow as pa
    from mlflow.tracking import MlflowClient

    from service.io import datacache

    spec = job_spec(tmp_path, "broken")
    assert spec.resources.max_failures == 2
    prepared = prepare_text(spec, str(tmp_path / "runs" / "datasets"))  # the run's cache hit, then broken
    datacache.write_parquet(f"{prepared.root}/train-00000.parquet", pa.table({"id": pa.array([1, 2, 3], pa.int32())}))
    out = io.StringIO()
    before = len(train_workers())
    outcome = run_job(spec, num_cpus=2, out=out)
    # Two worker groups of 2: the attempt that raised, and the retry that returned before training
    # (without the record, max_failures = 2 would have run 3 groups that all raise).
    assert len(train_workers()) - before == 2 * spec.resources.workers
    text = out.getvalue()
    assert not outcome.ok and outcome.error is not None
    assert outcome.error.startswith("ValueError: ") and "train-00000.parquet has 3 rows" in outcome.error, outcome.error
    assert re.search(r"\(at service/io/shards\.py:\d+ in _file\)$", outcome.error), outcome.error
    assert "WorkerGroupError" not in text and f"[error] {outcome.error}" in text, text
    run = MlflowClient(tracking_uri=outcome.tracking_uri).get_run(outcome.run_id)
    assert run.info.status == "FAILED" and run.data.tags["hyperctl.error"] == outcome.error


def test_interrupted_job_ends_killed_with_its_step(local_ray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16, kind 5: a job stopped at once (a second SIGTERM, or workers slower than the
    driver's grace to checkpoint after the first: here a grace of 0 s; the first SIGTERM alone is
    test_preemption.py's) ends the run KILLED, not FAILED, naming the step its last checkpoint reached."""
    from mlflow.tracking import MlflowClient

    from service.driver import local

    monkeypatch.setattr(local, "PREEMPT_GRACE_S", 0.0)

    spec = job_spec(tmp_path, "stopped")

    def stop() -> None:
        snapshot, first = tmp_path / "runs" / "stopped" / "checkpoint_manager_snapshot.json", f"{CKPT_EVERY:08d}"
        deadline = time.time() + 300
        while time.time() < deadline and not (snapshot.is_file() and first in snapshot.read_text()):
            time.sleep(0.05)
        time.sleep(1.0)  # the metrics of that checkpoint reach MLflow right after it is registered
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop)
    stopper.start()
    with pytest.raises(KeyboardInterrupt):
        run_job(spec, num_cpus=2)
    stopper.join()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "KILLED", run.info.status
    message = run.data.tags["hyperctl.error"]
    found = re.search(r"interrupted( \(.*\))? at step (\d+) \(its last checkpoint\)", message)
    assert found, message
    step = int(found.group(2))
    assert step >= CKPT_EVERY and step % CKPT_EVERY == 0 and "relaunch the job to resume" in message
