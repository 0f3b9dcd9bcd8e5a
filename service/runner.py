"""Run a job on Ray (a local instance, or the cluster this process runs in as a Ray job).

:func:`run_job`: prepare the data, open the job's MLflow run, build a ``TorchTrainer`` and fit it,
printing progress; the run is closed FINISHED or FAILED. Relaunching the same job (same storage
and name) resumes from its latest checkpoint in the same MLflow run.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO


from . import storage, tasks
from .spec import JobSpec
from .worker import FAILURE_FILE, NonFiniteLossError, run_dir

# Environment sent to a cluster with a submitted job (runtime_env env_vars). Anyone who can list the
# cluster's jobs can read it, so only named, non-secret settings go: the S3 endpoint and region the
# local preflight used. Credentials come from the cluster's own nodes (Kubernetes Secret, instance
# profile, the environment `ray start` ran in); the tracking URI from the job or the nodes'
# MLFLOW_TRACKING_URI.
CLUSTER_ENV_NAMES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|KEY|CREDENTIAL", re.IGNORECASE)
# Seconds Ray's job supervisor waits after SIGTERM (`hyperctl stop`) before SIGKILL: time for the
# driver to mark its MLflow run FAILED.
STOP_GRACE_S = 15
PROCESS_GROUP_TIMEOUT_S = 6 * 3600  # rank 0 evaluates whole splits while the others wait


@dataclass
class RunOutcome:
    run_id: str
    tracking_uri: str
    run_path: str
    ok: bool
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def cluster_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The submitting shell's settings a cluster job may take: :data:`CLUSTER_ENV_NAMES` only, never a
    secret-looking name or a value carrying user-info (``scheme://user:pass@host``)."""
    from .tracking import redact

    environ = dict(os.environ if environ is None else environ)
    return {k: environ[k] for k in CLUSTER_ENV_NAMES
            if environ.get(k) and not is_secret_name(k) and redact(environ[k]) == environ[k]}


def absolute_storage(spec: JobSpec) -> JobSpec:
    """Local storage as an absolute path: Ray workers run in other working directories."""
    if storage.is_s3(spec.storage):
        return spec
    return spec.model_copy(update={"storage": str(Path(spec.storage).expanduser().resolve())})


def _quiet_ray_logs() -> None:
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING", "0")
    for name in ("ray", "ray.train", "ray.data", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)


def init_ray(address: str | None = None, num_cpus: float | None = None, verbose: bool = False) -> bool:
    """Connect to ``address`` (or RAY_ADDRESS) if given, else start a new local Ray instance.

    Returns True when connected to an existing cluster. A local instance's processes inherit this
    process's environment (AWS_*, MLFLOW_*, ...), so nothing is passed through ``runtime_env``: its
    env_vars would be shown to anyone who can read the local dashboard's job list.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return bool(address)
    _quiet_ray_logs()
    common = dict(logging_level=logging.INFO if verbose else logging.WARNING, log_to_driver=verbose,
                  configure_logging=True)
    if address:
        # In-cluster (a Ray job's entrypoint): the job's runtime_env already carries the env vars.
        ray.init(address=address, **common)
    else:
        # "local": a new instance even when a `ray start` cluster on this machine is recorded in
        # /tmp/ray/ray_current_cluster. The dashboard stays on: Ray Train's state API needs it.
        # Its processes must know its address: Ray Train's placement-group cleaner finds the
        # instance through the state API, which fails ("multiple active Ray instances") when another
        # Ray runs on this machine (a second local job, a campaign beside a job); the trial's CPUs
        # then stay reserved and the next trials wait forever. So the GCS port is chosen here and
        # RAY_ADDRESS names it in the environment the instance's processes inherit, for its start only.
        import ray.util

        port = _free_port()
        with _environ(RAY_GCS_SERVER_PORT=str(port), RAY_ADDRESS=f"{ray.util.get_node_ip_address()}:{port}"):
            ray.init(address="local", num_cpus=num_cpus, **common)
    _interrupt_on_sigterm()
    return bool(address)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _environ(**values: str):
    """``os.environ`` with ``values`` set inside the block, restored after it."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _interrupt_on_sigterm() -> None:
    """SIGTERM (`hyperctl stop`, `ray job stop`) as KeyboardInterrupt, so :func:`run_job` marks the
    MLflow run FAILED before exiting. ray.init installs a handler that calls sys.exit instead."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def _delete(uri: str) -> None:
    if storage.exists(uri):
        fs, path = storage.filesystem_for(uri)
        fs.delete_file(path)


def build_trainer(spec: JobSpec, data_root: str, uri: str, run_id: str, *, progress: Any = None,
                  callbacks: list[Any] | None = None, report_evals: bool = False, verbose: bool = False):
    """The ``TorchTrainer`` of one job (a plain job's, or a campaign trial's with Train-to-Tune
    ``callbacks`` and every eval reported): the task's worker loop on ``resources.workers`` ranks,
    checkpoints under ``<storage>/<name>``, ``resources.max_failures`` restarts."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.train.v2.api.config import LoggingConfig

    r = spec.resources
    resources: dict[str, float] = {"CPU": r.cpus_per_worker}
    if r.gpus_per_worker:
        resources["GPU"] = r.gpus_per_worker
    storage_path, filesystem = storage.storage_options_for_ray(spec.storage)
    return TorchTrainer(
        tasks.train_loop(spec),
        train_loop_config={"spec": spec.model_dump(mode="json"), "data_root": data_root, "tracking_uri": uri,
                           "run_id": run_id, "progress": progress, "report_evals": report_evals},
        torch_config=TorchConfig(backend="nccl" if r.gpus_per_worker else "gloo", timeout_s=PROCESS_GROUP_TIMEOUT_S),
        scaling_config=ScalingConfig(num_workers=r.workers, use_gpu=r.gpus_per_worker > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=spec.name, storage_path=storage_path, storage_filesystem=filesystem,
                             failure_config=FailureConfig(max_failures=r.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=spec.train.keep_checkpoints),
                             callbacks=callbacks or [],
                             logging_config=LoggingConfig(log_level="INFO" if verbose else "WARNING")),
    )


def run_job(spec: JobSpec, *, address: str | None = None, num_cpus: float | None = None, verbose: bool = False,
            out: TextIO = sys.stdout) -> RunOutcome:
    """Run ``spec`` to completion (or failure) on Ray; returns the outcome (never raises for a failed job)."""
    import ray
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from . import preflight, tracking
    from .progress import QueuePrinter

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    spec = absolute_storage(spec)
    on_cluster = init_ray(address, num_cpus, verbose)
    cluster = ray.cluster_resources()
    if on_cluster:  # nodes may still be added by the autoscaler: a shortfall is only a warning
        preflight.check_job(spec, check_resources=False)
        for warning in preflight.check_cluster_resources(spec, cluster, preflight.cluster_max_resources()):
            say(f"[warn]  {warning}")
    else:
        preflight.check_job(spec, available_cpus=cluster.get("CPU", 0.0), available_gpus=cluster.get("GPU", 0.0))

    say(f"[data]  preparing {tasks.source_name(spec)} ...")
    prepared = tasks.prepare(spec, storage.join(spec.storage, "datasets"))
    say(f"[data]  {prepared.root} ({prepared.summary()})")

    uri = tracking.tracking_uri_for(spec)
    tags = {"ray.job_id": ray.get_runtime_context().get_job_id()}
    if os.environ.get("HYPERCTL_SUBMISSION_ID"):
        tags["ray.submission_id"] = os.environ["HYPERCTL_SUBMISSION_ID"]
    run_id, resumed = tracking.open_run(spec, uri, tags)
    tracking.log_job_files(uri, run_id, spec, prepared.root, prepared.manifest)
    failure_file = storage.join(run_dir(spec), FAILURE_FILE)
    _delete(failure_file)
    say(f"[mlflow] run {run_id} ({'resumed' if resumed else 'new'}) in {tracking.redact(uri)}, "
        f"experiment {spec.tracking.experiment!r}")

    # On the driver's node: a queue on a worker node would go (and the progress lines with it) when
    # that node is lost, while the job itself continues from its checkpoint.
    queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=False)})
    trainer = build_trainer(spec, prepared.root, uri, run_id, progress=queue, verbose=verbose)
    error: str | None = None
    try:
        with QueuePrinter(queue, out):
            result = trainer.fit()
        if result.error:
            raise result.error
        if storage.exists(failure_file):
            info = json.loads(storage.read_bytes(failure_file))
            raise NonFiniteLossError(int(info["step"]), info["error"])
    except KeyboardInterrupt:
        error = "interrupted (KeyboardInterrupt)"
        tracking.close_run(uri, run_id, error)
        raise
    except Exception as e:  # noqa: BLE001 - any training failure ends the run as FAILED
        error = f"{type(e).__name__}: {e}"
    finally:
        try:
            ray.kill(queue.actor)
        except Exception:
            pass
    tracking.close_run(uri, run_id, error)
    outcome = RunOutcome(run_id=run_id, tracking_uri=uri, run_path=run_dir(spec), ok=error is None, error=error,
                         metrics=tracking.describe_run(uri, run_id)["metrics"])
    say(f"[mlflow] run {run_id}: {'FINISHED' if outcome.ok else 'FAILED'} (tracking URI {tracking.redact(uri)})")
    if error:
        say(f"[error] {error.strip().splitlines()[0] if error.strip() else error}")
    return outcome


# ---- Ray cluster (Jobs API) -------------------------------------------------------------------

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WORKING_DIR_EXCLUDES = [".venv", ".git", "runs", "mlruns", "mlartifacts", "*.db", "**/__pycache__",
                        "**/datasets", ".pytest_cache", "bench"]


class ClusterError(RuntimeError):
    """The Ray cluster could not be reached, refused us, or does not know the job."""


def use_token_auth(environ: dict[str, str] | None = None) -> None:
    """Set RAY_AUTH_MODE=token when it is unset and a token is at hand (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token). Ray reads the mode once, when it is first imported:
    call this before anything imports ray."""
    environ = os.environ if environ is None else environ
    if "RAY_AUTH_MODE" in environ:
        return
    path = environ.get("RAY_AUTH_TOKEN_PATH")
    if environ.get("RAY_AUTH_TOKEN") or (Path(path).is_file() if path else
                                         (Path.home() / ".ray" / "auth_token").is_file()):
        environ["RAY_AUTH_MODE"] = "token"


def job_client(address: str):
    """A JobSubmissionClient for the cluster's dashboard at ``address``, with token auth when a
    token is at hand; ClusterError when the cluster cannot be reached or refuses the token."""
    use_token_auth()
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - ConnectionError, AuthenticationError, version errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClusterError(f"cannot use the Ray cluster at {address}: {first}") from None


def job_call(address: str, method: str, *args: Any) -> Any:
    """``job_client(address).<method>(*args)``, an unknown submission id as ClusterError."""
    client = job_client(address)
    try:
        return getattr(client, method)(*args)
    except RuntimeError as e:
        if "does not exist" in str(e) or "404" in str(e):
            raise ClusterError(f"no job {args[0] if args else ''} on the Ray cluster at {address}") from None
        raise


def entrypoint_for(job_path: str, overrides: list[str], spec: JobSpec) -> str:
    """``python -m service run ...`` for the cluster: the job file by its path inside the project,
    or the resolved spec inline when the file lives elsewhere."""
    import shlex

    path = Path(job_path).resolve()
    if path.is_relative_to(PROJECT_ROOT):
        sets = "".join(f" --set {shlex.quote(o)}" for o in overrides)
        return f"python -m service run {shlex.quote(str(path.relative_to(PROJECT_ROOT)))}{sets}"
    return f"python -m service run --spec-json {shlex.quote(json.dumps(spec.model_dump(mode='json')))}"


def submission_env(submission_id: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The env_vars of a submitted job: :func:`cluster_env` (no secrets), the submission id, and the
    time the driver gets after a stop to close its MLflow run."""
    return {**cluster_env(environ), "HYPERCTL_SUBMISSION_ID": submission_id,
            "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S)}


def submit_to_cluster(address: str, job_path: str, overrides: list[str], spec: JobSpec) -> str:
    """Submit the job to the cluster's Jobs API; returns the submission id.

    Everything sent (entrypoint, runtime_env, metadata) is readable by anyone who can list the
    cluster's jobs: no credentials go, and a job whose URIs carry user-info is refused.
    """
    import uuid

    from .spec import JobSpecError
    from .tracking import redact

    entrypoint = entrypoint_for(job_path, overrides, spec)
    if redact(entrypoint) != entrypoint:
        raise JobSpecError(job_path, ["a URI in the job (or a --set) carries credentials (scheme://user:pass@host): "
                                      "they would be readable in the cluster's job list; give them to the "
                                      "cluster's nodes as environment variables instead"])
    submission_id = f"hyperctl-{spec.name}-{uuid.uuid4().hex[:8]}"
    client = job_client(address)
    return client.submit_job(
        entrypoint=entrypoint, submission_id=submission_id,
        runtime_env={"working_dir": str(PROJECT_ROOT), "excludes": WORKING_DIR_EXCLUDES,
                     "env_vars": submission_env(submission_id)},
        metadata={"hyperctl.job": spec.name})


def follow_job(address: str, submission_id: str, out: TextIO = sys.stdout) -> str:
    """Stream a job's logs until it ends; returns its final status (e.g. SUCCEEDED, FAILED, STOPPED)."""
    import asyncio

    client = job_client(address)
    job_call(address, "get_job_status", submission_id)  # an unknown id as ClusterError

    async def tail() -> None:
        async for lines in client.tail_job_logs(submission_id):
            print(lines, end="", file=out, flush=True)

    asyncio.run(tail())
    return str(client.get_job_status(submission_id).value)


def list_runs(uri: str) -> list[dict[str, Any]]:
    """The runs of every experiment in a tracking store, newest first."""
    from mlflow.tracking import MlflowClient

    from .spec import TASK_METRICS
    from .tracking import TAG_JOB, TAG_TASK

    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    rows = []
    for run in client.search_runs(experiments, order_by=["attributes.start_time DESC"], max_results=200):
        m = run.data.metrics
        task = run.data.tags.get(TAG_TASK, "char_lm")
        valid = TASK_METRICS.get(task, TASK_METRICS["char_lm"])[0]   # valid_bpc, valid_error, valid_bleu
        test, train = "test" + valid.removeprefix("valid"), TASK_METRICS.get(task, ("", "", "train_bpc"))[-1]
        steps = [h.step for h in client.get_metric_history(run.info.run_id, train)] if train in m else []
        rows.append({"run_id": run.info.run_id, "status": run.info.status, "task": task,
                     "job": run.data.tags.get(TAG_JOB, run.info.run_name or ""), "step": max(steps, default=0),
                     "metric": valid.removeprefix("valid_"), "valid": m.get(f"final_{valid}", m.get(valid)),
                     "test": m.get(test)})
    return rows


__all__ = ["ClusterError", "RunOutcome", "absolute_storage", "cluster_env", "entrypoint_for", "follow_job",
           "init_ray", "is_secret_name", "job_call", "job_client", "list_runs", "run_job", "submission_env",
           "submit_to_cluster", "use_token_auth"]
