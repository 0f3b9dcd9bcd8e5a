"""End to end against a real S3 server (SeaweedFS on 127.0.0.1): corpora read from s3://,
prepared data, checkpoints and the run's bookkeeping written to s3://, verified object by object;
storage outages in the middle of the run; no credential anywhere the job wrote.

The outages are the SeaweedFS server itself stopped and started again (same port, identity and
data), each at an exact point of the run: the job reaches the server through a loopback proxy
(tests/helpers.py ``TcpProxy``) that holds the first request of checkpoint N's upload until Ray has
registered checkpoint N - 20 (its ``checkpoint_manager_snapshot.json`` lists it); then the server is
stopped and the request let through into the outage, however fast the job trains.

1. a 20 s outage at checkpoint 40's upload: it waits it out, saying so, and the run goes on;
2. an outage at checkpoint 60's upload that lasts until the job gives up: it fails once the
   job's ``storage_retry_s`` is spent, with one line naming the storage, exit 1, the MLflow run
   FAILED with that reason and checkpoints 20 and 40 intact;
3. the same command again, the storage back: the job resumes from checkpoint 40 and finishes.

Secrets (issue 16): the job runs with the S3 server's credentials and a password for an MLflow
server with basic auth (``mlflow server --app-name basic-auth``, the ``mlflow[auth]`` extra) in its
environment; neither appears in any output line, MLflow param, tag, metric key or artifact, or any
object the job wrote to the bucket. (The Ray Jobs API's submitted metadata is checked for the
submitting shell's secrets in tests/service/test_cluster_jobs.py.)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
import yaml

from service.io.storage import wait_delays
from service.worker import checkpoint as ckpt

from helpers import TcpProxy, free_port, hyperctl, local_env, tiny_job, wait_healthy

pytestmark = pytest.mark.slow

RETRY_S = 40  # the job's storage_retry_s: more than the first outage (20 s + a restart), less than the second


def objects(s3, bucket: str, prefix: str) -> dict[str, int]:
    return {
        o["Key"]: o["Size"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    }


def registered(s3, bucket: str, run: str) -> list[str]:
    """The checkpoints Ray has registered: the folders its snapshot lists."""
    try:
        body = s3.get_object(Bucket=bucket, Key=f"{run}/checkpoint_manager_snapshot.json")["Body"].read()
    except s3.exceptions.NoSuchKey:
        return []
    return sorted(set(re.findall(r"checkpoint_\d{8}", body.decode())))


def verify_on_s3(s3, bucket: str, run: str, name: str, tmp: Path) -> list[str]:
    """ckpt.verify of a checkpoint folder downloaded with boto3 (not with our code)."""
    local = Path(tempfile.mkdtemp(dir=tmp)) / name
    for key in objects(s3, bucket, f"{run}/{name}/"):
        if key.endswith("/"):  # a folder marker
            continue
        target = local / key.rsplit("/", 1)[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    return ckpt.verify(local) if local.is_dir() else [f"{name}: nothing on S3"]


def wait_for(condition, proc: subprocess.Popen, log: Path, what: str) -> None:
    """Until ``condition()``; fails with the job's output if the job ends first."""
    while not condition():
        assert proc.poll() is None, f"the job ended before {what}:\n{log.read_text()[-6000:]}"
        time.sleep(0.2)


@contextlib.contextmanager
def mlflow_with_basic_auth(folder: Path, username: str, password: str) -> Iterator[str]:
    """``mlflow server --app-name basic-auth`` on 127.0.0.1 whose admin is ``username``/``password``;
    yields its URI."""
    folder.mkdir()
    ini = folder / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{folder / 'auth.db'}\nadmin_username = {username}\nadmin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    ini.chmod(0o600)
    port = free_port()
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--workers", "1"]
        + ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "art")]
        + ["--host", "127.0.0.1", "--port", str(port)],
        cwd=folder,
        env=local_env(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_FLASK_SERVER_SECRET_KEY=uuid.uuid4().hex),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", server, folder / "server.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_job_on_s3_rides_out_outages_and_resumes_after_one_it_cannot(
    tmp_path: Path, weed, s3_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MLflow credentials, for the job and this test's own client.
    mlflow_secrets = {
        "MLFLOW_TRACKING_USERNAME": "hyper-user-7f3a",
        "MLFLOW_TRACKING_PASSWORD": "pw-" + uuid.uuid4().hex,
    }
    for name, value in mlflow_secrets.items():
        monkeypatch.setenv(name, value)
    with mlflow_with_basic_auth(tmp_path / "mlflow", *mlflow_secrets.values()) as tracking_uri:
        with pytest.raises(urllib.error.HTTPError, match="401"):  # the server wants the credentials
            urllib.request.urlopen(f"{tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
        _outages_and_secrets(tmp_path, weed, s3_server, tracking_uri, mlflow_secrets)


def _outages_and_secrets(tmp_path: Path, weed, s3_server, tracking_uri: str, mlflow_secrets: dict[str, str]) -> None:
    from mlflow.tracking import MlflowClient

    s3 = s3_server.client(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1})
    bucket = s3_server.bucket
    prefix = f"s3job-{uuid.uuid4().hex[:8]}"
    job = tiny_job(tmp_path, "s3-e2e", max_steps=60, eval_every=20, checkpoint_every=20, keep_checkpoints=3)
    job["resources"]["max_failures"] = 1  # a restart after the retries ran out fails at once, not after another wait
    for split in ("train", "valid", "test"):  # the corpora live on S3 only
        key = f"{prefix}/corpus/{split}.txt"
        s3.put_object(Bucket=bucket, Key=key, Body=Path(job["data"][split]).read_bytes())
        os.remove(job["data"][split])
        job["data"][split] = f"s3://{bucket}/{key}"
    job["storage"] = f"s3://{bucket}/{prefix}/runs"
    job["storage_retry_s"] = RETRY_S
    job["tracking"]["uri"] = tracking_uri
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    run = f"{prefix}/runs/s3-e2e"
    run_uri = f"s3://{bucket}/{run}"
    env = {k: v for k, v in local_env().items() if not k.startswith("AWS_")} | s3_server.env() | mlflow_secrets
    endpoint = urlsplit(s3_server.endpoint)
    proxy = TcpProxy((endpoint.hostname, endpoint.port))
    env |= {"AWS_ENDPOINT_URL": proxy.endpoint, "AWS_ENDPOINT_URL_S3": proxy.endpoint}

    # 1-2: a 20 s outage at checkpoint 40, then one at checkpoint 60 that lasts until the job fails.
    log1 = tmp_path / "first.out"
    with log1.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "submit", str(job_file), "--num-cpus", "2"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        for step in (40, 60):  # hold checkpoint N's upload until N - 20 is registered, then the outage
            proxy.hold(f"/{bucket}/{run}/checkpoint_{step:08d}/".encode())
            wait_for(proxy.held.is_set, proc, log1, f"checkpoint {step}")
            before = f"checkpoint_{step - 20:08d}"
            wait_for(lambda: before in registered(s3, bucket, run), proc, log1, f"{before} registered")  # noqa: B023
            weed.stop()
            proxy.release()
            if step == 40:
                time.sleep(20)
                weed.restart()
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        proxy.release()
        weed.restart()
    first = log1.read_text()
    assert proc.returncode == 1, first[-6000:]
    # The ridden-out outage: each wait said, then the way on.
    at = re.escape(run_uri) + "(?:/checkpoint_00000040)?"
    waits = re.findall(rf"\[storage\] checkpoint 40: {at} unreachable \(.*retry in (\d+) s", first)
    assert {"1", "2"} <= set(waits), first[-6000:]  # every rank that meets it says so
    assert re.search(rf"\[storage\] {at} reachable again: checkpoint 40 continues", first), first[-6000:]
    assert "[ckpt]  step     40" in first
    # The outage it could not ride out: one line naming the storage and the budget, as the job's error.
    attempts = len(wait_delays(RETRY_S)) + 1
    gave_up = (
        f"checkpoint 60: storage {run_uri}/checkpoint_00000060 unreachable after {attempts} attempts over {RETRY_S} s; "
        "the previous checkpoint is kept"
    )
    assert f"[error] {gave_up}" in first, first[-6000:]
    client = MlflowClient(tracking_uri=job["tracking"]["uri"])
    [failed] = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert failed.info.status == "FAILED" and failed.data.tags["hyperctl.error"].startswith(gave_up)
    # Checkpoints 20 and 40 registered and intact; nothing of checkpoint 60 written.
    assert registered(s3, bucket, run) == ["checkpoint_00000020", "checkpoint_00000040"]
    for name in ("checkpoint_00000020", "checkpoint_00000040"):
        assert verify_on_s3(s3, bucket, run, name, tmp_path) == [], name
    assert not objects(s3, bucket, f"{run}/checkpoint_00000060/")

    # 3: the same command, the storage back: resumed from checkpoint 40, to the end.
    proc2 = hyperctl("submit", str(job_file), "--num-cpus", "2", cwd=tmp_path, env=env)
    proxy.close()
    output = proc2.stdout + proc2.stderr
    assert proc2.returncode == 0, output[-6000:]
    assert "[train] resumed at step 40" in output, output[-6000:]
    summary = json.loads(proc2.stdout[proc2.stdout.rindex("\n{") + 1 :])
    assert summary["status"] == "FINISHED" and summary["run_id"] == failed.info.run_id

    stored = objects(s3, bucket, f"{prefix}/runs/")
    # Prepared data (Parquet + vocabulary) cached on S3.
    datasets = [k for k in stored if k.startswith(f"{prefix}/runs/datasets/")]
    assert any(k.endswith("/train-00000.parquet") for k in datasets)
    assert any(k.endswith("/vocab.json") for k in datasets)
    # Every registered checkpoint complete and intact on S3; the latest loads and is at the final step.
    names = registered(s3, bucket, run)
    assert names == ["checkpoint_00000020", "checkpoint_00000040", "checkpoint_00000060"]
    for name in names:
        assert verify_on_s3(s3, bucket, run, name, tmp_path) == [], name
        for part in ("model.pt", "optimizer.pt", "meta.json", "rank_0.pt", "rank_1.pt"):
            assert stored.get(f"{run}/{name}/{part}", 0) > 0, f"{name}/{part} missing or empty on S3"
    meta = json.loads(s3.get_object(Bucket=bucket, Key=f"{run}/checkpoint_00000060/meta.json")["Body"].read())
    assert meta["step"] == 60 and meta["world_size"] == 2
    body = s3.get_object(Bucket=bucket, Key=f"{run}/checkpoint_00000060/model.pt")["Body"].read()
    state = torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)
    assert any(isinstance(v, torch.Tensor) and v.numel() > 0 for v in state.values())

    # The MLflow run id is kept beside the checkpoints, and names the one run, now FINISHED.
    run_id = s3.get_object(Bucket=bucket, Key=f"{run}/mlflow_run_id")["Body"].read().decode().strip()
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id] == [summary["run_id"]]
    assert runs[0].info.status == "FINISHED" and "hyperctl.error" not in runs[0].data.tags
    assert runs[0].data.params["storage"] == job["storage"]
    assert [m.step for m in client.get_metric_history(run_id, "valid_bpc")] == [20, 40, 60]

    # Issue 16, secrets: no credential in any output line, MLflow param, tag, metric key or artifact, or
    # any object the job wrote under its storage (checkpoints, prepared data, bookkeeping). The MLflow
    # user name is the runs' owner on that server (its user_id): only the password is secret there.
    secrets = [s3_server.secret_key, s3_server.access_key, mlflow_secrets["MLFLOW_TRACKING_PASSWORD"]]
    assert not [x for x in [*secrets, mlflow_secrets["MLFLOW_TRACKING_USERNAME"]] if x in first + output]
    blob = json.dumps([runs[0].data.params, runs[0].data.tags, list(runs[0].data.metrics), runs[0].info.run_name])
    assert not [x for x in secrets if x in blob]
    artifacts = tmp_path / "artifacts"
    client.download_artifacts(run_id, "", str(artifacts))
    from service.io import tracking

    model = tracking.download_model(job["tracking"]["uri"], f"runs:/{run_id}/model", str(tmp_path / "model"))
    files = [p for folder in (artifacts, Path(model)) for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "job.yaml" for p in files) and any(p.name == "job.json" for p in files)  # the MLflow model's
    for path in files:
        assert not [x for x in secrets if x.encode() in path.read_bytes()], path
    for key in stored:
        assert not [x for x in secrets if x.encode() in s3.get_object(Bucket=bucket, Key=key)["Body"].read()], key
