"""Running a job on Ray: a new local instance, or the cluster this process runs in as a Ray job.

:func:`start` is the start-up every run shares (jobs and campaigns): storage made absolute,
preflight (once, before Ray starts where it can), Ray started or joined, the data prepared and
checked for what the workers rely on (:func:`prepare`). :func:`run_job` then opens the job's MLflow
run, builds a ``TorchTrainer`` (:func:`build_trainer`, also used by campaign trials) and fits it,
printing progress; the run is closed FINISHED, FAILED (with the worker's own exception, see
:mod:`service.worker.failure`) or, when stopped, KILLED with the step reached. SIGTERM while it
trains is a preemption (:mod:`service.worker.preemption`): the workers finish their step and
write a checkpoint at it, and the run ends KILLED with the tag ``hyperctl.preempted_at_step``.
Relaunching the same job (same storage and name) resumes from its latest checkpoint in the same
MLflow run.

Ray is imported inside the functions that start it: importing it takes seconds, and the CLI's
quick commands never need it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from ..io import storage, text, tracking
from ..paths import run_dir
from ..spec.errors import JobSpecError
from ..spec.schema import JobSpec
from ..tasks import Prepared, Task, task_of
from ..worker import failure, preemption
from . import preflight
from .progress import QueuePrinter

PROCESS_GROUP_TIMEOUT_S = 6 * 3600  # rank 0 evaluates whole splits while the others wait
# After SIGTERM, how long the driver waits for the workers to finish their step and checkpoint it
# before it stops at once (the run then ends KILLED at its last checkpoint).
PREEMPT_GRACE_S = 30.0


@dataclass
class RunOutcome:
    run_id: str
    tracking_uri: str
    run_path: str
    ok: bool
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    experiment_id: str = ""
    artifact_uri: str = ""
    registered_model: str = ""  # models:/NAME/VERSION when the run registered its model
    preempted_at_step: int | None = None  # SIGTERM: the step of the checkpoint a relaunch resumes from


def absolute_storage(spec: JobSpec) -> JobSpec:
    """Local storage as an absolute path: Ray workers run in other working directories."""
    if storage.is_s3(spec.storage):
        return spec
    return spec.model_copy(update={"storage": str(Path(spec.storage).expanduser().resolve())})


def _quiet_ray_logs(verbose: bool = False) -> None:
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING", "0")
    for name in ("ray", "ray.train", "ray.data", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # A local instance turns token auth on by itself and says so on every start: nothing for the user to
    # do (it is on, as it should be), so only --verbose shows it.
    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    auth.setLevel(logging.WARNING if verbose else logging.ERROR)


# Ray's start-up failures seen on busy machines, as one line each with what to do (exit 2, no traceback).
_RAY_START_HINTS = (
    (
        "timed out during startup",
        "the local Ray instance did not start in time (the machine is busy or short of memory): retry when it "
        "is quieter, or start one once with `ray start --head` and pass --address (or set RAY_ADDRESS)",
    ),
    (
        "address already in use",
        "a port the local Ray instance needs is taken by another process: retry (ports are chosen anew each time)",
    ),
)


def _ray_start_error(e: Exception, address: str | None) -> Exception:
    """``e`` as the one-line error the CLI prints for a known start-up failure, else ``e`` itself."""
    from .jobs_api import ClusterError

    text = str(e).lower()
    for needle, hint in _RAY_START_HINTS:
        if needle in text:
            return ClusterError(f"Ray: {hint} ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})")
    if isinstance(e, ConnectionError) and address:
        return ClusterError(
            f"Ray: no cluster answers at {address} ({str(e).strip()[:200]}); check the address, or leave "
            "--address and RAY_ADDRESS unset to run on a new local instance"
        )
    return e


def cluster_address(address: str | None = None) -> str | None:
    """The Ray cluster to join: ``address``, else RAY_ADDRESS; None for a new local instance."""
    return address or os.environ.get("RAY_ADDRESS") or None


def init_ray(address: str | None = None, num_cpus: int | None = None, verbose: bool = False) -> bool:
    """Connect to ``address`` (or RAY_ADDRESS) if given, else start a new local Ray instance.

    Returns True when connected to an existing cluster. A local instance's processes inherit this
    process's environment (AWS_*, MLFLOW_*, ...), so nothing is passed through ``runtime_env``: its
    env_vars would be shown to anyone who can read the local dashboard's job list.
    """
    import ray  # deferred: see the module's docstring

    address = cluster_address(address)
    if ray.is_initialized():
        return bool(address)
    _quiet_ray_logs(verbose)
    common: dict[str, Any] = dict(
        logging_level=logging.INFO if verbose else logging.WARNING, log_to_driver=verbose, configure_logging=True
    )
    try:
        _start_or_join(address, num_cpus, common)
    except Exception as e:  # noqa: BLE001 - known failures become one line; the rest propagate as they are
        raise _ray_start_error(e, address) from e
    _interrupt_on_sigterm()
    return bool(address)


def _start_or_join(address: str | None, num_cpus: int | None, common: dict[str, Any]) -> None:
    import ray

    if address:
        # A Ray job's entrypoint (its runtime_env already carries the env vars), or `submit --address` of a
        # running instance's GCS address or "auto" (a warm start; see start() for its token).
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
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
    MLflow run KILLED before exiting. ray.init installs a handler that calls sys.exit instead."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


class _PreemptOnSigterm:
    """While the job trains: the first SIGTERM asks the workers to finish their step and checkpoint
    it (:func:`service.worker.preemption.write_request`) and training goes on to that checkpoint; a
    second SIGTERM, or the workers not done within ``grace_s``, interrupts at once (as before)."""

    def __init__(self, run_folder: str, say: Callable[[str], None], grace_s: float) -> None:
        self.run_folder, self.say, self.grace_s = run_folder, say, grace_s
        self.requested_at: float | None = None
        self._timer: threading.Timer | None = None
        self._previous: Any = None

    def __enter__(self) -> _PreemptOnSigterm:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.requested_at is not None:
            waited = time.monotonic() - self.requested_at
            raise KeyboardInterrupt(f"signal {signum} again after {waited:.0f} s")
        self.requested_at = time.monotonic()
        try:
            preemption.write_request(self.run_folder, "SIGTERM to the driver")
        except Exception as e:  # noqa: BLE001 - the request cannot reach the workers: stop at once
            raise KeyboardInterrupt(f"signal {signum}; the workers could not be asked to checkpoint: {e}") from None
        self.say(
            f"[stop]  SIGTERM: the workers finish their step and write a checkpoint at it (up to "
            f"{self.grace_s:.0f} s; a second SIGTERM stops at once)"
        )
        self._timer = threading.Timer(self.grace_s, lambda: os.kill(os.getpid(), signal.SIGTERM))
        self._timer.daemon = True
        self._timer.start()


@dataclass
class Started:
    """What :func:`start` hands a run: the spec (storage absolute), its task, the prepared data,
    the tracking URI and the Ray cluster's resources."""

    spec: JobSpec
    task: Task[Any]
    prepared: Prepared
    tracking_uri: str
    cluster: dict[str, float]
    on_cluster: bool


def start(
    spec: JobSpec,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    verbose: bool = False,
    say: Callable[[str], None] = print,
) -> Started:
    """The start-up of every run (a job or a campaign): preflight, Ray, data.

    On a new local instance preflight checks files, storage, tracking and resources before Ray
    starts (``num_cpus``, else the CPUs Ray will find); in a cluster it checks all but resources first,
    then the cluster's resources once joined (a shortfall is a warning: its autoscaler may add
    nodes). Raises JobSpecError before anything is started or written.
    """
    import ray  # deferred: see the module's docstring

    on_cluster = cluster_address(address) is not None
    spec = absolute_storage(spec)
    if on_cluster:  # the cluster's resources are checked once joined, below
        preflight.check_job(spec, check_resources=False)
    else:
        cpus = num_cpus if num_cpus is not None else preflight.local_ray_cpus()
        preflight.check_job(spec, available_cpus=cpus)
    init_ray(address, num_cpus, verbose)
    cluster = ray.cluster_resources()
    where = f"joined the Ray cluster at {cluster_address(address)}" if on_cluster else "started a local Ray instance"
    say(f"[ray]   {where} ({cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs)")
    if on_cluster:
        for warning in preflight.check_cluster_resources(spec, cluster, preflight.cluster_max_resources()):
            say(f"[warn]  {warning}")
    task = task_of(spec)
    say(f"[data]  preparing {task.source_name(spec)} ...")
    prepared = prepare(spec, task, say)
    say(f"[data]  {prepared.root} ({prepared.summary()})")
    return Started(spec, task, prepared, tracking.tracking_uri_for(spec), cluster, on_cluster)


def prepare(spec: JobSpec, task: Task[Any], say: Callable[[str], None] = print) -> Prepared:
    """The task's prepared data, its readers' notes said (a stripped byte-order mark), and checked
    for what the workers rely on (:attr:`Task.check_prepared`): JobSpecError naming the field,
    before any MLflow run exists."""
    with text.collect_notes() as notes:
        prepared = task.prepare(spec, storage.join(spec.storage, "datasets"))
    for line in notes:
        say(f"[data]  note: {line}")
    problems = task.check_prepared(spec, prepared)
    if problems:
        raise JobSpecError(f"job {spec.name!r}", problems)
    return prepared


def build_trainer(
    spec: JobSpec,
    data_root: str,
    uri: str,
    run_id: str,
    *,
    progress: Any = None,
    callbacks: list[Any] | None = None,
    report_evals: bool = False,
    verbose: bool = False,
) -> Any:
    """The ``TorchTrainer`` of one job (a plain job's, or a campaign trial's with Train-to-Tune
    ``callbacks`` and every eval reported): the task's worker loop on ``resources.workers`` ranks,
    checkpoints under ``<storage>/<name>``, ``resources.max_failures`` restarts."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.train.v2.api.config import LoggingConfig

    from ..worker.worker import CHECKPOINT_SCORE  # deferred: torch

    r = spec.resources
    resources: dict[str, float] = {"CPU": r.cpus_per_worker}
    if r.gpus_per_worker:
        resources["GPU"] = r.gpus_per_worker
    storage_path, filesystem = storage.storage_options_for_ray(spec.storage)
    metrics = task_of(spec).metrics
    mode = metrics.mode(metrics.valid)
    # With early stopping the best checkpoint by the validation metric is kept (Ray keeps the latest too).
    kept = (
        CheckpointConfig(
            num_to_keep=spec.train.keep_checkpoints,
            checkpoint_score_attribute=CHECKPOINT_SCORE,
            checkpoint_score_order=mode,
        )
        if spec.train.early_stopping
        else CheckpointConfig(num_to_keep=spec.train.keep_checkpoints)
    )
    return TorchTrainer(
        # The task's loop; a deterministic error is recorded, not retried.
        functools.partial(failure.run_task_loop, task_of(spec).train_loop),
        train_loop_config={
            "spec": spec.model_dump(mode="json"),
            "data_root": data_root,
            "tracking_uri": uri,
            "run_id": run_id,
            "progress": progress,
            "report_evals": report_evals,
            "valid_metric": metrics.valid,
            "valid_mode": mode,
        },
        torch_config=TorchConfig(backend="nccl" if r.gpus_per_worker else "gloo", timeout_s=PROCESS_GROUP_TIMEOUT_S),
        scaling_config=ScalingConfig(
            num_workers=r.workers, use_gpu=r.gpus_per_worker > 0, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=spec.name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=r.max_failures),
            checkpoint_config=kept,
            callbacks=callbacks or [],
            # Train V2's RunConfig takes it; the v1 class that ray.train's type hints name does not.
            logging_config=LoggingConfig(log_level="INFO" if verbose else "WARNING"),  # type: ignore[call-arg]
        ),
    )


def run_job(
    spec: JobSpec,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    verbose: bool = False,
    out: TextIO | None = None,
    overrides: Sequence[str] = (),
) -> RunOutcome:
    """Run ``spec`` to completion (or failure) on Ray; returns the outcome (never raises for a
    failed job; JobSpecError for a job that cannot start, before anything is written). The
    ``--set`` ``overrides`` that made ``spec`` name its MLflow run (:func:`tracking.run_name`)."""
    import ray  # deferred: see the module's docstring
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from ..worker.failure import FAILURE_FILE
    from ..worker.worker import NonFiniteLossError  # deferred: torch

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    started = start(spec, address=address, num_cpus=num_cpus, verbose=verbose, say=say)
    spec, prepared, uri = started.spec, started.prepared, started.tracking_uri
    tags = {tracking.TAG_RAY_JOB: ray.get_runtime_context().get_job_id()}
    if os.environ.get("HYPERCTL_SUBMISSION_ID"):
        tags[tracking.TAG_RAY_SUBMISSION] = os.environ["HYPERCTL_SUBMISSION_ID"]
    run_id, resumed = tracking.open_run(
        spec, uri, tags, task_aliases=started.task.aliases, name=tracking.run_name(spec.name, overrides)
    )
    tracking.log_job_files(uri, run_id, spec, prepared.root, prepared.manifest)
    failure_file = storage.join(run_dir(spec), FAILURE_FILE)
    storage.delete(failure_file)
    preemption.clear(run_dir(spec))
    say(
        f"[mlflow] run {run_id} ({'resumed' if resumed else 'new'}) in {tracking.redact(uri)}, "
        f"experiment {spec.tracking.experiment!r}"
    )

    # On the driver's node: a queue on a worker node would go (and the progress lines with it) when
    # that node is lost, while the job itself continues from its checkpoint.
    queue = Queue(
        maxsize=10_000,
        actor_options={
            "num_cpus": 0,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False),
        },
    )
    trainer = build_trainer(spec, prepared.root, uri, run_id, progress=queue, verbose=verbose)
    error: str | None = None
    preempted: dict[str, Any] | None = None
    printer = QueuePrinter(queue, out)
    try:
        with printer, _PreemptOnSigterm(run_dir(spec), say, PREEMPT_GRACE_S):
            result = trainer.fit()
        if result.error:
            raise result.error
        # The workers' outcome files are read from storage: an outage at the very end is waited out too.
        storage.wait_reachable(
            spec.storage, "reading the job's outcome", say, storage.wait_delays(spec.storage_retry_s)
        )
        preempted = preemption.read_outcome(run_dir(spec))
        recorded = failure.recorded_error(failure_file)  # a deterministic error, its retry skipped
        if recorded is not None:
            raise failure.WorkerError(recorded)
        if storage.exists(failure_file):
            info = json.loads(storage.read_bytes(failure_file))
            raise NonFiniteLossError(int(info["step"]), info["error"])
    except KeyboardInterrupt as e:
        step = max((s for s, _ in tracking.metric_history(uri, run_id, started.task.metrics.train)), default=0)
        why = f" ({e})" if str(e) else ""
        tracking.end_run(
            uri,
            run_id,
            "KILLED",
            {tracking.TAG_ERROR: f"interrupted{why} at step {step} (its last checkpoint); relaunch the job to resume"},
        )
        raise
    except Exception as e:  # noqa: BLE001 - any training failure ends the run as FAILED
        # The worker's own exception (recorded by it, or each rank's in Ray's error), not Ray's wrapper.
        try:
            recorded = failure.recorded_error(failure_file)
        except storage.StorageError:  # storage unreachable: Ray's error is what is known
            recorded = None
        # A worker's storage retries ran out: that is the cause, not the restarted attempts' errors.
        error = recorded or printer.cause or failure.describe(e)
    finally:
        try:
            ray.kill(queue.actor)  # type: ignore[arg-type]  # an ActorHandle; Ray's hint also allows its class
        except Exception:  # noqa: BLE001 - the queue is gone with its node: nothing to clean up
            pass
    if preempted is not None:
        step = int(preempted["step"])
        tracking.end_run(
            uri,
            run_id,
            "KILLED",
            {
                tracking.TAG_PREEMPTED: str(step),
                tracking.TAG_ERROR: f"interrupted: preempted ({preempted['by']}) at step {step}, its checkpoint "
                "kept; relaunch the same job (same name and storage) to resume from it",
            },
        )
    else:
        tracking.close_run(uri, run_id, error)
    described = tracking.describe_run(uri, run_id)
    outcome = RunOutcome(
        run_id=run_id,
        tracking_uri=uri,
        run_path=run_dir(spec),
        ok=error is None,
        error=error,
        metrics=tracking.final_metrics(described["metrics"]),
        experiment_id=described["experiment_id"],
        artifact_uri=described["artifact_uri"],
        registered_model=described["tags"].get(tracking.TAG_REGISTERED, ""),
        preempted_at_step=None if preempted is None else int(preempted["step"]),
    )
    if preempted is not None:
        outcome.ok = False
        say(f"[mlflow] run {run_id}: KILLED, preempted at step {outcome.preempted_at_step} ({preempted['by']})")
        return outcome
    say(f"[mlflow] run {run_id}: {'FINISHED' if outcome.ok else 'FAILED'} (tracking URI {tracking.redact(uri)})")
    if error:
        say(f"[error] {error.strip().splitlines()[0] if error.strip() else error}")
    return outcome


__all__ = [
    "RunOutcome",
    "Started",
    "absolute_storage",
    "build_trainer",
    "cluster_address",
    "init_ray",
    "prepare",
    "run_job",
    "start",
]
