"""End to end, in two Ray runs on one local Ray instance: a 2-worker handwriting job on the built-in
strokes tracked in a real MLflow store (metrics, sample grids, weight-scaling plot, model), then
the same job with one training worker SIGKILLed after its first checkpoint, which must resume and
end with exactly the uninterrupted run's numbers. The kill and the MLflow comparison are
tests/service/test_resume.py's helpers."""

from __future__ import annotations

import io
import re
import sys
import threading
from pathlib import Path

import pytest

from service.driver.local import run_job
from service.spec.loading import validate_job

from helpers import ROOT

sys.path.insert(0, str(ROOT / "tests" / "service"))  # test folders are not packages
from test_resume import CKPT_EVERY, MAX_STEPS, histories, kill_after_first_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow


def tiny_job(tmp: Path, name: str):
    return validate_job(
        {
            "name": name,
            "task": "handwriting",
            "data": {"dataset": "hanzi-medians", "batch_size": 16, "eval_batch_size": 256},
            "model": {
                "cell": "hyperlstm",
                "hidden_size": 48,
                "num_mixtures": 4,
                "hyper": {"hidden_size": 16, "embed_size": 4},
                "dropout": {"output": 0.1, "recurrent": 0.1},  # RNG states must be restored too
            },
            "train": {
                "optimizer": {"name": "adam", "lr": 0.005},
                "grad_clip": 5.0,
                "max_steps": MAX_STEPS,
                "log_every": 5,
                "eval_every": CKPT_EVERY,
                "eval_max_sequences": 100,
                "checkpoint_every": CKPT_EVERY,
                "samples": 4,
                "sample_length": 40,
            },
            "resources": {"workers": 2, "cpus_per_worker": 1, "max_failures": 2},
            "storage": str(tmp / "runs"),
            "tracking": {"experiment": "tests"},
        }
    )


def test_two_worker_job_tracked_and_killed_worker_resumes_exactly(local_ray, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    # ---- an uninterrupted 2-worker run, and what it left in MLflow ----------------------------
    spec = tiny_job(tmp_path, "baseline")
    baseline = run_job(spec, num_cpus=2)
    assert baseline.ok, baseline.error
    client = MlflowClient(tracking_uri=baseline.tracking_uri)
    run = client.get_run(baseline.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["hyperctl.task"] == "handwriting"
    assert run.data.params == {k: str(v) for k, v in spec.flat().items()}
    want = histories(baseline.tracking_uri, baseline.run_id)
    every_log = list(range(5, MAX_STEPS + 1, 5))
    assert "lr" not in want  # a constant rate is the param train.optimizer.lr
    for key in ("train_nll", "train_nll_per_point", "points_per_s"):
        assert [s for s, _ in want[key]] == every_log, key
    evals = list(range(CKPT_EVERY, MAX_STEPS + 1, CKPT_EVERY))
    assert [s for s, _ in want["valid_nll"]] == evals and [s for s, _ in want["valid_nll_per_point"]] == evals
    for key in ("final/test_nll", "final/test_nll_per_point", "final/valid_nll", "final/valid_nll_per_point"):
        assert [s for s, _ in want[key]] == [MAX_STEPS], key
    assert {k for k, points in want.items() if len(points) == 1} == {k for k in want if k.startswith("final/")}
    train = [v for _, v in want["train_nll_per_point"]]
    assert train[-1] < train[0] - 0.3, train  # it learned something
    # per sequence = per point x points per sequence (65 on average for the built-in strokes)
    (_, test_seq), (_, test_point) = want["final/test_nll"][0], want["final/test_nll_per_point"][0]
    assert 40 < test_seq / test_point < 90

    paths = {a.path for a in client.list_artifacts(baseline.run_id)}
    for folder in ("plots", "samples"):
        paths |= {a.path for a in client.list_artifacts(baseline.run_id, folder)}
    grids = {f"samples/step_{s:08d}.png" for s in evals[:-1]} | {"samples/final.png"}
    from service.io import tracking

    assert tracking.run_model_uri(baseline.tracking_uri, baseline.run_id).startswith("models:/")  # runs:/ID/model
    assert {
        "job.yaml",
        "strokes.json",
        "plots/learning_curve.png",
        "plots/scaling_vectors.png",
    } | grids <= paths
    from PIL import Image

    final_grid = Path(client.download_artifacts(baseline.run_id, "samples/final.png", str(tmp_path)))
    with Image.open(final_grid) as image:
        assert image.size[0] > 300 and image.size[1] > 300

    # ---- the same job, one worker killed after the first checkpoint -----------------------------
    record: dict = {}
    killer = threading.Thread(target=kill_after_first_checkpoint, args=(tmp_path / "runs" / "killed", record))
    killer.start()
    out = io.StringIO()
    killed = run_job(tiny_job(tmp_path, "killed"), num_cpus=2, out=out)
    killer.join()
    print(out.getvalue())
    assert killed.ok, killed.error
    assert record.get("pid"), "no live RayTrainWorker found to kill"
    assert not record["final_checkpoint_existed"], "the kill came too late to interrupt training"
    assert re.search(r"\[train\] resumed at step (25|50|75): 100 steps", out.getvalue()), "no resume"
    got = histories(killed.tracking_uri, killed.run_id)
    assert set(got) == set(want)
    for key in set(got) - {"points_per_s"}:
        assert [s for s, _ in got[key]] == [s for s, _ in want[key]], key
        for (step, a), (_, b) in zip(got[key], want[key], strict=True):
            assert a == pytest.approx(b, rel=1e-9, abs=1e-12), f"{key} at step {step}: {a} != {b}"
