"""Jobs on a real Ray cluster through the Jobs API, driven by the real ``hyperctl`` and ``ray`` CLIs.

The module starts one single-node cluster (``ray start --head --block`` on 127.0.0.1, free ports,
its own ``--temp-dir`` and its own auth token file, 2 CPUs) and stops it afterwards, failures
included: SIGTERM to ``ray start --block``, then SIGKILL to whatever of its process tree is left.
Nothing here uses ``ray stop``, which would stop every Ray instance on the machine.

Four jobs (one worker of half a CPU each) are submitted at once from a shell holding AWS/MLflow
secrets and run side by side: a detached one that succeeds, a followed one that succeeds, a
followed one that diverges and a followed long one that is stopped. The first tests need no
cluster: what a submission carries, the cluster-side resource check, the tracking-URI fallback.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from service.driver.jobs_api import cluster_env, is_secret_name, submission_env, submit_to_cluster
from service.driver.preflight import check_cluster_resources, check_job
from service.io.tracking import tracking_uri_for
from service.spec.errors import JobSpecError
from service.spec.loading import validate_job

from helpers import ROOT, tiny_job

BIN = Path(sys.executable).parent
HYPERCTL, RAY = str(BIN / "hyperctl"), str(BIN / "ray")

# What the submitting shell holds in the cluster tests: each secret value must stay on this machine.
SUBMITTER_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIASUBMITTERKEYID00",
    "AWS_SECRET_ACCESS_KEY": "submitter-secret-" + secrets.token_hex(8),
    "AWS_SESSION_TOKEN": "submitter-session-" + secrets.token_hex(8),
    "MLFLOW_TRACKING_PASSWORD": "submitter-mlflow-pw-" + secrets.token_hex(4),
    "MLFLOW_TRACKING_TOKEN": "submitter-mlflow-token-" + secrets.token_hex(4),
    "MY_API_KEY": "submitter-api-key-" + secrets.token_hex(4),
}
SUBMITTER_SETTINGS = {"AWS_REGION": "xx-test-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}


def hermetic_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that points at a cluster, S3 or MLflow."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "MLFLOW_", "RAY_")) and k not in SUBMITTER_SECRETS
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def small_job(tmp: Path, name: str, **train: object) -> dict:
    """The e2e test's tiny job with one worker (one CPU): two fit side by side on the 2-CPU cluster."""
    job = tiny_job(
        tmp,
        name,
        **{"max_steps": 20, "log_every": 5, "eval_every": 10, "checkpoint_every": 10, "sample_length": 20, **train},
    )
    job["resources"] = {"workers": 1, "cpus_per_worker": 1, "max_failures": 0}
    return job


# ---- no cluster needed ----------------------------------------------------------------------------


def test_secrets_never_leave_with_a_submission() -> None:
    environ = {
        **SUBMITTER_SECRETS,
        **SUBMITTER_SETTINGS,
        "AWS_DEFAULT_REGION": "xx-test-2",
        "AWS_PROFILE": "dev",
        "AWS_CA_BUNDLE": "/laptop/ca.pem",
        "AWS_SHARED_CREDENTIALS_FILE": "/x",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "MLFLOW_TRACKING_USERNAME": "me",
        "AWS_ENDPOINT_URL_S3": "http://user:pw@minio:9000",
        "HOME": "/home/me",
    }
    assert cluster_env(environ) == {
        "AWS_REGION": "xx-test-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_DEFAULT_REGION": "xx-test-2",
    }
    env = submission_env("sub-1", environ)
    assert env["HYPERCTL_SUBMISSION_ID"] == "sub-1" and int(env["RAY_JOB_STOP_WAIT_TIME_S"]) > 3
    blob = json.dumps(env)
    assert not [v for v in [*SUBMITTER_SECRETS.values(), "user:pw"] if v in blob]
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
        "GITHUB_TOKEN",
        "DB_PASSWORD",
        "MY_API_KEY",
        "client_secret",
    ):
        assert is_secret_name(name), name
    assert not [n for n in ("AWS_REGION", "AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI") if is_secret_name(n)]


def test_job_with_credentials_in_a_uri_is_refused_before_submission(tmp_path: Path) -> None:
    spec = validate_job(
        {"name": "leaky", "train": {"max_steps": 1}, "tracking": {"uri": "http://alice:hunter2@mlflow:5000"}}
    )
    # No cluster listens on port 9: the refusal must come before any connection is tried.
    with pytest.raises(JobSpecError, match=r"carries credentials .*readable in the cluster's job list"):
        submit_to_cluster("http://127.0.0.1:9", str(tmp_path / "leaky.yaml"), [], spec)


def test_tracking_uri_null_falls_back_to_mlflow_tracking_uri(tmp_path: Path) -> None:
    spec = validate_job({"name": "t", "train": {"max_steps": 1}, "storage": str(tmp_path / "runs")})
    assert tracking_uri_for(spec, {}) == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert tracking_uri_for(spec, {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}) == "http://mlflow:5000"
    assert tracking_uri_for(spec, {"MLFLOW_TRACKING_URI": "  "}) == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    explicit = spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"uri": "http://other:5000"})})
    assert tracking_uri_for(explicit, {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}) == "http://other:5000"
    s3 = spec.model_copy(update={"storage": "s3://bucket/runs"})
    assert tracking_uri_for(s3, {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}) == "http://mlflow:5000"
    assert tracking_uri_for(s3, {}) == f"sqlite:///{Path.home() / '.hyperctl' / 'mlflow.db'}"


def test_cluster_resources_warn_unless_beyond_the_autoscalers_limits() -> None:
    gpu_job = validate_job(
        {
            "name": "g",
            "train": {"max_steps": 1},
            "data": {"batch_size": 4},
            "resources": {"workers": 4, "cpus_per_worker": 2, "gpus_per_worker": 1},
        }
    )
    # A CPU-only head, GPU nodes still to come: warnings only.
    warnings = check_cluster_resources(gpu_job, {"CPU": 4.0})
    assert len(warnings) == 2 and "4 x 1 = 4 GPUs, the cluster has 0 now" in warnings[1]
    assert "4 x 2 = 8 CPUs, the cluster has 4 now" in warnings[0] and "no autoscaler limits" in warnings[0]
    assert "autoscaler can add them" in check_cluster_resources(gpu_job, {"CPU": 8.0}, {"CPU": 32.0, "GPU": 4.0})[0]
    assert check_cluster_resources(gpu_job, {"CPU": 8.0, "GPU": 4.0}) == []
    with pytest.raises(
        JobSpecError,
        match=r"gpus_per_worker <= 2 GPUs, the most this cluster's autoscaler "
        r"can provide, found 4 x 1 = 4",
    ):
        check_cluster_resources(gpu_job, {"CPU": 8.0}, {"CPU": 32.0, "GPU": 2.0})
    with pytest.raises(JobSpecError, match=r"gpus_per_worker <= 0 GPUs"):
        check_cluster_resources(gpu_job, {"CPU": 8.0}, {"CPU": 32.0})  # no GPU group at all


def test_submit_to_a_cluster_skips_this_machines_resources(tmp_path: Path) -> None:
    """A GPU job far beyond this machine passes the preflight of `submit --address` (the failure is
    then the unreachable cluster, exit 2), while a local run rejects it before starting Ray."""
    (tmp_path / "job.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "big",
                "train": {"max_steps": 1},
                "storage": str(tmp_path / "runs"),
                "data": {"batch_size": 64},
                "resources": {"workers": 64, "cpus_per_worker": 8, "gpus_per_worker": 1},
            }
        )
    )
    env = hermetic_env(CUDA_VISIBLE_DEVICES="")
    remote = subprocess.run(
        [HYPERCTL, "submit", "--address", "http://127.0.0.1:9", "job.yaml", "--detach"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert remote.returncode == 2, remote.stderr
    assert "cannot use the Ray cluster at http://127.0.0.1:9" in remote.stderr and "resources" not in remote.stderr
    local = subprocess.run(
        [HYPERCTL, "submit", "job.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert local.returncode == 2, local.stderr
    assert "resources.gpus_per_worker: expected 0 on a machine without GPUs" in local.stderr
    assert "resources: expected workers x cpus_per_worker <= " in local.stderr
    with pytest.raises(JobSpecError, match="gpus_per_worker"):  # the library default stays strict
        check_job(
            validate_job(
                {
                    "name": "g",
                    "train": {"max_steps": 1},
                    "storage": str(tmp_path / "runs"),
                    "resources": {"gpus_per_worker": 1},
                }
            ),
            available_gpus=0,
        )


@pytest.mark.slow
def test_local_ray_gets_the_environment_without_showing_it(tmp_path: Path) -> None:
    """A local instance's workers inherit the driver's environment; nothing is passed in runtime_env,
    whose env_vars the local dashboard's job list would show."""
    secret = "local-secret-" + secrets.token_hex(8)
    script = """
import json, os, ray
from service.driver.local import init_ray
assert init_ray(num_cpus=1) is False
@ray.remote(num_cpus=0)
def seen():
    return os.environ.get("AWS_SECRET_ACCESS_KEY")
from ray.job_submission import JobSubmissionClient
jobs = JobSubmissionClient("http://" + ray._private.worker._global_node.webui_url).list_jobs()
print(json.dumps({"worker": ray.get(seen.remote()), "jobs": [j.model_dump(mode="json") for j in jobs]}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env=hermetic_env(AWS_SECRET_ACCESS_KEY=secret),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["worker"] == secret
    assert out["jobs"] and secret not in json.dumps(out["jobs"])
    assert all(not (j.get("runtime_env") or {}).get("env_vars") for j in out["jobs"])


# ---- a real cluster ------------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def process_tree(root: int) -> set[int]:
    """``root`` and its descendants, from /proc (Ray's job drivers run in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
            ppid = int(rest.rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


class Cluster:
    """A one-node Ray cluster of our own: free ports, own temp dir, own token, 2 CPUs."""

    def __init__(self, home: Path) -> None:
        # Ray puts Unix sockets under the temp dir: keep its path short.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="hyperctl-rc-", dir="/tmp"))
        self.token_file = home / "auth_token"
        self.token_file.write_text(secrets.token_hex(32))
        self.cluster_db = home / "cluster-mlflow.db"
        gcs, dash, client, agent, agent_grpc, rt_agent, metrics, node_mgr, obj_mgr = free_ports(9)
        self.address = f"http://127.0.0.1:{dash}"
        self.gcs_address = f"127.0.0.1:{gcs}"
        # The nodes' environment: their own MLflow server setting and credentials, as on KubeRay/AWS.
        self.node_env = hermetic_env(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_file),
            MLFLOW_TRACKING_URI=f"sqlite:///{self.cluster_db}",
            AWS_SECRET_ACCESS_KEY="cluster-side-secret",
        )
        self.cmd = [
            RAY,
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(gcs),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dash),
            "--ray-client-server-port",
            str(client),
            "--dashboard-agent-listen-port",
            str(agent),
            "--dashboard-agent-grpc-port",
            str(agent_grpc),
            "--runtime-env-agent-port",
            str(rt_agent),
            "--metrics-export-port",
            str(metrics),
            "--node-manager-port",
            str(node_mgr),
            "--object-manager-port",
            str(obj_mgr),
            "--num-cpus",
            "2",
            "--disable-usage-stats",
            "--temp-dir",
            str(self.temp_dir),
        ]
        self.log = home / "ray-start.log"
        self.proc: subprocess.Popen | None = None

    def client_env(self, **extra: str) -> dict[str, str]:
        """A submitting shell: the cluster's token file, but RAY_AUTH_MODE unset (hyperctl sets it)."""
        return hermetic_env(RAY_AUTH_TOKEN_PATH=str(self.token_file), **extra)

    def start(self, timeout: float = 120) -> None:
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                self.cmd, env=self.node_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", int(self.address.rsplit(":", 1)[1])), timeout=1):
                    pass
                probe = subprocess.run(
                    [HYPERCTL, "list", "--address", self.address],
                    env=self.client_env(),
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                if probe.returncode == 0:
                    return
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"no Jobs API at {self.address} after {timeout:.0f}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        tree = process_tree(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for pid in set(tree):  # what is left, and anything it started since
            if alive(pid):
                tree |= process_tree(pid)
        for pid in tree:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        subprocess.run(["rm", "-rf", str(self.temp_dir)], check=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def hyperctl(
    cluster: Cluster, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [HYPERCTL, *args], cwd=cwd, env=env or cluster.client_env(), capture_output=True, text=True, timeout=timeout
    )


def submitted_id(stdout: str) -> str:
    found = re.search(r"^submitted '[^']+' as (\S+) to ", stdout, re.MULTILINE)
    assert found, stdout
    return found.group(1)


def job_info(cluster: Cluster, submission_id: str) -> dict:
    """JobSubmissionClient.get_job_info, in a subprocess (Ray fixes its auth mode at import)."""
    script = (
        "import json, sys; from ray.job_submission import JobSubmissionClient; "
        "print(json.dumps(JobSubmissionClient(sys.argv[1]).get_job_info(sys.argv[2]).model_dump(mode='json')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, cluster.address, submission_id],
        env=cluster.client_env(RAY_AUTH_MODE="token"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def wait_for_status(cluster: Cluster, submission_id: str, cwd: Path, timeout: float = 240) -> str:
    deadline, status = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        proc = hyperctl(cluster, "status", submission_id, "--address", cluster.address, cwd=cwd)
        assert proc.returncode == 0, proc.stderr
        status = json.loads(proc.stdout)["status"]
        if status not in ("PENDING", "RUNNING"):
            return status
        time.sleep(3)
    return status


def mlflow_runs(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


class Jobs:
    """The module's four jobs, all submitted at once (half a CPU each, so all run side by side)."""

    def __init__(self, cluster: Cluster, folder: Path) -> None:
        self.cluster, self.folder = cluster, folder
        self.procs: dict[str, subprocess.Popen] = {}
        self.out = {name: folder / f"{name}.out" for name in ("followed", "diverging", "long")}
        # One sqlite store per job (two jobs creating one store's tables at once would race); the
        # followed job has tracking.uri null and so uses the nodes' MLFLOW_TRACKING_URI.
        self.uri = {name: f"sqlite:///{folder / name}.db" for name in ("detached", "diverging", "long")}
        self.uri["followed"] = f"sqlite:///{cluster.cluster_db}"
        for name, train in (
            ("detached", {}),
            ("followed", {}),
            ("diverging", {}),
            ("long", {"max_steps": 1_000_000, "eval_every": 1_000_000, "checkpoint_every": 500}),
        ):
            job = small_job(folder, name, **train)
            job["resources"]["cpus_per_worker"] = 0.5
            job["tracking"] = {"uri": None if name == "followed" else self.uri[name], "experiment": "cluster"}
            (folder / f"{name}.yaml").write_text(yaml.safe_dump(job))
        # The submitting shell holds secrets, and a tracking URI of its own that must not override the nodes'.
        self.laptop_db = folder / "laptop-mlflow.db"
        self.env = cluster.client_env(
            **SUBMITTER_SECRETS, **SUBMITTER_SETTINGS, MLFLOW_TRACKING_URI=f"sqlite:///{self.laptop_db}"
        )

    def submit(self) -> None:
        t0 = time.monotonic()
        self.detached = hyperctl(
            self.cluster,
            "submit",
            "--address",
            self.cluster.address,
            "detached.yaml",
            "--detach",
            cwd=self.folder,
            env=self.env,
        )
        self.detach_s = time.monotonic() - t0
        extra = {"diverging": ["--set", "train.optimizer.lr=1e30", "--set", "train.grad_clip=null"]}
        for name, out in self.out.items():
            with out.open("w") as f:
                self.procs[name] = subprocess.Popen(
                    [HYPERCTL, "submit", "--address", self.cluster.address, f"{name}.yaml", *extra.get(name, [])],
                    cwd=self.folder,
                    env=self.env,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                )

    def wait(self, name: str, timeout: float = 300) -> tuple[int, str]:
        """The exit code and output of a followed submission."""
        self.procs[name].wait(timeout=timeout)
        return self.procs[name].returncode, self.out[name].read_text()

    def kill(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()


@pytest.fixture(scope="module")
def jobs(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory):
    j = Jobs(cluster, tmp_path_factory.mktemp("jobs"))
    try:
        j.submit()
        yield j
    finally:
        j.kill()


@pytest.mark.slow
def test_stop_a_running_job(jobs: Jobs) -> None:
    cluster, cwd, out = jobs.cluster, jobs.folder, jobs.out["long"]
    deadline = time.monotonic() + 240
    while "[train] step " not in out.read_text() and time.monotonic() < deadline:
        assert jobs.procs["long"].poll() is None, out.read_text()[-3000:]
        time.sleep(1)
    sid = submitted_id(out.read_text())
    stop = hyperctl(cluster, "stop", sid, "--wait", "--address", cluster.address, cwd=cwd)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert stop.stdout.splitlines() == [f"{sid}: stop requested", f"{sid}: STOPPED"]

    # The followed submit of the stopped job ends with its status and exit 1.
    code, text = jobs.wait("long", timeout=60)
    assert code == 1 and text.rstrip().endswith(f"job {sid}: STOPPED"), text[-3000:]
    status = hyperctl(cluster, "status", sid, "--address", cluster.address, cwd=cwd)
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "STOPPED"
    again = hyperctl(cluster, "stop", sid, "--address", cluster.address, cwd=cwd)
    assert again.returncode == 0 and again.stdout.strip() == f"{sid}: not running (STOPPED)"
    follow = hyperctl(cluster, "logs", sid, "-f", "--address", cluster.address, cwd=cwd)
    assert follow.returncode == 1 and follow.stdout.rstrip().endswith(f"job {sid}: STOPPED")
    # The driver had time to end its MLflow run KILLED on SIGTERM, naming the step reached.
    [run] = mlflow_runs(jobs.uri["long"], "cluster")
    assert run.info.status == "KILLED" and run.data.tags["ray.submission_id"] == sid
    assert "interrupted" in run.data.tags["hyperctl.error"] and " at step " in run.data.tags["hyperctl.error"]


@pytest.mark.slow
def test_followed_diverging_job_fails(jobs: Jobs) -> None:
    code, text = jobs.wait("diverging")
    assert code == 1, text[-3000:]
    assert "NonFiniteLossError: non-finite loss or gradient at step" in text
    assert text.rstrip().endswith(f"job {submitted_id(text)}: FAILED"), text[-2000:]
    [run] = mlflow_runs(jobs.uri["diverging"], "cluster")
    assert run.info.status == "FAILED" and "non-finite" in run.data.tags["hyperctl.error"]
    assert run.data.tags["ray.submission_id"] == submitted_id(text)


@pytest.mark.slow
def test_detached_job_is_listed_reported_logged_and_tracked(jobs: Jobs) -> None:
    from mlflow.tracking import MlflowClient

    cluster, cwd, detached = jobs.cluster, jobs.folder, jobs.detached
    assert detached.returncode == 0, detached.stderr[-3000:]
    assert jobs.detach_s < 60, "--detach must not wait for the job"
    sid = submitted_id(detached.stdout)
    assert sid.startswith("hyperctl-detached-")

    # Visible to Ray's own CLI and to hyperctl.
    ray_list = subprocess.run(
        [RAY, "job", "list", "--address", cluster.address],
        cwd=cwd,
        env=cluster.client_env(RAY_AUTH_MODE="token"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ray_list.returncode == 0 and sid in ray_list.stdout, ray_list.stdout[-2000:] + ray_list.stderr[-2000:]
    listed = hyperctl(cluster, "list", "--address", cluster.address, cwd=cwd)
    assert listed.returncode == 0 and re.search(
        rf"^{re.escape(sid)}\s+(PENDING|RUNNING|SUCCEEDED)\s+python -m "
        rf"service run",
        listed.stdout,
        re.MULTILINE,
    ), listed.stdout

    # No secret of the submitting shell reached the cluster; its non-secret settings did.
    info = job_info(cluster, sid)
    blob = json.dumps(info)
    assert not [k for k, v in SUBMITTER_SECRETS.items() if v in blob], info["runtime_env"]
    env_vars = info["runtime_env"]["env_vars"]
    assert {k: env_vars.get(k) for k in SUBMITTER_SETTINGS} == SUBMITTER_SETTINGS
    assert env_vars["HYPERCTL_SUBMISSION_ID"] == sid and "MLFLOW_TRACKING_URI" not in env_vars
    assert not [k for k in env_vars if is_secret_name(k)], env_vars

    assert wait_for_status(cluster, sid, cwd) == "SUCCEEDED", hyperctl(
        cluster, "logs", sid, "--address", cluster.address, cwd=cwd
    ).stdout[-3000:]
    logs = hyperctl(cluster, "logs", sid, "--address", cluster.address, cwd=cwd)
    assert logs.returncode == 0
    for line in (
        "[train] starting: 20 steps, 1 worker(s)",
        "[train] step      5/20",
        "[train] step     20/20",
        "[eval]  step     10",
        "[ckpt]  step     20",
        "[done]  step 20",
        ": FINISHED",
    ):
        assert line in logs.stdout, f"{line!r} not in the job's logs:\n{logs.stdout[-3000:]}"
    assert not [v for v in SUBMITTER_SECRETS.values() if v in logs.stdout]
    follow = hyperctl(cluster, "logs", sid, "-f", "--address", cluster.address, cwd=cwd)
    assert follow.returncode == 0 and follow.stdout.rstrip().endswith(f"job {sid}: SUCCEEDED")

    # Its MLflow run: in the job's own store, FINISHED, tagged with the submission id.
    [run] = mlflow_runs(jobs.uri["detached"], "cluster")
    assert run.info.status == "FINISHED" and run.data.tags["ray.submission_id"] == sid
    assert run.data.tags["hyperctl.job"] == "detached" and run.data.tags.get("ray.job_id")
    client = MlflowClient(tracking_uri=jobs.uri["detached"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_bpc")] == [5, 10, 15, 20]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_bpc")] == [10, 20]
    assert {"final/test_bpc", "final/valid_bpc", "tokens_per_s"} <= set(run.data.metrics)
    assert not [v for v in SUBMITTER_SECRETS.values() if v in json.dumps([run.data.params, run.data.tags])]


@pytest.mark.slow
def test_followed_job_succeeds_tracked_where_the_nodes_say(jobs: Jobs) -> None:
    code, text = jobs.wait("followed")
    assert code == 0, text[-3000:]
    sid = submitted_id(text)
    assert "[train] step     20/20" in text and text.rstrip().endswith(f"job {sid}: SUCCEEDED"), text[-2000:]
    assert not [v for v in SUBMITTER_SECRETS.values() if v in text]
    # tracking.uri null: the nodes' MLFLOW_TRACKING_URI store, not the submitting shell's.
    [run] = mlflow_runs(jobs.uri["followed"], "cluster")
    assert run.info.status == "FINISHED" and run.data.tags["hyperctl.job"] == "followed"
    assert run.data.tags["ray.submission_id"] == sid
    assert not jobs.laptop_db.exists()


@pytest.mark.slow
def test_unknown_jobs_and_unreachable_clusters_exit_2(cluster: Cluster, tmp_path: Path) -> None:
    for args in (
        ["status", "hyperctl-nope"],
        ["logs", "hyperctl-nope"],
        ["logs", "-f", "hyperctl-nope"],
        ["stop", "hyperctl-nope"],
    ):
        proc = hyperctl(cluster, *args, "--address", cluster.address, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.strip() == (
            f"error: no job hyperctl-nope on the Ray cluster at {cluster.address}"
        ), proc.stderr
    proc = hyperctl(cluster, "list", "--address", "http://127.0.0.1:9", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot use the Ray cluster at http://127.0.0.1:9")


@pytest.mark.slow
def test_submit_joins_a_running_instance_for_a_warm_start(cluster: Cluster, tmp_path: Path) -> None:
    """`submit --address HOST:PORT` (a GCS address, not the Jobs API) runs here, on the running instance."""
    job = small_job(tmp_path, "warm", max_steps=4)
    job["tracking"] = {"uri": f"sqlite:///{tmp_path / 'warm.db'}", "experiment": "warm"}
    (tmp_path / "warm.yaml").write_text(yaml.safe_dump(job))
    proc = hyperctl(cluster, "submit", "warm.yaml", "--address", cluster.gcs_address, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"[ray]   joined the Ray cluster at {cluster.gcs_address} (2 CPUs" in proc.stdout
    assert "submitted" not in proc.stdout  # not through the Jobs API
    assert [r.info.status for r in mlflow_runs(job["tracking"]["uri"], "warm")] == ["FINISHED"]
