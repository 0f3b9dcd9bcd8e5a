"""The Ray Jobs API client: submit a job to a cluster, follow its logs, query and stop it.

A submitted job runs ``python -m service run ...`` on the cluster (this project as its
``working_dir``), where :func:`service.driver.local.run_job` runs it. Everything sent (entrypoint,
runtime_env, metadata) is readable by anyone who can list the cluster's jobs: only named,
non-secret settings go with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import uuid
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

from ..io.tracking import TAG_JOB, redact
from ..paths import PROJECT_ROOT
from ..spec.errors import JobSpecError
from ..spec.schema import JobSpec

# Environment sent to a cluster with a submitted job (runtime_env env_vars). Anyone who can list the
# cluster's jobs can read it, so only named, non-secret settings go: the S3 endpoint and region the
# local preflight used. Credentials come from the cluster's own nodes (Kubernetes Secret, instance
# profile, the environment `ray start` ran in); the tracking URI from the job or the nodes'
# MLFLOW_TRACKING_URI.
CLUSTER_ENV_NAMES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|KEY|CREDENTIAL", re.IGNORECASE)
# Seconds Ray's job supervisor waits after SIGTERM (`hyperctl stop`) before SIGKILL: time for the
# workers to checkpoint the step they reached (up to service.driver.local.PREEMPT_GRACE_S) and for the
# driver to end its MLflow run KILLED.
STOP_GRACE_S = 45
WORKING_DIR_EXCLUDES = [
    ".venv",
    ".git",
    "runs",
    "mlruns",
    "mlartifacts",
    "*.db",
    "**/__pycache__",
    "**/datasets",
    ".pytest_cache",
    "bench",
]


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def cluster_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The submitting shell's settings a cluster job may take: :data:`CLUSTER_ENV_NAMES` only, never a
    secret-looking name or a value carrying user-info (``scheme://user:pass@host``)."""
    environ = dict(os.environ if environ is None else environ)
    return {
        k: environ[k]
        for k in CLUSTER_ENV_NAMES
        if environ.get(k) and not is_secret_name(k) and redact(environ[k]) == environ[k]
    }


class ClusterError(RuntimeError):
    """The Ray cluster could not be reached, refused us, or does not know the job."""


def use_token_auth(environ: MutableMapping[str, str] | None = None) -> None:
    """Set RAY_AUTH_MODE=token when it is unset and a token is at hand (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token). Ray reads the mode once, when it is first imported:
    call this before anything imports ray."""
    env = os.environ if environ is None else environ
    if "RAY_AUTH_MODE" in env:
        return
    path = env.get("RAY_AUTH_TOKEN_PATH")
    if env.get("RAY_AUTH_TOKEN") or (Path(path).is_file() if path else (Path.home() / ".ray" / "auth_token").is_file()):
        env["RAY_AUTH_MODE"] = "token"


def job_client(address: str):
    """A JobSubmissionClient for the cluster's dashboard at ``address``, with token auth when a
    token is at hand; ClusterError when the cluster cannot be reached or refuses the token."""
    use_token_auth()
    from ray.job_submission import JobSubmissionClient  # deferred: Ray takes seconds to import

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
    path = Path(job_path).resolve()
    if path.is_relative_to(PROJECT_ROOT):
        sets = "".join(f" --set {shlex.quote(o)}" for o in overrides)
        return f"python -m service run {shlex.quote(str(path.relative_to(PROJECT_ROOT)))}{sets}"
    return f"python -m service run --spec-json {shlex.quote(json.dumps(spec.model_dump(mode='json')))}"


def submission_env(submission_id: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The env_vars of a submitted job: :func:`cluster_env` (no secrets), the submission id, and the
    time the driver gets after a stop to close its MLflow run."""
    return {
        **cluster_env(environ),
        "HYPERCTL_SUBMISSION_ID": submission_id,
        "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S),
    }


def submit_to_cluster(address: str, job_path: str, overrides: list[str], spec: JobSpec) -> str:
    """Submit the job to the cluster's Jobs API; returns the submission id.

    Everything sent (entrypoint, runtime_env, metadata) is readable by anyone who can list the
    cluster's jobs: no credentials go, and a job whose URIs carry user-info is refused.
    """
    entrypoint = entrypoint_for(job_path, overrides, spec)
    if redact(entrypoint) != entrypoint:
        raise JobSpecError(
            job_path,
            [
                "a URI in the job (or a --set) carries credentials (scheme://user:pass@host): "
                "they would be readable in the cluster's job list; give them to the "
                "cluster's nodes as environment variables instead"
            ],
        )
    submission_id = f"hyperctl-{spec.name}-{uuid.uuid4().hex[:8]}"
    client = job_client(address)
    return client.submit_job(
        entrypoint=entrypoint,
        submission_id=submission_id,
        runtime_env={
            "working_dir": str(PROJECT_ROOT),
            "excludes": WORKING_DIR_EXCLUDES,
            "env_vars": submission_env(submission_id),
        },
        metadata={TAG_JOB: spec.name},
    )


def follow_job(address: str, submission_id: str, out: TextIO | None = None) -> str:
    """Stream a job's logs until it ends; returns its final status (e.g. SUCCEEDED, FAILED, STOPPED)."""
    client = job_client(address)
    job_call(address, "get_job_status", submission_id)  # an unknown id as ClusterError

    async def tail() -> None:
        async for lines in client.tail_job_logs(submission_id):
            print(lines, end="", file=out, flush=True)

    asyncio.run(tail())
    return str(client.get_job_status(submission_id).value)


__all__ = [
    "CLUSTER_ENV_NAMES",
    "ClusterError",
    "STOP_GRACE_S",
    "cluster_env",
    "entrypoint_for",
    "follow_job",
    "is_secret_name",
    "job_call",
    "job_client",
    "submission_env",
    "submit_to_cluster",
    "use_token_auth",
]
