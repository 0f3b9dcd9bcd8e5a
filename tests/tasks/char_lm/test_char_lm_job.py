"""End to end: a 2-worker job through `hyperctl submit` on a local Ray instance, tracked in a real
MLflow sqlite store. Tiny model and corpus (the first lines of PTB char) so it runs in ~1-2 minutes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import yaml

from service.spec.loading import validate_job

from helpers import hyperctl, tiny_job

pytestmark = pytest.mark.slow


def test_two_worker_job_runs_and_is_tracked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    job = tiny_job(tmp_path, "e2e")
    job["tracking"]["register_model"] = "e2e-lm"
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    proc = hyperctl("submit", str(job_file), "--num-cpus", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "[train] step     60/60" in proc.stdout and "[ckpt]" in proc.stdout  # progress was printed
    summary = json.loads(proc.stdout[proc.stdout.rindex("\n{") + 1 :])
    assert summary["status"] == "FINISHED"

    # Exactly one MLflow run, in the default sqlite store under the storage folder.
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert summary["tracking_uri"] == uri
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tests")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == summary["run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["hyperctl.job"] == "e2e" and run.data.tags.get("ray.job_id")
    # The end of the run says, for people, where its results are and how to look at them.
    assert "[done] e2e: FINISHED (valid_bpc " in proc.stderr
    assert f"checkpoints: {tmp_path / 'runs' / 'e2e'}" in proc.stderr
    assert f"artifacts:   {run.info.artifact_uri}" in proc.stderr
    model_line = f"model:       runs:/{run.info.run_id}/model; registered as models:/e2e-lm/1"
    assert model_line in proc.stderr and run.data.tags["hyperctl.registered_model"] == "models:/e2e-lm/1"
    page = f"run page:    http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}"
    assert page in proc.stderr and f"hyperctl ui {job_file}" in proc.stderr
    # Ray's and MLflow's start-up chatter stays off the user's terminal (--verbose shows Ray's).
    assert "Token authentication is enabled" not in proc.stderr and "MLflow database tables" not in proc.stderr

    # Params = the flattened spec.
    spec = validate_job(job)
    assert run.data.params == {k: str(v) for k, v in spec.flat().items()}

    # Metrics at increasing steps.
    history = {
        k: client.get_metric_history(run.info.run_id, k)
        for k in ("train_bpc", "tokens_per_s", "valid_bpc", "final/test_bpc", "final/valid_bpc")
    }
    assert "lr" not in run.data.metrics  # constant: the param train.optimizer.lr, not a flat chart
    assert [m.step for m in history["train_bpc"]] == list(range(5, 61, 5))
    assert [m.step for m in history["tokens_per_s"]] == list(range(5, 61, 5))
    assert all(m.value > 0 for m in history["tokens_per_s"])
    assert [m.step for m in history["valid_bpc"]] == [20, 40, 60]
    train = [m.value for m in history["train_bpc"]]
    assert train[-1] < train[0] - 0.5, train  # it learned something
    test_bpc = history["final/test_bpc"][0].value
    assert len(history["final/test_bpc"]) == 1 and math.isfinite(test_bpc) and test_bpc < math.log2(50)
    # The final figures are one point each in the final/ section; every chart outside it is a curve.
    assert [(m.step, m.value) for m in history["final/valid_bpc"]] == [(60, history["valid_bpc"][-1].value)]
    single = {k for k in run.data.metrics if len(client.get_metric_history(run.info.run_id, k)) == 1}
    assert single == {"final/valid_bpc", "final/test_bpc"}, single

    # Artifacts.
    paths = {a.path for a in client.list_artifacts(run.info.run_id)}
    paths |= {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {
        "job.yaml",
        "vocab.json",
        "sample.txt",
        "plots/learning_curve.png",
        "plots/scaling_vectors.png",
    } <= paths
    local = Path(client.download_artifacts(run.info.run_id, "sample.txt", str(tmp_path)))
    assert "sample (60 symbols" in local.read_text()
    assert max(map(len, local.read_text().splitlines())) <= 80  # wrapped here, not by the viewer
    logged_job = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "job.yaml", str(tmp_path))).read_text())
    assert logged_job == spec.model_dump(mode="json")

    # Checkpoints in storage: the latest keep_checkpoints, each with every part.
    run_dir = tmp_path / "runs" / "e2e"
    assert (run_dir / "mlflow_run_id").read_text().strip() == run.info.run_id
    ckpts = sorted(p.name for p in run_dir.glob("checkpoint_0*") if p.is_dir())
    assert ckpts == ["checkpoint_00000040", "checkpoint_00000060"]
    files = {p.name for p in (run_dir / "checkpoint_00000060").iterdir()}
    assert {"model.pt", "optimizer.pt", "meta.json", "rank_0.pt", "rank_1.pt"} <= files
    meta = json.loads((run_dir / "checkpoint_00000060" / "meta.json").read_text())
    assert meta["step"] == 60 and meta["world_size"] == 2
    # Full precision by default: no autocast, no gradient scaler to carry.
    assert meta["spec"]["train"]["precision"] == run.data.params["train.precision"] == "fp32"
    assert "grad_scaler" not in meta

    # The registered model is the run's final model: evaluated on the test split it gives the run's
    # test_bpc (same text, segments and state carrying), and --log adds that to the run.
    from service.cli import main

    store = ["--storage", str(tmp_path / "runs")]
    assert main(["evaluate", "models:/e2e-lm/1", "--split", "test", "--log", *store]) == 0, capsys.readouterr().err
    assert f"logged to run {run.info.run_id}" in capsys.readouterr().out
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged["eval/test/bpc"] == pytest.approx(test_bpc, rel=1e-5)

    # No credentials anywhere in what MLflow holds.
    blob = json.dumps([run.data.params, run.data.tags])
    for key in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if os.environ.get(key):
            assert os.environ[key] not in blob
