"""Data-parallel training across the nodes of a real multi-node Ray cluster (``hyperctl cluster``).

One module-wide cluster, started with the real ``hyperctl cluster up``: a head and one worker node,
each a separate ``ray start --block`` with ONE CPU, so that a job of two workers of one CPU each
must put one worker on each node; the cluster's own MLflow server (sqlite store, artifacts proxied
to S3) and S3 server (SeaweedFS). Everything is stopped by ``hyperctl cluster down`` afterwards
(and, should that fail, each recorded process group is SIGKILLed).

What is checked, from Ray's, MLflow's and the S3 server's own views rather than from our logs:

* the placement: the live ``RayTrainWorker`` actors sit on two different nodes (Ray's state API);
* DDP keeps the ranks in sync across nodes: a small ``TorchTrainer`` on the project's model, ranks
  started from different weights and fed different data, reports equal parameter digests after
  one optimizer step;
* a job submitted through the Jobs API writes its checkpoints and its MLflow artifacts to the S3
  bucket (listed with boto3);
* SIGKILLing the worker node's process group mid-run and adding a replacement node lets the job
  finish from its last checkpoint: resumed at a step > 0, one FINISHED MLflow run whose metric
  history has no gap and no repeat.

Every child process imports this checkout (PYTHONPATH is the repository root of this file).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from service.localcluster.cluster import is_running
from service.spec.loading import validate_job

from helpers import ROOT, tiny_job

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
HYPERCTL = str(BIN / "hyperctl")
MAX_STEPS, CKPT_EVERY, LOG_EVERY = 600, 100, 50


def base_env(**extra: str) -> dict[str, str]:
    """This environment without anything pointing at another cluster, S3 or MLflow; children import
    this checkout and find this venv's binaries first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def hyperctl(*args: str, env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([HYPERCTL, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


class LocalCluster:
    def __init__(self, folder: Path) -> None:
        self.folder, self.work = folder / "state", folder
        self.pids: set[int] = set()  # every process group ever recorded: killed at the end whatever happens

    @property
    def state(self) -> dict:
        state = json.loads((self.folder / "cluster.json").read_text())
        self.pids |= {n["pid"] for n in state["nodes"]} | {state[k]["pid"] for k in ("mlflow", "s3") if state[k]}
        return state

    def env(self, **extra: str) -> dict[str, str]:
        """A shell with the cluster's export lines (what `hyperctl cluster status` prints)."""
        return base_env(**self.state["env"], **extra)

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return hyperctl("cluster", *args, "--dir", str(self.folder), env=base_env(), cwd=self.work, timeout=timeout)

    def s3(self):
        import boto3

        e = self.state["s3"]["env"]
        return boto3.client(
            "s3",
            endpoint_url=e["AWS_ENDPOINT_URL"],
            aws_access_key_id=e["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=e["AWS_SECRET_ACCESS_KEY"],
            region_name=e["AWS_REGION"],
        )

    def keys(self, prefix: str) -> set[str]:
        bucket = self.state["s3"]["bucket"]
        return {
            o["Key"]
            for page in self.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])
        }

    def kill_leftovers(self) -> None:
        for pid in self.pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = LocalCluster(tmp_path_factory.mktemp("localcluster"))
    try:
        up = c.cli(
            "up",
            "--workers",
            "1",
            "--cpus-per-node",
            "1",
            "--head-cpus",
            "1",
            "--port",
            "0",
            "--dashboard-port",
            "0",
            "--mlflow-port",
            "0",
            "--s3-port",
            "0",
            "--bucket",
            "nodes",
        )
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        c.state  # noqa: B018 - records the pids
        yield c
    finally:
        if (c.folder / "cluster.json").exists():
            c.state  # noqa: B018 - nodes added meanwhile
            c.cli("down", timeout=120)
        c.kill_leftovers()


RAY_STATE = """
import json, sys, ray
from ray.util.state import list_actors, list_nodes
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
print(json.dumps({
    "nodes": [{"node_id": n.node_id, "state": n.state, "is_head": n.is_head_node, "resources": n.resources_total}
              for n in list_nodes()],
    "workers": [{"actor_id": a.actor_id, "node_id": a.node_id, "state": a.state, "pid": a.pid}
                for a in list_actors(filters=[("class_name", "=", "RayTrainWorker")], limit=1000)]}))
"""


def ray_state(cluster: LocalCluster) -> dict:
    """Nodes and Ray Train workers, from Ray's state API (a driver of its own: Ray fixes the auth
    mode when it is imported)."""
    proc = subprocess.run(
        [sys.executable, "-c", RAY_STATE, cluster.state["gcs_address"]],
        env=cluster.env(),
        cwd=cluster.work,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def node_ids(ray: dict) -> dict[str, str]:
    """Node name (head, w1, ...) -> Ray node id of the alive nodes, by the custom resource each carries."""
    found = {}
    for node in ray["nodes"]:
        if node["state"] == "ALIVE":
            [name] = [r.removeprefix("hyperctl_node_") for r in node["resources"] if r.startswith("hyperctl_node_")]
            found[name] = node["node_id"]
    return found


def node_processes(cluster: LocalCluster, node: str = "") -> list[str]:
    """Processes of ours whose environment says they belong to this cluster (to ``node`` if given):
    every node process inherits HYPERCTL_CLUSTER_NODE=<dir>:<node>."""
    marker = f"HYPERCTL_CLUSTER_NODE={cluster.folder}:{node + chr(0) if node else ''}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes():
                found.append(f"{environ.parent.name} {(environ.parent / 'cmdline').read_bytes()[:80]!r}")
        except OSError:
            pass
    return found


def test_up_starts_two_nodes_and_refuses_a_second_cluster(cluster: LocalCluster) -> None:
    state = cluster.state
    assert [(n["name"], n["cpus"]) for n in state["nodes"]] == [("head", 1), ("w1", 1)]
    status = cluster.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    for line in (
        f"export RAY_ADDRESS={state['dashboard_url']}",
        "export RAY_AUTH_MODE=token",
        f"export MLFLOW_TRACKING_URI={state['mlflow']['uri']}",
        f"export AWS_ENDPOINT_URL={state['s3']['endpoint']}",
        "export AWS_SECRET_ACCESS_KEY=",
    ):
        assert line in status.stdout, status.stdout
    env_lines = cluster.cli("status", "--env").stdout
    assert env_lines == (cluster.folder / "env.sh").read_text()
    assert (cluster.folder / "cluster.json").stat().st_mode & 0o077 == 0  # it holds the S3 keys

    # Ray's own view: two live nodes of one CPU each, told apart by their custom resource.
    nodes = [n for n in ray_state(cluster)["nodes"] if n["state"] == "ALIVE"]
    assert sorted((n["is_head"], n["resources"]["CPU"]) for n in nodes) == [(False, 1.0), (True, 1.0)]
    assert {"hyperctl_node_head", "hyperctl_node_w1"} <= {r for n in nodes for r in n["resources"]}

    again = cluster.cli("up", "--port", "0", "--dashboard-port", "0", "--mlflow-port", "0", "--s3-port", "0")
    assert again.returncode == 2 and "a cluster already runs from" in again.stderr, again.stderr
    other = hyperctl(
        "cluster",
        "up",
        "--dir",
        str(cluster.work / "other"),
        "--dashboard-port",
        str(state["dashboard_port"]),
        "--port",
        "0",
        env=base_env(),
        cwd=cluster.work,
    )
    assert other.returncode == 2, other.stdout + other.stderr
    assert f"port {state['dashboard_port']} on 127.0.0.1 is busy (--dashboard-port)" in other.stderr
    assert not (cluster.work / "other" / "cluster.json").exists()


DDP_CHECK = r"""
import hashlib, json, sys, tempfile
import ray, torch
import torch.nn.functional as F
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

VOCAB = 20

def loop(config):
    import ray.train
    from ray.train.torch import prepare_model
    from service.tasks.char_lm.model import build_model
    from service.spec.loading import validate_job

    def digest(tensors):
        h = hashlib.sha256()
        for t in tensors:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    rank = ray.train.get_context().get_world_rank()
    spec = validate_job(config["spec"])
    torch.manual_seed(1000 + rank)  # different initial weights on each rank: DDP must broadcast rank 0's
    model = build_model(spec, VOCAB)
    initial = digest(model.parameters())
    ddp = prepare_model(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(rank)  # different data on each rank: gradients must be averaged
    x = torch.randint(0, VOCAB, (spec.data.seq_len, 4), generator=g)
    y = torch.randint(0, VOCAB, (spec.data.seq_len, 4), generator=g)
    logits, _ = ddp(x, None)
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
    loss.backward()
    optimizer.step()
    with open(f"{config['out']}/rank_{rank}.json", "w") as f:  # one machine: a folder all nodes see
        json.dump({"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "initial": initial,
                   "loss": float(loss), "grads": digest(p.grad for p in model.parameters()),
                   "params": digest(model.parameters())}, f)

ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
spec, out = json.loads(sys.argv[2]), sys.argv[3]
trainer = TorchTrainer(loop, train_loop_config={"spec": spec, "out": out},
                       scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                       run_config=RunConfig(name="ddp-check", storage_path=tempfile.mkdtemp(dir=out)))
result = trainer.fit()
assert result.error is None, result.error
print("ddp-check done")
"""


def test_ddp_ranks_on_two_nodes_stay_in_sync(cluster: LocalCluster, tmp_path: Path) -> None:
    spec = validate_job(tiny_job(tmp_path, "ddp")).model_dump(mode="json")
    out = tmp_path / "ranks"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", DDP_CHECK, cluster.state["gcs_address"], json.dumps(spec), str(out)],
        env=cluster.env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0 and "ddp-check done" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [json.loads((out / f"rank_{r}.json").read_text()) for r in (0, 1)]
    ray = ray_state(cluster)
    ids = node_ids(ray)
    # One rank on each node (Ray's node ids, as each worker saw its own).
    assert {r["node_id"] for r in ranks} == {ids["head"], ids["w1"]}
    # Different starting weights and different data, yet after one step: the same gradients
    # (all-reduced) and the same parameters on both ranks.
    assert ranks[0]["initial"] != ranks[1]["initial"] and ranks[0]["loss"] != ranks[1]["loss"]
    assert ranks[0]["grads"] == ranks[1]["grads"]
    assert ranks[0]["params"] == ranks[1]["params"]
    # Ray's state API agrees: the run's two workers lived on the two nodes.
    workers = ray["workers"]
    assert len(workers) == 2 and {w["node_id"] for w in workers} == {ids["head"], ids["w1"]}


def test_job_survives_losing_its_worker_node(cluster: LocalCluster, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    state = cluster.state
    bucket, prefix = state["s3"]["bucket"], f"nodeloss-{uuid.uuid4().hex[:8]}"
    job = tiny_job(
        tmp_path,
        "nodeloss",
        max_steps=MAX_STEPS,
        checkpoint_every=CKPT_EVERY,
        log_every=LOG_EVERY,
        eval_every=500,
        sample_length=20,
    )
    job["storage"] = f"s3://{bucket}/{prefix}/runs"
    job["tracking"] = {"uri": None, "experiment": "nodes"}  # null: the nodes' MLFLOW_TRACKING_URI, the cluster's server
    job["resources"] = {"workers": 2, "cpus_per_worker": 1, "max_failures": 2}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    before = ray_state(cluster)
    known_workers = {w["actor_id"] for w in before["workers"]}  # of the DDP check
    ids_before = node_ids(before)

    log = tmp_path / "submit.out"
    with log.open("w") as out:
        submit = subprocess.Popen(
            [HYPERCTL, "submit", "--address", state["dashboard_url"], "job.yaml"],
            cwd=tmp_path,
            env=cluster.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # Wait until Ray has registered the first checkpoint on S3 (its checkpoint-manager snapshot names it).
        run = f"{prefix}/runs/nodeloss"
        first = f"checkpoint_{CKPT_EVERY:08d}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert submit.poll() is None, log.read_text()[-4000:]
            if f"{run}/checkpoint_manager_snapshot.json" in cluster.keys(run):
                body = cluster.s3().get_object(Bucket=bucket, Key=f"{run}/checkpoint_manager_snapshot.json")["Body"]
                if first in body.read().decode():
                    break
            time.sleep(0.3)
        else:
            pytest.fail(f"no first checkpoint on S3 after 300 s:\n{log.read_text()[-4000:]}")

        # Placement, from Ray's state API: the job's two live workers, one on each node.
        live = [
            w for w in ray_state(cluster)["workers"] if w["state"] == "ALIVE" and w["actor_id"] not in known_workers
        ]
        assert sorted(w["node_id"] for w in live) == sorted([ids_before["head"], ids_before["w1"]]), live

        # Lose the worker node: SIGKILL its process group (ray start, raylet, agents; the training
        # worker, in a group of its own, must follow its raylet).
        w1 = next(n for n in state["nodes"] if n["name"] == "w1")
        assert f"checkpoint_{MAX_STEPS:08d}" not in str(cluster.keys(run)), "the job ended before the node was lost"
        os.killpg(w1["pid"], signal.SIGKILL)
        added = cluster.cli("add-node", "--cpus", "1")
        assert added.returncode == 0, added.stdout + added.stderr
        assert "w2" in added.stdout
        cluster.state  # noqa: B018 - records the new node's pid for the clean-up
        gone = time.monotonic() + 30  # w1's processes outside the group (Ray workers) follow their raylet
        while node_processes(cluster, "w1") and time.monotonic() < gone:
            time.sleep(0.5)
        assert not node_processes(cluster, "w1"), node_processes(cluster, "w1")

        submit.wait(timeout=300)
    finally:
        if submit.poll() is None:
            submit.kill()
    text = log.read_text()
    assert submit.returncode == 0, text[-5000:]
    resumed = [int(s) for s in re.findall(r"^\[train\] resumed at step (\d+):", text, re.MULTILINE)]
    assert resumed and resumed[-1] > 0 and resumed[-1] % CKPT_EVERY == 0, text[-5000:]
    assert f"[train] step {MAX_STEPS:>6}/{MAX_STEPS}" in text and "FINISHED" in text

    # Ray's view afterwards: w1 dead, w2 alive, and the restarted workers on the head and w2.
    after = ray_state(cluster)
    ids_after = node_ids(after)
    assert "w1" not in ids_after and ids_after["head"] == ids_before["head"] and "w2" in ids_after
    assert {n["node_id"] for n in after["nodes"] if n["state"] == "DEAD"} >= {ids_before["w1"]}
    job_workers = [w for w in after["workers"] if w["actor_id"] not in known_workers]
    assert {w["node_id"] for w in job_workers} >= {ids_before["head"], ids_before["w1"], ids_after["w2"]}, job_workers

    # One MLflow run on the cluster's server, FINISHED, its history with no gap and no repeat.
    client = MlflowClient(tracking_uri=state["mlflow"]["uri"])
    [mlrun] = client.search_runs([client.get_experiment_by_name("nodes").experiment_id])
    assert mlrun.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(mlrun.info.run_id, "train_bpc")]
    assert steps == list(range(LOG_EVERY, MAX_STEPS + 1, LOG_EVERY)), steps

    # Checkpoints on S3 (the final one complete), and MLflow's artifacts in the same bucket.
    keys = cluster.keys(prefix)
    for part in ("model.pt", "optimizer.pt", "meta.json", "rank_0.pt", "rank_1.pt"):
        assert f"{run}/checkpoint_{MAX_STEPS:08d}/{part}" in keys, sorted(keys)[:50]
    assert f"{run}/mlflow_run_id" in keys
    artifacts = {
        k.split("/artifacts/", 1)[1] for k in cluster.keys("mlartifacts/") if f"/{mlrun.info.run_id}/artifacts/" in k
    }
    assert {"plots/learning_curve.png", "sample.txt"} <= artifacts, artifacts
    # the run's MLflow model (runs:/ID/model), in the same bucket
    from service.io import tracking

    model_id = tracking.run_model_uri(state["mlflow"]["uri"], mlrun.info.run_id).removeprefix("models:/")
    assert any(k.endswith(f"/models/{model_id}/artifacts/MLmodel") for k in cluster.keys("mlartifacts/"))


def test_down_stops_everything_and_is_idempotent(cluster: LocalCluster) -> None:
    state = cluster.state
    procs = [*state["nodes"], state["mlflow"], state["s3"]]
    down = cluster.cli("down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not [p["name"] if "name" in p else p["pid"] for p in procs if is_running(p)]
    leftovers = subprocess.run(["pgrep", "-f", state["ray_temp_root"]], capture_output=True, text=True).stdout.split()
    assert not leftovers and not node_processes(cluster), (leftovers, node_processes(cluster))
    assert not Path(state["ray_temp_root"]).exists() and not (cluster.folder / "cluster.json").exists()
    again = cluster.cli("down")
    assert again.returncode == 0 and "nothing to stop" in again.stdout
    status = cluster.cli("status")
    assert status.returncode == 1 and "no cluster in" in status.stderr
