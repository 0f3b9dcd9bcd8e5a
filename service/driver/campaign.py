"""Search campaigns: a job with a ``search:`` section, run as a Ray Tune experiment of whole jobs.

Read top to bottom:

* :func:`param_space` turns ``search.space`` (dotted spec keys) into Ray Tune domains.
* :func:`run_trial` is Tune's trainable, a *driver function* (Ray 2.60 runs Train V2: Tune wraps a
  function that builds a ``TorchTrainer`` and fits it; never ``Tuner(trainer)``). It puts the
  trial's sampled values into the spec, opens the trial's nested MLflow run and fits the ordinary
  training loop (its task's ``train_loop``, see :mod:`service.tasks`) with its checkpoints under
  ``<storage>/<campaign>/<campaign>-<trial id>/``. Every evaluation reaches Tune through
  :class:`ReportToTune` (Train V2's ``TuneReportCallback``), so ASHA can stop the trial early. A
  relaunched trial (Tune's ``search.max_failures``, or a resumed campaign) builds the same
  ``TorchTrainer`` (same storage path and name) and so resumes from its latest checkpoint.
* :func:`run_campaign` is the campaign's driver: the start-up every run shares
  (:func:`service.driver.local.start`: preflight, Ray, data prepared once), the campaign's parent
  MLflow run opened (or reopened), the Tune experiment started under ``<storage>/<campaign>/`` or
  restored from there (``Tuner.restore``: unfinished trials continue, finished ones are kept),
  and at the end the summary written on the parent run (:mod:`.campaign_report`).

MLflow: one parent run per campaign (id in ``<storage>/<campaign>/mlflow_run_id``), one nested
child run per trial (``mlflow.parentRunId``; id in the trial's folder, so restarts and resumes
never duplicate it). A trial stopped early by ASHA ends KILLED with the tag
``hyperctl.stopped_early``; a trial whose loss went non-finite, or whose worker raised a
deterministic error (:mod:`service.worker.failure`), ends FAILED and reports the worst value of the
metric (it is a result, not a crash: it is not retried). A stopped campaign (``hyperctl stop``,
SIGTERM, Ctrl-C) exits 130: its parent run ends KILLED with ``hyperctl.error`` saying how many
trials were cut off and that ``hyperctl resume`` continues them, and each unfinished trial's run
ends KILLED with ``hyperctl.error: campaign stopped; resume it`` (a resume reopens it).

Ray Tune and optuna are imported inside the functions that use them: each takes
seconds to import, and ``hyperctl status`` / ``stop`` of a campaign need none of them.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..io import storage, tracking
from ..io.tracking import TAG_KIND, TAG_STOPPED
from ..paths import run_dir
from ..spec.errors import JobSpecError
from ..spec.loading import validate_job
from ..spec.schema import JobSpec
from ..spec.tree import with_values
from ..tasks import task_of
from ..worker import failure, preemption
from ..worker.failure import FAILURE_FILE
from .campaign_report import fmt_config, format_trials, searched_keys, write_summary
from .local import absolute_storage, build_trainer, start

UNFINISHED = ("pending", "running", "paused")  # collect_trials' state of a trial Tune has not ended
DRIVER_FILE = "driver.json"  # pid and host of the running campaign driver (for `hyperctl stop`)


class CampaignError(RuntimeError):
    """A campaign that cannot be run or resumed as asked."""


def trial_name(campaign: str, trial_id: str) -> str:
    return f"{campaign}-{trial_id}"


def trial_spec(base: JobSpec, sampled: dict[str, Any], trial_id: str) -> JobSpec:
    """The job a trial runs: the campaign's spec with the sampled values, no search section, named
    ``<campaign>-<trial id>`` and stored inside the campaign's folder. A trial registers no model:
    with ``tracking.register_model`` the campaign registers its best trial's model at the end
    (:func:`register_best`)."""
    raw = with_values(base, sampled, name=trial_name(base.name, trial_id), storage=run_dir(base))
    raw["tracking"] = {**raw.get("tracking", {}), "register_model": None}
    return validate_job(raw, f"trial {trial_id}")


# ---- the search space ---------------------------------------------------------------------------


def param_space(spec: JobSpec) -> tuple[dict[str, Any], int]:
    """``search.space`` as Ray Tune domains, and Tune's ``num_samples``.

    With algorithm ``grid`` a ``choice`` is a grid axis, and ``samples > 1`` repeats every grid
    point with ``train.seed`` = seed, seed+1, ... (a grid axis over the seed; num_samples = 1).
    """
    from ray import tune  # deferred: see the module's docstring

    search = spec.search
    assert search is not None
    space: dict[str, Any] = {}
    for key, domain in search.space.items():
        kind, values = domain.kind, getattr(domain, domain.kind)
        if kind == "grid" or (kind == "choice" and search.algorithm == "grid"):
            space[key] = tune.grid_search(list(values))
        elif kind == "choice":
            space[key] = tune.choice(list(values))
        elif kind == "uniform":
            space[key] = tune.uniform(*values)
        elif kind == "loguniform":
            space[key] = tune.loguniform(*values)
        else:
            space[key] = tune.randint(*values)
    if search.algorithm == "grid":
        if search.samples > 1:
            space["train.seed"] = tune.grid_search([spec.train.seed + i for i in range(search.samples)])
        return space, 1
    return space, search.samples


def _search_alg(spec: JobSpec, concurrent: int) -> Any:
    """Tune's search algorithm, limited to ``concurrent`` trials at once (Tune ignores
    TuneConfig.max_concurrent_trials for a BasicVariantGenerator instance: it takes its own)."""
    search = spec.search
    assert search is not None
    if search.algorithm == "optuna":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(
            OptunaSearch(sampler=optuna.samplers.TPESampler(seed=search.seed)), max_concurrent=concurrent
        )
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=search.seed, max_concurrent=concurrent)


def _scheduler(spec: JobSpec) -> Any:
    search = spec.search
    assert search is not None
    if search.scheduler.name == "none":
        from ray.tune.schedulers import FIFOScheduler

        return FIFOScheduler()
    from ray.tune.schedulers import ASHAScheduler

    sch = search.scheduler
    return ASHAScheduler(
        time_attr="step",
        max_t=sch.max_t or spec.train.max_steps or 0,  # check_search refused a campaign with neither
        grace_period=sch.grace_period,
        reduction_factor=sch.reduction_factor,
    )


# ---- one trial: a driver function that fits a TorchTrainer ---------------------------------------


def _report_to_tune_class() -> Any:
    from ray.tune.integration.ray_train import TuneReportCallback

    class ReportToTune(TuneReportCallback):
        """Train V2's TuneReportCallback, passing on only the reports that carry the campaign's
        metric, before the last step: the last checkpoint's report would hold the previous eval's
        value (the whole-split final evaluation follows it), and ASHA would stop a finished trial at
        max_t before its final evaluation. The driver function reports the final value itself."""

        def __init__(self, metric: str, total_steps: int | None) -> None:
            super().__init__()
            self.metric, self.total_steps = metric, total_steps

        def after_report(self, run_context, metrics, checkpoint):
            first = metrics[0] if metrics else {}
            if self.metric in first and (self.total_steps is None or first.get("step", 0) < self.total_steps):
                super().after_report(run_context, metrics, checkpoint)

    return ReportToTune


def _worst(mode: str) -> float:
    return math.inf if mode == "min" else -math.inf


def _finished_run(spec: JobSpec, uri: str) -> dict[str, float] | None:
    """The metrics of this trial's child run if it already ended FINISHED, else None."""
    run_id = tracking.run_id_of(spec)
    info = tracking.find_run(uri, run_id) if run_id else None  # None: not in this store, run the trial
    return tracking.final_metrics(info["metrics"]) if info and info["status"] == "FINISHED" else None


class TrialPreempted(RuntimeError):
    """A trial whose workers were preempted (SIGTERM) and stopped at a checkpoint: it fails for Tune,
    so that Tune's retry (``search.max_failures``) or ``hyperctl resume`` continues it from that
    checkpoint, instead of recording the result of a run that did not finish."""


def run_trial(config: dict[str, Any], setup: dict[str, Any]) -> None:
    """Tune's trainable for one trial (runs in a Tune trial actor, which reserves no CPU: the
    trial's Train workers hold its resources)."""
    from ray import tune  # deferred: see the module's docstring

    base = validate_job(setup["spec"], "campaign")
    assert base.search is not None
    metric, mode = str(base.search.metric), str(base.search.mode)
    trial_id = tune.get_context().get_trial_id()
    sampled = {k: config[k] for k in setup["keys"]}
    spec = trial_spec(base, sampled, trial_id)
    uri = setup["tracking_uri"]
    done = _finished_run(spec, uri)
    if done is not None:  # finished before the campaign's driver died, but not yet recorded by Tune
        tune.report({**done, "step": spec.train.max_steps or done.get("step", 0), "trial_state": "completed"})
        return
    # The sampled values must suit the prepared data too (the campaign's start-up checked the base spec):
    # a trial that cannot run fails here, told, before its run exists.
    problems = task_of(spec).check_prepared(spec, setup["prepared"])
    if problems:
        tune.report({"step": 0, metric: _worst(mode), "trial_state": "failed", "error": "; ".join(problems)})
        return
    run_id, resumed = tracking.open_child_run(
        spec,
        uri,
        setup["parent_run_id"],
        trial_id,
        sampled,
        tags={tracking.TAG_CAMPAIGN: base.name, TAG_KIND: "trial"},
        task_aliases=task_of(spec).aliases,
    )
    if not resumed:
        tracking.log_job_files(uri, run_id, spec, setup["data_root"], setup["manifest"])
    failure_file = storage.join(run_dir(spec), FAILURE_FILE)
    storage.delete(failure_file)
    preemption.clear(run_dir(spec))

    total_steps = spec.train.max_steps
    report_cls = _report_to_tune_class()
    trainer = build_trainer(
        spec, setup["data_root"], uri, run_id, callbacks=[report_cls(metric, total_steps)], report_evals=True
    )
    try:
        result = trainer.fit()
        if getattr(result, "error", None):
            raise result.error
    except Exception as e:  # a crashed trial: FAILED now, reopened (same run) if Tune relaunches it
        recorded = failure.recorded_error(failure_file)
        if recorded is None and "Worker exit type: INTEND" in str(e):
            # Tune ended this trial on purpose (an ASHA stop, a stopped campaign): the driver ends its run
            # (close_trial_runs, KILLED and tagged). Closing it here too raced with that under load.
            raise
        # Only if still running: Tune can deliver an ASHA stop to fit() after the driver has already ended
        # the trial's run KILLED (close_trial_runs); that must stay KILLED.
        tracking.close_run(uri, run_id, recorded or failure.describe(e), only_if_running=True)
        if recorded is None:
            raise
    preempted = preemption.read_outcome(run_dir(spec))
    if preempted is not None:  # a worker's SIGTERM: stopped at a checkpoint, not finished
        step = int(preempted["step"])
        why = f"trial preempted ({preempted['by']}) at step {step}; its checkpoint is kept, a relaunch resumes from it"
        tags = {tracking.TAG_PREEMPTED: str(step), tracking.TAG_ERROR: f"interrupted: {why}"}
        tracking.end_run(uri, run_id, "KILLED", tags)
        raise TrialPreempted(why)
    recorded = failure.recorded_error(failure_file)
    if recorded is not None:  # a deterministic worker error: a failed trial that a retry would repeat
        tracking.close_run(uri, run_id, recorded, only_if_running=True)
        tune.report({"step": 0, metric: _worst(mode), "trial_state": "failed"})
        return
    if storage.exists(failure_file):  # diverged: a (bad) result, not a crash to retry
        info = json.loads(storage.read_bytes(failure_file))
        tracking.close_run(uri, run_id, info["error"])
        tune.report({"step": int(info["step"]), metric: _worst(mode), "trial_state": "diverged"})
        return
    tracking.close_run(uri, run_id)
    final = tracking.final_metrics(tracking.describe_run(uri, run_id)["metrics"])
    tune.report(
        {
            **{k: v for k, v in final.items() if isinstance(v, (int, float))},
            "step": total_steps or final.get("step", 0),
            "trial_state": "completed",
        }
    )


# ---- progress in the driver ---------------------------------------------------------------------


def _progress_callback_class() -> Any:
    from ray.tune import Callback

    class Progress(Callback):
        """One line per reported eval and per trial end, on the driver's stdout."""

        def __init__(self, metric: str) -> None:
            self.metric = metric

        def on_trial_start(self, iteration, trials, trial, **info):
            print(f"[trial] {trial.trial_id} started: {fmt_config(trial.config)}", flush=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            value = result.get(self.metric)
            if isinstance(value, (int, float)):
                print(
                    f"[trial] {trial.trial_id} step {result.get('step', '?'):>7} {self.metric} {value:.4f}", flush=True
                )

        def on_trial_complete(self, iteration, trials, trial, **info):
            state = (trial.last_result or {}).get("trial_state", "stopped early")
            print(f"[trial] {trial.trial_id} ended: {state}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"[trial] {trial.trial_id} failed (see its MLflow run)", flush=True)

    return Progress


# ---- the campaign driver ------------------------------------------------------------------------


@dataclass
class CampaignOutcome:
    parent_run_id: str
    tracking_uri: str
    path: str
    ok: bool
    trials: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    error: str | None = None
    interrupted: bool = False  # stopped (`hyperctl stop`, SIGTERM, Ctrl-C) with trials unfinished

    @property
    def status(self) -> str:
        """The parent run's MLflow status."""
        return "KILLED" if self.interrupted else "FINISHED" if self.ok else "FAILED"


def _driver_record(spec: JobSpec) -> dict[str, Any] | None:
    path = storage.join(run_dir(spec), DRIVER_FILE)
    if not storage.exists(path):
        return None
    return json.loads(storage.read_bytes(path))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited driver its parent has not reaped yet (a zombie) has stopped
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def driver_running(spec: JobSpec) -> int | None:
    """The pid of this campaign's driver if it runs on this host, else None."""
    rec = _driver_record(spec)
    if rec and rec.get("host") == socket.gethostname() and _pid_alive(int(rec["pid"])):
        return int(rec["pid"])
    return None


def can_resume(spec: JobSpec) -> bool:
    from ray.tune import Tuner

    return storage.exists(run_dir(spec)) and Tuner.can_restore(run_dir(spec))


def _sigterm_as_sigint() -> None:
    """SIGTERM (`hyperctl stop`, `ray job stop`) as SIGINT: Tune then stops the experiment
    gracefully, saving its state for a resume, and the driver ends the MLflow runs."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))


def run_campaign(
    spec: JobSpec,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    verbose: bool = False,
    resume: bool = False,
    out: TextIO | None = None,
) -> CampaignOutcome:
    """Run (or, when ``<storage>/<campaign>`` holds its Tune state, continue) the campaign ``spec``.
    ``resume=True`` insists on continuing an existing campaign."""
    import ray  # deferred: see the module's docstring
    from ray import tune

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    if spec.search is None:
        raise JobSpecError(spec.name, ["not a campaign: the job has no search section"])
    spec = absolute_storage(spec)
    search = spec.search
    assert search is not None
    running = driver_running(spec)
    if running is not None and running != os.getpid():
        raise CampaignError(f"campaign {spec.name!r} is already running (driver pid {running})")
    if resume and not can_resume(spec):
        raise CampaignError(f"no campaign to resume at {run_dir(spec)} (submit it first)")
    exists = can_resume(spec)

    started = start(spec, address=address, num_cpus=num_cpus, verbose=verbose, say=say)
    _sigterm_as_sigint()
    spec, prepared, uri, cluster = started.spec, started.prepared, started.tracking_uri, started.cluster
    parent_id, reopened = tracking.open_run(
        spec,
        uri,
        {
            TAG_KIND: "campaign",
            tracking.TAG_CAMPAIGN: spec.name,
            tracking.TAG_RAY_JOB: ray.get_runtime_context().get_job_id(),
        },
        task_aliases=started.task.aliases,
    )
    tracking.log_job_files(uri, parent_id, spec, prepared.root, prepared.manifest)
    storage.write_bytes_atomic(
        storage.join(run_dir(spec), DRIVER_FILE),
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode(),
    )
    say(
        f"[mlflow] campaign run {parent_id} ({'resumed' if reopened else 'new'}) in {tracking.redact(uri)}, "
        f"experiment {spec.tracking.experiment!r}"
    )

    r = spec.resources
    per_trial_cpu = r.workers * r.cpus_per_worker
    concurrent = search.max_concurrent or max(1, int(cluster.get("CPU", 1.0) // per_trial_cpu))
    setup = {
        "spec": spec.model_dump(mode="json"),
        "keys": searched_keys(spec),
        "tracking_uri": uri,
        "parent_run_id": parent_id,
        "data_root": prepared.root,
        "manifest": prepared.manifest,
        "prepared": prepared,
    }
    # The trial's driver function only waits on its TorchTrainer: it holds no CPU (the Train workers
    # hold the trial's resources), only a token of memory, as Tune needs a non-empty request.
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), {"cpu": 0, "memory": 2**20})
    space, num_samples = param_space(spec)
    storage_path, filesystem = storage.storage_options_for_ray(spec.storage)

    if exists:
        say(f"[tune]  resuming {run_dir(spec)}: unfinished trials continue, finished ones are kept")
        tuner = tune.Tuner.restore(
            run_dir(spec),
            trainable,
            resume_unfinished=True,
            resume_errored=True,
            restart_errored=False,
            storage_filesystem=filesystem,
        )
    else:
        say(
            f"[tune]  {search.algorithm} search over {', '.join(searched_keys(spec))}: {num_samples} sample(s), "
            f"{concurrent} at a time, scheduler {search.scheduler.name}, metric {search.metric} ({search.mode})"
        )
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=search.metric,
                mode=search.mode,
                num_samples=num_samples,
                time_budget_s=search.time_budget_s,
                search_alg=_search_alg(spec, concurrent),
                scheduler=_scheduler(spec),
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=storage_path,
                storage_filesystem=filesystem,
                failure_config=tune.FailureConfig(max_failures=search.max_failures),
                callbacks=[_progress_callback_class()(search.metric)],
                verbose=1 if verbose else 0,
            ),
        )
    error: str | None = None
    try:
        tuner.fit()
    except KeyboardInterrupt:
        error = "interrupted"
    except Exception as e:  # noqa: BLE001 - the experiment itself failed
        error = f"{type(e).__name__}: {e}"
    trials = collect_trials(spec)
    unfinished = [t for t in trials if t["state"] in UNFINISHED]
    interrupted = error == "interrupted" or bool(unfinished)  # `hyperctl stop`, Ctrl-C: Tune returns normally
    if interrupted:
        error = (
            f"interrupted with {len(unfinished)} unfinished trial(s); `hyperctl resume` of the campaign's "
            "job file continues them (finished trials are kept)"
        )
    close_trial_runs(spec, uri, trials, interrupted=interrupted)
    best = None
    try:
        best = write_summary(spec, uri, parent_id, trials)
    except Exception as e:  # noqa: BLE001 - a summary problem must not hide the campaign's outcome
        say(f"[warn]  summary not written: {type(e).__name__}: {e}")
    if best and not interrupted:
        register_best(spec, uri, parent_id, best, say)
    if interrupted:
        tracking.end_run(uri, parent_id, "KILLED", {tracking.TAG_ERROR: str(error)})
    else:
        tracking.close_run(uri, parent_id, error)
    storage.delete(storage.join(run_dir(spec), DRIVER_FILE))
    for line in format_trials(spec, trials).splitlines():
        say(line)
    for t in trials:
        if t["error"]:
            say(f"[trial] {t['trial']} failed: {t['error']}")
    if best:
        say(f"[best]  trial {best['trial']} {search.metric} {best['value']:.4f}: {fmt_config(best['config'])}")
    outcome = CampaignOutcome(
        parent_run_id=parent_id,
        tracking_uri=uri,
        path=run_dir(spec),
        ok=error is None,
        trials=trials,
        best=best,
        error=error,
        interrupted=interrupted,
    )
    say(f"[mlflow] campaign run {parent_id}: {outcome.status}" + (f" ({error})" if error else ""))
    return outcome


# ---- the trials: state from Tune's experiment, runs from MLflow ----------------------------------


def register_best(
    spec: JobSpec, uri: str, parent_id: str, best: dict[str, Any], say: Callable[[str], None]
) -> str | None:
    """With ``tracking.register_model: NAME``, the best trial's final model as a new version of NAME
    (one version per campaign; the trials themselves register nothing), tagged on the campaign's run
    and the trial's; returns ``models:/NAME/VERSION``, or None (said) when the trial logged no model."""
    name = spec.tracking.register_model
    if name is None or not best.get("run_id"):
        return None
    try:
        version = tracking.register_run_model(uri, best["run_id"], name)
    except Exception as e:  # noqa: BLE001 - a registry problem must not hide the campaign's outcome
        say(f"[warn]  best trial {best['trial']}: model not registered: {type(e).__name__}: {e}")
        return None
    model = f"models:/{name}/{version}"
    for run_id in (parent_id, best["run_id"]):
        tracking.RunLog(uri, run_id).set_tags(**{tracking.TAG_REGISTERED: model})
    say(f"[model] best trial {best['trial']}'s model registered as {model}")
    return model


def collect_trials(spec: JobSpec) -> list[dict[str, Any]]:
    """Every trial of the campaign from its Tune experiment state: id, Tune status, our state
    (completed / stopped early / diverged / failed / running / pending), sampled values, steps, the
    last reported metric, the child run id. Readable without a running Ray instance."""
    from ray.tune import ExperimentAnalysis

    assert spec.search is not None
    metric = spec.search.metric
    path = run_dir(spec)
    try:
        analysis = ExperimentAnalysis(path, storage_filesystem=storage.storage_options_for_ray(spec.storage)[1])
    except Exception:  # noqa: BLE001 - no state written yet
        return []
    keys = searched_keys(spec)
    rows = []
    for trial in sorted(analysis.trials, key=lambda t: t.trial_id):
        last = trial.last_result or {}
        status = trial.status
        if status == "TERMINATED":
            state = last.get("trial_state", "stopped early")
        elif status == "ERROR":
            state = "failed"
        else:
            state = status.lower()
        name = trial_name(spec.name, trial.trial_id)
        id_file = storage.join(run_dir(spec), name, tracking.RUN_ID_FILE)
        value = last.get(metric)
        frame = analysis.trial_dataframes.get(trial.trial_id)
        history = []
        if frame is not None and metric in frame and "step" in frame:
            history = [
                (int(st), float(v))
                for st, v in zip(frame["step"], frame[metric], strict=True)
                if isinstance(v, (int, float)) and not math.isnan(v)
            ]
        rows.append(
            {
                "history": history,
                "trial": trial.trial_id,
                "status": status,
                "state": state,
                "config": {k: trial.config.get(k) for k in keys},
                "step": last.get("step"),
                "value": float(value) if isinstance(value, (int, float)) else None,
                "run_id": storage.read_bytes(id_file).decode().strip() if storage.exists(id_file) else None,
                "error": last.get("error"),  # why a trial failed before it started (run_trial)
            }
        )
    return rows


def close_trial_runs(spec: JobSpec, uri: str, trials: list[dict[str, Any]], interrupted: bool) -> None:
    """End the child runs Tune ended without the trial doing so: stopped early by ASHA (KILLED,
    tagged), failed (FAILED), or cut off by a stopped campaign (KILLED; a resume reopens them)."""
    assert spec.search is not None
    for t in trials:
        if not t["run_id"]:
            continue
        if t["state"] == "stopped early":
            # Stopped between checkpoints: its run holds the metric up to the last checkpoint; the
            # evals Tune received after it (the ones ASHA judged) are added.
            tracking.append_metric(uri, t["run_id"], str(spec.search.metric), t["history"])
            # Tune's stop can reach the trial's fit() as an exception first, which closed its run
            # FAILED: a trial stopped by the scheduler is KILLED, whichever came first.
            tracking.end_run(
                uri, t["run_id"], "KILLED", {TAG_STOPPED: f"asha at step {t['step']}"}, replace=("FAILED",)
            )
        elif t["state"] == "failed":
            tracking.end_run(uri, t["run_id"], "FAILED")
        elif interrupted and t["state"] in UNFINISHED:
            tracking.end_run(uri, t["run_id"], "KILLED", {tracking.TAG_ERROR: "campaign stopped; resume it"})


# ---- status and stop (local) --------------------------------------------------------------------


def campaign_status(spec: JobSpec) -> dict[str, Any]:
    """The campaign's trials and whether its driver runs, from ``<storage>/<campaign>``."""
    spec = absolute_storage(spec)
    trials = collect_trials(spec)
    pid = driver_running(spec)
    state = (
        "running"
        if pid
        else (
            "not started"
            if not trials
            else "finished"
            if all(t["status"] in ("TERMINATED", "ERROR") for t in trials)
            else "interrupted (hyperctl resume continues it)"
        )
    )
    return {"campaign": spec.name, "path": run_dir(spec), "state": state, "driver_pid": pid, "trials": trials}


def stop_campaign(spec: JobSpec, wait_s: float = 120.0) -> bool | None:
    """Ask this host's running driver to stop (SIGTERM: Tune saves its state and the driver ends
    the MLflow runs); returns True once it has exited, None if it still runs after ``wait_s``,
    False if none was running."""
    spec = absolute_storage(spec)
    pid = driver_running(spec)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.5)
    return None if _pid_alive(pid) else True


__all__ = [
    "CampaignError",
    "CampaignOutcome",
    "campaign_status",
    "close_trial_runs",
    "collect_trials",
    "param_space",
    "run_campaign",
    "run_trial",
    "stop_campaign",
    "register_best",
    "trial_spec",
]
