"""MLflow tracking: exactly one run per job, whose id survives restarts and relaunches.

* The driver (:mod:`service.driver.local`) calls :func:`open_run`: it reads the run id stored in
  ``<storage>/<name>/mlflow_run_id`` (reusing that run on a relaunch) or creates the run and
  writes the file. Params are the flattened spec; tags: job name, git commit, Ray job id. The run
  is named after the job and its ``--set`` overrides (:func:`run_name`); a new experiment is
  tagged as a training experiment (:data:`EXPERIMENT_KIND`).
* Rank 0 of the training workers logs into that run id with a :class:`MetricBuffer`: metrics are
  buffered and flushed only right after a checkpoint has been reported, so everything in MLflow is
  covered by a checkpoint. After a crash the resumed run recomputes the same steps; the buffer also
  skips any step already logged for a key (a crash between flush and checkpoint registration), so
  metric steps stay strictly increasing with no duplicates.
* The driver ends the run with :func:`close_run` (FINISHED, or FAILED with the error as a tag).
* Reading (``hyperctl list``, ``ui``, ``translate``) never creates a store: :func:`store_exists`
  is asked first, since opening a missing sqlite store creates its database.

Credentials never reach MLflow: URIs are stripped of user-info before they become params or tags,
and no environment variable is logged.

This is the one module that talks to MLflow: every client and every tag name is here. MLflow is
imported inside the functions that use it: importing it takes seconds, and commands such as
``hyperctl validate`` never touch a store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..paths import PROJECT_ROOT, run_dir
from ..spec.errors import JobSpecError
from ..spec.schema import JobSpec
from . import storage

RUN_ID_FILE = "mlflow_run_id"
# The run's params as it was started, beside its run id: a relaunch with another spec is refused from this
# file before Ray starts (spec_conflict), without opening the tracking store.
PARAMS_FILE = "job_params.json"
TAG_PREFIX = "hyperctl."  # the service's own tags; a task's figures go as TAG_PREFIX + name
# A run's final figures (whole-split valid, test, per-set scores) are metrics named FINAL_PREFIX + name: single
# points that MLflow's chart view groups in a section of their own, apart from the learning curves.
FINAL_PREFIX = "final/"
TAG_JOB = "hyperctl.job"


def final_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """A finished run's figures by their plain names, as scripts read them (the submit summary, a
    campaign's trial results): ``final/<name>`` replaces ``<name>`` (the curve's last point is the
    same whole-split evaluation), the other metrics as logged."""
    plain = {k: v for k, v in metrics.items() if not k.startswith(FINAL_PREFIX)}
    return plain | {k.removeprefix(FINAL_PREFIX): v for k, v in metrics.items() if k.startswith(FINAL_PREFIX)}


TAG_TASK = "hyperctl.task"
TAG_ERROR = "hyperctl.error"
TAG_KIND = "hyperctl.kind"  # a campaign's parent run ("campaign") or a trial's ("trial")
TAG_STOPPED = "hyperctl.stopped_early"
TAG_REGISTERED = "hyperctl.registered_model"  # models:/NAME/VERSION of the run's registered model
TAG_PREEMPTED = "hyperctl.preempted_at_step"  # SIGTERM: the step of the checkpoint a relaunch resumes from
TAG_RAY_JOB = "ray.job_id"
TAG_RAY_SUBMISSION = "ray.submission_id"
TAG_SACREBLEU = "sacrebleu.signature"  # the signature of every BLEU a run reports
# MLflow 3 opens an experiment without this tag in its GenAI view (traces, assistant); this value is
# its training view: the runs table and metric charts first.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_MAX_TAG = 5000
_MAX_RUN_NAME = 250
_WHERE_NOT_WHAT = {"name", "storage", "tracking.uri", "tracking.experiment"}  # overrides a run name leaves out


def redact(value: Any) -> Any:
    """``s3://key:secret@host/x`` -> ``s3://***@host/x``; other values unchanged."""
    return _USERINFO.sub("***@", value) if isinstance(value, str) else value


def local_state_dir(spec: JobSpec) -> str:
    """Local folder for the tracking store: the storage folder when local, else ``~/.hyperctl``."""
    if storage.is_s3(spec.storage):
        return str(Path.home() / ".hyperctl")
    return str(Path(spec.storage).expanduser().resolve())


def tracking_uri_for(spec: JobSpec, environ: dict[str, str] | None = None) -> str:
    """The job's MLflow tracking URI: ``tracking.uri``; when that is null, MLFLOW_TRACKING_URI from
    the environment (cluster pods and nodes set it to their tracking server); else an absolute
    ``sqlite:///.../mlflow.db`` under the storage folder (``~/.hyperctl`` for S3 storage)."""
    uri = spec.tracking.uri or (os.environ if environ is None else environ).get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).expanduser().resolve())
        return uri
    return "sqlite:///" + str(Path(local_state_dir(spec)) / "mlflow.db")


def store_exists(uri: str) -> bool:
    """Whether a tracking store is there to read: a local store's database file or folder exists
    (opening a missing one would create it); a server always counts."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).is_file()
    if uri.startswith("file:"):
        return Path(uri.removeprefix("file://").removeprefix("file:")).is_dir()
    if "://" not in uri:  # a plain folder: MLflow's file store
        return Path(uri).is_dir()
    return True


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient  # deferred: see the module's docstring

    # "Creating initial MLflow database tables..." on a new sqlite store: noise on the user's terminal.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, uri: str, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if TAG_EXPERIMENT_KIND not in exp.tags:  # made by an older version or by hand
            client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        return exp.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:"):  # artifacts beside the database, never relative to a worker's cwd
        artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(
            name, artifact_location=artifact_location, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND}
        )
    except Exception:  # created concurrently
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def mark_training_experiments(uri: str) -> dict[str, str]:
    """The experiments of an existing store (name -> id), each without a kind given the training kind
    (see :data:`EXPERIMENT_KIND`). A store that does not exist is left uncreated: ``{}``."""
    if not store_exists(uri):
        return {}
    client = _client(uri)
    found = {}
    for exp in client.search_experiments():
        if TAG_EXPERIMENT_KIND not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        found[exp.name] = exp.experiment_id
    return found


def run_name(name: str, overrides: Sequence[str] = ()) -> str:
    """A run's name in the MLflow runs table: the job's name and what tells this run apart from
    other runs of the same job file: each ``--set KEY.PATH=VALUE`` as ``PATH_END=VALUE`` (the full
    keys are the run's params), but for the name itself and where the run is kept."""
    pairs = [(k.strip(), v.strip()) for k, _, v in (o.partition("=") for o in overrides)]
    labels = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in pairs if k not in _WHERE_NOT_WHAT]
    return " ".join([name, *labels])[:_MAX_RUN_NAME]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _params(spec: JobSpec) -> dict[str, str]:
    return {k: str(redact(v)) for k, v in spec.flat().items()}


def _changed(old: dict[str, str], new: dict[str, str]) -> list[str]:
    return sorted(k for k in new if k in old and old[k] != new[k])


def _conflict_message(spec: JobSpec, old: dict[str, str], new: dict[str, str], changed: list[str]) -> str:
    listed = ", ".join(f"{k}: {old[k]} -> {new[k]}" for k in changed[:5])
    last = changed[0].rsplit(".", 1)[-1]
    suggestion = re.sub(r"[^A-Za-z0-9._-]", "-", f"{spec.name}-{last}-{new[changed[0]]}")[:100]
    return (
        f"name: {run_dir(spec)} holds a run named {spec.name!r} with a different spec ({listed}); "
        f"resuming it would mix two jobs: give this one its own name, e.g. --set name={suggestion} "
        "(or remove that folder to start over)"
    )


def spec_conflict(spec: JobSpec, task_aliases: tuple[str, ...] = ()) -> str | None:
    """A problem line when the job's run folder holds a run started with a different spec, else None.

    Reads only the run folder (:data:`PARAMS_FILE`), so ``validate`` and ``submit`` refuse such a
    relaunch before Ray starts; :func:`open_run` checks again against the tracking store.
    """
    path = storage.join(run_dir(spec), PARAMS_FILE)
    try:
        if not storage.exists(path):
            return None
        old = json.loads(storage.read_bytes(path))
    except (OSError, ValueError, storage.StorageError):
        return None  # unreadable: open_run's check against the store decides
    if old.get("task") in task_aliases:
        old["task"] = spec.task
    new = _params(spec)
    changed = _changed(old, new)
    return _conflict_message(spec, old, new, changed) if changed else None


def open_run(
    spec: JobSpec,
    uri: str,
    tags: dict[str, str] | None = None,
    task_aliases: tuple[str, ...] = (),
    name: str | None = None,
) -> tuple[str, bool]:
    """Find or create the job's MLflow run; returns ``(run_id, resumed)``. A new run is called
    ``name`` (default: the job's name; see :func:`run_name`).

    The run id lives in ``<storage>/<name>/mlflow_run_id``. A relaunch reuses that run (set back to
    RUNNING) if the tracking store still has it and its params match the spec; a run recorded
    under one of the task's old names (``task_aliases``) matches its new name.
    """
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    id_file = storage.join(run_dir(spec), RUN_ID_FILE)
    params = _params(spec)
    if storage.exists(id_file):
        run_id = storage.read_bytes(id_file).decode().strip()
        try:
            run = client.get_run(run_id)
        except MlflowException:
            run = None
        if run is not None:
            old = dict(run.data.params)
            if old.get("task") in task_aliases:
                old["task"] = spec.task
            changed = _changed(old, params)
            if changed:
                raise JobSpecError(spec.name, [_conflict_message(spec, old, params, changed)])
            params_file = storage.join(run_dir(spec), PARAMS_FILE)
            if not storage.exists(params_file):  # a run started before the file existed
                storage.write_bytes_atomic(params_file, json.dumps(params).encode())
            client.update_run(run_id, status="RUNNING")
            for ended in (TAG_ERROR, TAG_PREEMPTED):  # how the last attempt ended: it runs again
                if ended in run.data.tags:
                    client.delete_tag(run_id, ended)
            _set_tags(client, run_id, tags or {})
            return run_id, True
    experiment_id = _experiment_id(client, uri, spec.tracking.experiment)
    name = redact(name or spec.name)
    all_tags = {TAG_JOB: spec.name, TAG_TASK: spec.task, "mlflow.runName": name, **(tags or {})}
    commit = git_commit()
    if commit:
        all_tags["mlflow.source.git.commit"] = commit
    run = client.create_run(experiment_id, run_name=name, tags={k: str(redact(v)) for k, v in all_tags.items()})
    run_id = run.info.run_id
    items = [Param(k, v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
    storage.write_bytes_atomic(storage.join(run_dir(spec), PARAMS_FILE), json.dumps(params).encode())
    storage.write_bytes_atomic(id_file, run_id.encode())
    return run_id, False


def _set_tags(client: Any, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    if tags:
        client.log_batch(run_id, tags=[RunTag(k, str(redact(v))[:_MAX_TAG]) for k, v in tags.items()])


def close_run(uri: str, run_id: str, error: str | None = None, only_if_running: bool = False) -> None:
    """Mark the run FINISHED, or FAILED with ``error`` as a tag; with ``only_if_running``, leave a run that
    something else has already ended as it is."""
    client = _client(uri)
    if only_if_running and client.get_run(run_id).info.status != "RUNNING":
        return
    if error is None:
        client.set_terminated(run_id, "FINISHED")
    else:
        client.set_tag(run_id, TAG_ERROR, redact(error)[-_MAX_TAG:])
        client.set_terminated(run_id, "FAILED")


class RunLog:
    """Writing to one run: texts, files, metrics and tags."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.client, self.run_id, self.uri = _client(uri), run_id, uri

    def history(self, key: str) -> list[tuple[int, float]]:
        """Every ``(step, value)`` of metric ``key``, by step."""
        return [
            (m.step, m.value) for m in sorted(self.client.get_metric_history(self.run_id, key), key=lambda m: m.step)
        ]

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, local_path, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        self.client.log_metric(self.run_id, key, value, step=step)

    def set_tags(self, **tags: Any) -> None:
        _set_tags(self.client, self.run_id, {k: str(v) for k, v in tags.items()})


class MetricBuffer(RunLog):
    """Rank 0's metric log: ``add`` buffers, ``flush`` writes to MLflow (call it after a checkpoint).

    Steps at or below the last step MLflow already holds for a key are dropped, so a resumed run
    never writes a step twice.
    """

    def __init__(self, uri: str, run_id: str) -> None:
        super().__init__(uri, run_id)
        self.pending: list[tuple[str, float, int, int]] = []
        run = self.client.get_run(run_id)
        self.last_step: dict[str, int] = {}
        for key in run.data.metrics:
            history = self.client.get_metric_history(run_id, key)
            self.last_step[key] = max(m.step for m in history) if history else -1

    def add(self, step: int, **metrics: float) -> None:
        now = int(time.time() * 1000)
        self.pending.extend((k, float(v), now, step) for k, v in metrics.items())

    def flush(self) -> None:
        from mlflow.entities import Metric

        batch = []
        for key, value, ts, step in self.pending:
            if step > self.last_step.get(key, -1):
                batch.append(Metric(key, value, ts, step))
                self.last_step[key] = step
        for i in range(0, len(batch), 500):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 500])
        self.pending.clear()


def append_metric(uri: str, run_id: str, key: str, points: list[tuple[int, float]]) -> None:
    """Log the ``(step, value)`` points of ``key`` beyond the last step the run holds (never a step twice)."""
    from mlflow.entities import Metric

    client = _client(uri)
    logged = max((m.step for m in client.get_metric_history(run_id, key)), default=-1)
    now = int(time.time() * 1000)
    batch = [Metric(key, value, now, step) for step, value in points if step > logged]
    if batch:
        client.log_batch(run_id, metrics=batch)


def log_job_files(uri: str, run_id: str, spec: JobSpec, data_root: str, manifest: str) -> None:
    """Driver-side artifacts: the resolved job YAML and the prepared data's manifest (e.g. the
    vocabulary of a char LM, the image counts, the subword settings). A manifest's ``mlflow_params``
    (e.g. a translation corpus's pairs dropped by each filter) are logged as params of the run."""
    from mlflow.entities import Param

    client = _client(uri)
    client.log_text(run_id, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "job.yaml")
    body = storage.read_bytes(storage.join(data_root, manifest))
    client.log_text(run_id, body.decode("utf-8"), manifest)
    params = json.loads(body).get("mlflow_params") or {}
    if params:
        logged = client.get_run(run_id).data.params
        new = [Param(k, str(v)) for k, v in params.items() if logged.get(k) != str(v)]
        if new:
            client.log_batch(run_id, params=new)


def _describe(run: Any) -> dict[str, Any]:
    return {
        "run_id": run.info.run_id,
        "status": run.info.status,
        "metrics": dict(run.data.metrics),
        "tags": dict(run.data.tags),
        "run_name": run.info.run_name or "",
        "artifact_uri": run.info.artifact_uri,
        "experiment_id": run.info.experiment_id,
    }


def run_page(uri: str, experiment_id: str, run_id: str, ui_address: str = "http://127.0.0.1:5000") -> str:
    """The address of a run's page in the MLflow UI: on the tracking server itself for an http(s) store,
    else on the UI ``hyperctl ui`` serves at ``ui_address``."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else ui_address
    return f"{redact(base)}/#/experiments/{experiment_id}/runs/{run_id}"


def describe_run(uri: str, run_id: str) -> dict[str, Any]:
    """A run's id, status, metrics (latest values), tags, name, artifact URI and experiment id."""
    return _describe(_client(uri).get_run(run_id))


def find_run(uri: str, run_id: str) -> dict[str, Any] | None:
    """:func:`describe_run`, or None when the store has no such run."""
    from mlflow.exceptions import MlflowException

    if not store_exists(uri):  # reading must not create a store
        return None
    try:
        return describe_run(uri, run_id)
    except MlflowException:
        return None


def search_runs(uri: str, max_results: int = 200) -> list[dict[str, Any]]:
    """The runs of every experiment in a store (as :func:`describe_run`), newest first; none (and
    nothing created) when there is no store at ``uri``."""
    if not store_exists(uri):
        return []
    client = _client(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    runs = client.search_runs(experiments, order_by=["attributes.start_time DESC"], max_results=max_results)
    return [_describe(run) for run in runs]


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """Every ``(step, value)`` of a run's metric ``key``, by step."""
    return RunLog(uri, run_id).history(key)


def download_artifact(uri: str, run_id: str, path: str, dst: str) -> str:
    """A run's artifact ``path`` downloaded into ``dst``; FileNotFoundError when the run has none."""
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stdout/stderr carry results
    try:
        local: str = _client(uri).download_artifacts(run_id, path, dst)
    except (MlflowException, OSError):
        raise FileNotFoundError(f"run {run_id} has no artifact {path}") from None
    return local


# ---- trained models: MLflow models (the ``mlflow.pytorch`` flavour) and the model registry ----------------

MODEL_NAME = "model"  # a run's final model: runs:/<run id>/model
MODEL_METADATA_TASK = "hyperctl_task"  # the MLmodel metadata key naming the task


class ModelLookupError(LookupError):
    """A model URI, name, version or alias that the tracking store does not hold; the message says
    what was asked and what there is."""


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """MLflow's warnings about choices made on purpose (pickle format, an input example that pyfunc
    serving cannot run: our models return ``output, state``) kept off the user's terminal."""
    saved = [(name, logging.getLogger(name).level) for name in loggers]
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved:
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _fluent_store(uri: str, experiment_id: str | None = None) -> Iterator[None]:
    """MLflow's process-wide store (and experiment) set to ``uri`` inside the block, as they were after
    it: ``log_model`` and ``models:/`` URIs go through MLflow's fluent API, which would otherwise use
    its default store (./mlruns) and experiment."""
    import mlflow
    import mlflow.tracking._tracking_service.utils as store_utils
    import mlflow.tracking.fluent as fluent

    # MLflow has no public way to unset these: its own globals, read back as they were.
    # set_tracking_uri also exports MLFLOW_TRACKING_URI, which this service reads: restored too.
    uri_before, experiment_before = store_utils._tracking_uri, fluent._active_experiment_id
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        if experiment_id is not None:
            mlflow.set_experiment(experiment_id=experiment_id)
        yield
    finally:
        mlflow.set_tracking_uri(uri_before)  # type: ignore[arg-type]  # None unsets it (its documented behaviour)
        fluent._active_experiment_id = experiment_before
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


def _pip_requirements() -> list[str]:
    """What loading a model needs besides MLflow (which MLflow adds itself): torch and numpy at the
    versions installed here (torch without a local build tag such as ``+cpu``: any build loads it)."""
    import numpy
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}"]


def log_pytorch_model(
    uri: str,
    run_id: str,
    model: Any,
    files: dict[str, bytes],
    input_example: Any,
    task: str,
    register_as: str | None = None,
) -> tuple[str, int | None]:
    """Log ``model`` (a ``torch.nn.Module``, on the CPU) as the run's MLflow model :data:`MODEL_NAME`
    (``mlflow.pytorch``, pickled): ``files`` (name -> bytes: the spec, vocabularies, subword models)
    as its extra files, ``input_example`` (a numpy array the model's forward takes) with the
    signature it implies, pinned pip requirements, and the ``hypermodels`` package as its code, so
    that ``mlflow.pytorch.load_model`` loads it wherever torch and MLflow are installed. With
    ``register_as`` it becomes a new version of that registered model. Returns (model URI, version
    or None)."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    import hypermodels

    client = _client(uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with _fluent_store(uri, experiment_id), tempfile.TemporaryDirectory(prefix="hyperctl-mlflow-model-") as tmp:
        paths = []
        for name, body in files.items():
            path = os.path.join(tmp, name)
            Path(path).write_bytes(body)
            paths.append(path)
        with _quiet("mlflow.pytorch", "mlflow.models.model", "mlflow.models.utils", "mlflow.tracking._model_registry"):
            info = mlflow.pytorch.log_model(
                model,
                name=MODEL_NAME,
                run_id=run_id,
                serialization_format="pickle",  # recurrent models with custom kernels: torch.export cannot trace them
                code_paths=[os.path.dirname(hypermodels.__file__)],
                extra_files=paths,
                input_example=input_example,
                signature=infer_signature(input_example),
                pip_requirements=_pip_requirements(),
                metadata={MODEL_METADATA_TASK: task},
                registered_model_name=register_as,
            )
    version = info.registered_model_version
    return str(info.model_uri), None if version is None else int(version)


def _logged_models(client: Any, run_id: str) -> list[Any]:
    run = client.get_run(run_id)
    return list(
        client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
    )


def run_model_uri(uri: str, run_id: str, name: str = MODEL_NAME) -> str:
    """The URI (``models:/m-...``) of the model ``name`` a run logged; ModelLookupError naming the run's
    models (none: the run has not finished training) otherwise."""
    client = _client(uri)
    found = _logged_models(client, run_id)
    for m in found:
        if m.name == name:
            return str(m.model_uri)
    has = ", ".join(sorted(m.name for m in found)) or "none: a run logs its model when training finishes"
    raise ModelLookupError(f"run {run_id} has no model {name!r} (its models: {has})")


def registered_version(uri: str, name: str, version: str | None, alias: str | None) -> tuple[str, str, str | None]:
    """(version, model source URI, source run id) of registered model ``name`` at ``version`` or ``alias``;
    ModelLookupError naming the registered models, versions or aliases there are."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    models = sorted(m.name for m in client.search_registered_models(max_results=1000))
    if name not in models:
        raise ModelLookupError(
            f"no registered model {name!r} in {redact(uri)} (registered: {', '.join(models) or 'none'})"
        )
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        if alias:
            aliases = sorted(client.get_registered_model(name).aliases)
            raise ModelLookupError(
                f"registered model {name!r} has no alias {alias!r} (aliases: {', '.join(aliases) or 'none'})"
            ) from None
        raise ModelLookupError(
            f"registered model {name!r} has no version {version} (versions: {', '.join(map(str, versions))})"
        ) from None
    return str(mv.version), str(mv.source), mv.run_id


def register_run_model(uri: str, run_id: str, name: str) -> int:
    """A new version of registered model ``name`` (created if new) from the run's logged model."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    model_uri = run_model_uri(uri, run_id)
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # it exists
    model_id = model_uri.removeprefix("models:/")
    with _fluent_store(uri):  # the registry resolves the models:/ source through the process-wide store
        return int(client.create_model_version(name, source=model_uri, run_id=run_id, model_id=model_id).version)


def download_model(uri: str, model_uri: str, dst: str) -> str:
    """The MLflow model at ``model_uri`` (``models:/...``, ``runs:/...``) as a local folder under ``dst``."""
    import mlflow.artifacts

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with _fluent_store(uri):  # models:/ URIs are resolved by a client of the process-wide store
        return str(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, tracking_uri=uri, dst_path=dst))


def load_pytorch_model(folder: str) -> Any:
    """The ``torch.nn.Module`` of a downloaded MLflow model folder, on the CPU."""
    import mlflow.pytorch

    with _quiet("mlflow.pytorch", "mlflow.utils.requirements_utils"):
        return mlflow.pytorch.load_model(folder, map_location="cpu")


# ---- search campaigns (service/driver/campaign.py): a parent run and one nested child run per trial -----

TAG_CAMPAIGN = "hyperctl.campaign"
TAG_BEST_TRIAL = "hyperctl.best_trial"
TAG_BEST_RUN = "hyperctl.best_run_id"
TAG_TRIAL = "hyperctl.trial_id"
TAG_PARENT = "mlflow.parentRunId"  # what the MLflow UI nests children under


def open_child_run(
    spec: JobSpec,
    uri: str,
    parent_run_id: str,
    trial_id: str,
    sampled: dict[str, Any],
    tags: dict[str, str] | None = None,
    task_aliases: tuple[str, ...] = (),
) -> tuple[str, bool]:
    """A campaign trial's nested run (``mlflow.parentRunId`` = the campaign's run): exactly one per
    trial across trial restarts and campaign resumes. As for a job, the id lives in the trial's
    folder (``<storage>/<name>/mlflow_run_id``); if that file is missing but the store already has
    this trial's child (the driver died between creating it and writing the file), that run is
    adopted. Params: the trial's flat spec and its sampled values as ``sampled.<key>``."""
    from mlflow.entities import Param

    client = _client(uri)
    id_file = storage.join(run_dir(spec), RUN_ID_FILE)
    if not storage.exists(id_file):
        parent = client.get_run(parent_run_id)
        found = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}' and tags.`{TAG_TRIAL}` = '{trial_id}'",
        )
        if found:
            storage.write_bytes_atomic(id_file, found[0].info.run_id.encode())
    run_id, resumed = open_run(
        spec,
        uri,
        {TAG_PARENT: parent_run_id, TAG_TRIAL: trial_id, **(tags or {})},
        task_aliases=task_aliases,
        name=run_name(spec.name, [f"{k}={v}" for k, v in sampled.items()]),
    )
    if not resumed:
        client.log_batch(run_id, params=[Param(f"sampled.{k}", str(redact(v))) for k, v in sampled.items()])
    return run_id, resumed


def run_id_of(spec: JobSpec) -> str | None:
    """The MLflow run id recorded in the job's folder (None before its run was opened)."""
    id_file = storage.join(run_dir(spec), RUN_ID_FILE)
    return storage.read_bytes(id_file).decode().strip() if storage.exists(id_file) else None


def child_runs(uri: str, parent_run_id: str) -> list[Any]:
    """The nested runs of a campaign's run (MLflow ``Run`` objects), oldest first."""
    client = _client(uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=5000,
    )


def end_run(
    uri: str, run_id: str, status: str, tags: dict[str, str] | None = None, replace: tuple[str, ...] = ()
) -> None:
    """Set ``tags`` and end the run with ``status`` (FINISHED, FAILED, KILLED) if it is still RUNNING,
    or already ended with one of the ``replace`` statuses (whose error tag is then dropped)."""
    client = _client(uri)
    _set_tags(client, run_id, tags or {})
    run = client.get_run(run_id)
    if run.info.status == "RUNNING" or run.info.status in replace:
        client.set_terminated(run_id, status)
        if run.info.status in replace and TAG_ERROR in run.data.tags:
            client.delete_tag(run_id, TAG_ERROR)


__all__ = [
    "MODEL_NAME",
    "MetricBuffer",
    "ModelLookupError",
    "RunLog",
    "append_metric",
    "child_runs",
    "close_run",
    "describe_run",
    "download_artifact",
    "download_model",
    "end_run",
    "find_run",
    "git_commit",
    "load_pytorch_model",
    "local_state_dir",
    "log_job_files",
    "log_pytorch_model",
    "mark_training_experiments",
    "metric_history",
    "open_child_run",
    "open_run",
    "redact",
    "register_run_model",
    "registered_version",
    "run_id_of",
    "run_model_uri",
    "run_name",
    "search_runs",
    "store_exists",
    "tracking_uri_for",
]
