"""``hyperctl``: validate, submit, watch, stop and list HyperNetworks training jobs.

Each subcommand is a function ``cmd_<name>(args) -> int`` registered in :func:`build_parser`.
Exit codes: 0 success, 1 the job failed or was stopped, 2 bad input (job spec, arguments,
unreachable storage or Ray cluster, unknown submission id), 130 interrupted (Ctrl-C, SIGTERM; a job
preempted by SIGTERM has checkpointed the step it reached, and the same command resumes it).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .driver import jobs_api
from .driver.jobs_api import ClusterError
from .driver.local import cluster_address
from .driver.preflight import check_job
from .driver.runs import list_runs
from .exitcodes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from .io import tracking
from .io.tracking import find_run, mark_training_experiments, redact, run_id_of, store_exists, tracking_uri_for
from .localcluster.cluster import add_parser as add_cluster_parser
from .localcluster.ui import serve_ui
from .paths import run_dir
from .spec.errors import JobSpecError
from .spec.loading import load_job, validate_job
from .spec.schema import JobSpec
from .tasks import DEFAULT_TASK, TASKS, CommandKit, task_named, task_of

if TYPE_CHECKING:
    from .driver.local import RunOutcome


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job YAML file (see jobs/)")
    add_overrides(p)


def add_overrides(
    p: argparse.ArgumentParser, help: str = "override a spec field, e.g. --set model.hyper.embed_size=16 (repeatable)"
) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help=help)


# what list, status and ui say of --set: the job file is read as it was submitted
FIND_AGAIN = "an override the job was submitted with (repeatable): its store and run are found with it"


def cmd_validate(args: argparse.Namespace) -> int:
    """Print the fully resolved spec (defaults filled in) and the model's parameter count."""
    spec = load_job(args.job, args.overrides)
    check_job(spec, source=args.job)
    resolved = spec.model_dump(mode="json")
    params = task_of(spec).parameter_count(spec)
    if args.json:
        print(json.dumps({"spec": resolved, "parameters": params}, indent=2))
    else:
        print(yaml.safe_dump(resolved, sort_keys=False).rstrip())
        print(f"# model parameters: {params:,} ({params / 1e6:.2f}M)")
        print(f"# {args.job}: valid")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    """Every key of a task's job, with its type, default and description (the default task without
    TASK). --json prints a JSON Schema of every task's jobs instead, for editors: e.g. with the YAML
    language server, save it as hyperctl-job.schema.json and start a job file with
    `# yaml-language-server: $schema=hyperctl-job.schema.json`."""
    from .spec.reference import format_reference, json_schema

    task = task_named(args.task_name or DEFAULT_TASK, "schema")
    if args.json:
        chosen = [task] if args.task_name else list(TASKS.values())
        print(json.dumps(json_schema({t.name: t.job_class for t in chosen}), indent=2))
        return EXIT_OK
    others = ", ".join(t.name for t in TASKS.values() if t is not task)
    title = (
        f"# task: {task.name}: every key of its jobs (dotted; `required` has no default)\n"
        f"# other tasks: {others} (hyperctl schema TASK); JSON Schema for editors: hyperctl schema --json"
    )
    print(format_reference(task.job_class, title))
    return EXIT_OK


# ---- running jobs ------------------------------------------------------------------------------


def _address(args: argparse.Namespace) -> str | None:
    return cluster_address(getattr(args, "address", None))


def _run_foreground(args: argparse.Namespace, spec: JobSpec) -> int:
    """Run a job or campaign here (preflight runs once, in its start-up, before Ray starts)."""
    if _address(args):
        # Joining a running instance: `ray start` turns token auth on, so its token is used when at hand
        # (Ray reads the mode when it is first imported, which is below).
        jobs_api.use_token_auth()
    if spec.search is not None:  # a search campaign (service/driver/campaign.py)
        return _run_campaign(args, spec)
    from .driver.local import run_job  # deferred, as every driver import here: torch, Ray and MLflow

    try:
        outcome = run_job(
            spec,
            address=_address(args),
            num_cpus=args.num_cpus,
            verbose=args.verbose,
            overrides=getattr(args, "overrides", ()),
        )
    except KeyboardInterrupt as e:
        why = f" ({e})" if str(e) else ""
        print(
            f"[stopped] interrupted{why}: the MLflow run is marked KILLED; relaunch the job to resume it",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_INTERRUPTED
    preempted = outcome.preempted_at_step is not None
    print(
        json.dumps(
            {
                "run_id": outcome.run_id,
                "tracking_uri": outcome.tracking_uri,
                "run_path": outcome.run_path,
                "status": "KILLED" if preempted else "FINISHED" if outcome.ok else "FAILED",
                "metrics": {k: outcome.metrics[k] for k in sorted(outcome.metrics)},
                **({"preempted_at_step": outcome.preempted_at_step} if preempted else {}),
            },
            indent=2,
        )
    )
    if preempted:
        command = shlex.join(["hyperctl", *sys.argv[1:]])
        print(
            f"[stopped] preempted at step {outcome.preempted_at_step}: its checkpoint is in {outcome.run_path}; "
            f"the MLflow run is marked KILLED. Resume from that step with the same command: {command}",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_INTERRUPTED
    _print_next_steps(args, spec, outcome)
    return EXIT_OK if outcome.ok else EXIT_FAILED


def _print_next_steps(args: argparse.Namespace, spec: JobSpec, outcome: RunOutcome) -> None:
    """Where a finished run's results are and what to do next, for people (stderr; stdout keeps the
    JSON summary for scripts)."""
    task = task_of(spec)
    shown = [m for m in (task.metrics.valid, task.metrics.test) if m in outcome.metrics]
    figures = ", ".join(f"{m} {outcome.metrics[m]:.4g}" for m in shown)
    sets = "".join(f" --set {shlex.quote(o)}" for o in args.overrides)
    job = shlex.quote(args.job) if getattr(args, "job", None) else None
    lines = [
        f"[done] {spec.name}: {'FINISHED' if outcome.ok else 'FAILED'}" + (f" ({figures})" if figures else ""),
        f"  checkpoints: {outcome.run_path}",
        f"  artifacts:   {outcome.artifact_uri}  (learning curve, samples, plots)",
        f"  run page:    {tracking.run_page(outcome.tracking_uri, outcome.experiment_id, outcome.run_id)}",
    ]
    if outcome.ok:
        registered = f"; registered as {outcome.registered_model}" if outcome.registered_model else ""
        lines.append(f"  model:       runs:/{outcome.run_id}/model{registered}  (evaluate, translate, sample)")
    if job is not None and not outcome.tracking_uri.startswith(("http://", "https://")):
        lines.append(f"  open it:     hyperctl ui {job}{sets}   (then the run page above)")
    if job is not None and outcome.ok:
        variant = shlex.quote(f"name={spec.name}-2")
        lines.append(
            f"  a variant:   hyperctl submit {job}{sets} --set {variant} --set KEY=VALUE   (hyperctl schema: the keys)"
        )
    elif job is not None:
        lines.append(f"  retry:       hyperctl submit {job}{sets}   (resumes from the latest checkpoint)")
    print("\n".join(lines), file=sys.stderr, flush=True)


def cmd_submit(args: argparse.Namespace) -> int:
    """Run a job. Without --address (and RAY_ADDRESS) it runs on a local Ray instance in the foreground,
    printing progress, and exits 1 if the job fails. With --address http://HOST:8265 it is submitted
    to that Ray cluster through the Jobs API (entrypoint `hyperctl run ...`, this project as the
    working_dir); the submission id is printed and, unless --detach, its logs are followed until the
    job ends, exiting 0 if it SUCCEEDED and 1 otherwise. The job's resources are checked on the
    cluster, not here (nodes may be added by its autoscaler); credentials are never sent with the
    job (the cluster's nodes have their own). With --address HOST:PORT (a running instance's GCS
    address) or --address auto (the one `ray start --head` left running on this machine) it runs here in
    the foreground, joined to that instance: a warm start, without starting Ray for every job.
    Relaunching a job of the same name and storage resumes it from its latest checkpoint, in the same
    MLflow run."""
    spec = load_job(args.job, args.overrides)
    address = _address(args)
    if not address or not address.startswith(("http://", "https://")):
        # No address: a new local instance. A GCS address (HOST:PORT) or "auto": run here, joined to that
        # running instance (a warm start: no Ray start-up per job).
        return _run_foreground(args, spec)
    # Checked here for a quick answer; the cluster's resources are checked by `hyperctl run` there
    # (its files and storage too, as the cluster sees them), not against this machine.
    check_job(spec, check_resources=False)
    submission_id = jobs_api.submit_to_cluster(address, args.job, args.overrides, spec)
    print(f"submitted {spec.name!r} as {submission_id} to {address}")
    print(f"  follow:  hyperctl logs {submission_id} -f --address {address}")
    print(f"  stop:    hyperctl stop {submission_id} --address {address}")
    if args.detach:
        return EXIT_OK
    status = jobs_api.follow_job(address, submission_id)
    print(f"job {submission_id}: {status}")
    return EXIT_OK if status == "SUCCEEDED" else EXIT_FAILED


def cmd_run(args: argparse.Namespace) -> int:
    """The in-cluster entrypoint of a submitted job (also usable locally): run the job in the
    foreground on the Ray instance at RAY_ADDRESS (a local one if unset)."""
    if args.spec_json:
        spec = validate_job(json.loads(args.spec_json), "--spec-json")
    elif args.job:
        spec = load_job(args.job, args.overrides)
    else:
        raise JobSpecError("run", ["give a job YAML file or --spec-json"])
    return _run_foreground(args, spec)


def cmd_status(args: argparse.Namespace) -> int:
    """Status of a submitted job (or of every job when no ID is given) on the Ray cluster; given a
    job's YAML file instead, of that job's MLflow run (with the --set overrides and --storage it was
    submitted with) or of that campaign's trials. Exit 0 when the job is known, whatever its
    status; 2 when it is not."""
    if args.id and _is_job_file(args.id):  # a local search campaign
        return cmd_campaign_status(args)
    address = _required_address(args)
    if not args.id:
        return cmd_list(args)
    info = jobs_api.job_call(address, "get_job_info", args.id)
    print(
        json.dumps(
            {
                "submission_id": args.id,
                "status": str(info.status.value),
                "message": info.message,
                "entrypoint": info.entrypoint,
                "start_time": info.start_time,
                "end_time": info.end_time,
            },
            indent=2,
        )
    )
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    """Print a submitted job's logs; with -f follow them until the job ends and exit 0 if it
    SUCCEEDED, 1 otherwise."""
    address = _required_address(args)
    if args.follow:
        status = jobs_api.follow_job(address, args.id)
        print(f"job {args.id}: {status}")
        return EXIT_OK if status == "SUCCEEDED" else EXIT_FAILED
    print(jobs_api.job_call(address, "get_job_logs", args.id), end="")
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop a submitted job: SIGTERM to its driver, which marks its MLflow run KILLED, then SIGKILL
    after a grace period. Exit 0 when the job is stopped or had already ended (its status is
    printed), 2 for an unknown id. With --wait, return once the job has ended."""
    if _is_job_file(args.id):  # a local search campaign
        return cmd_campaign_stop(args)
    address = _required_address(args)
    requested = jobs_api.job_call(address, "stop_job", args.id)
    status = str(jobs_api.job_call(address, "get_job_status", args.id).value)
    if not requested:
        print(f"{args.id}: not running ({status})")
        return EXIT_OK
    print(f"{args.id}: stop requested", flush=True)
    if args.wait:
        deadline = time.monotonic() + jobs_api.STOP_GRACE_S + 60
        while status in ("PENDING", "RUNNING") and time.monotonic() < deadline:
            time.sleep(1)
            status = str(jobs_api.job_call(address, "get_job_status", args.id).value)
        print(f"{args.id}: {status}")
        if status in ("PENDING", "RUNNING"):
            return EXIT_FAILED
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    """List jobs: the Ray cluster's submitted jobs with --address (or RAY_ADDRESS); otherwise the
    MLflow runs of a local tracking store (--tracking-uri, or the sqlite store under --storage)."""
    address = _address(args)
    if address:
        jobs = sorted(jobs_api.job_call(address, "list_jobs"), key=lambda j: j.start_time or 0)
        print(f"{'SUBMISSION ID':<28} {'STATUS':<10} ENTRYPOINT")
        for j in jobs:
            print(f"{j.submission_id or j.job_id:<28} {j.status.value:<10} {j.entrypoint}")
        return EXIT_OK
    uri = _tracking_uri(args)
    rows = list_runs(uri)
    print(f"store: {redact(uri)}")
    if not rows:
        print(f"no runs in {redact(uri)}" + ("" if store_exists(uri) else " (no store there yet)"))
        return EXIT_OK
    print(f"{'RUN ID':<34} {'STATUS':<9} {'JOB':<28} {'TASK':<20} {'STEP':>7} {'METRIC':<6} {'VALID':>9} {'TEST':>9}")
    for r in rows:
        fmt = lambda v: f"{v:9.4f}" if isinstance(v, float) else f"{'-':>9}"  # noqa: E731
        print(
            f"{r['run_id']:<34} {r['status']:<9} {r['job']:<28} {r['task']:<20} {r['step']:>7} {r['metric']:<6} "
            f"{fmt(r['valid'])} {fmt(r['test'])}"
        )
    return EXIT_OK


def cmd_ui(args: argparse.Namespace) -> int:
    """Start the MLflow UI on 127.0.0.1 for a job's tracking store (from JOB.yaml, --tracking-uri or
    --storage) and print its address once it answers; Ctrl-C (or SIGTERM) stops it and its server.
    An http:// tracking URI is a server already: its address is printed."""
    uri = _tracking_uri(args)
    if uri.startswith(("http://", "https://")):
        print(f"tracking server: {uri}")
        return EXIT_OK
    if not store_exists(uri):  # the server would create an empty store: nothing to look at
        print(f"no runs in {redact(uri)} (no store there yet); nothing is started")
        return EXIT_OK
    experiments = mark_training_experiments(uri)
    if getattr(args, "job", None):  # the job's experiment first
        name = _job_of(args, args.job).tracking.experiment
        experiments = {k: v for k, v in experiments.items() if k == name} | experiments
    return serve_ui(uri, args.port, experiments)


def _required_address(args: argparse.Namespace) -> str:
    address = _address(args)
    if not address:
        raise JobSpecError("--address", ["no Ray cluster given: pass --address http://HOST:8265 or set RAY_ADDRESS"])
    return address


def _tracking_uri(args: argparse.Namespace) -> str:
    """The tracking store named by --tracking-uri, else by the ``job`` argument's file (with its
    --set overrides and --storage), else by --storage (its sqlite store; default ./runs)."""
    if getattr(args, "tracking_uri", None):
        return args.tracking_uri
    if getattr(args, "job", None):
        return tracking_uri_for(_job_of(args, args.job))
    storage = getattr(args, "storage", None) or DEFAULT_STORAGE
    return tracking_uri_for(validate_job({"name": "x", "train": {"max_steps": 1}, "storage": storage}))


def _job_of(args: argparse.Namespace, path: str) -> JobSpec:
    """The job file ``path`` of a command that finds a submitted job again: with the command's --set
    overrides, as at submission, and its --storage when given (it wins over the file's)."""
    overrides = list(getattr(args, "overrides", None) or [])
    if getattr(args, "storage", None):
        overrides.append(f"storage={json.dumps(args.storage)}")  # a JSON string is YAML: any path survives
    return load_job(path, overrides)


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        help="Ray cluster: its Jobs API, e.g. http://127.0.0.1:8265; for submit also a running instance to "
        "join from here, HOST:PORT or auto (warm start) (default: RAY_ADDRESS; token auth from "
        "~/.ray/auth_token is used automatically)",
    )


DEFAULT_STORAGE = "./runs"


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (sqlite:///..., http://...)")
    p.add_argument(
        "--storage",
        help="job storage folder whose sqlite store to read when no URI is given (default: the job "
        f"file's storage, else {DEFAULT_STORAGE})",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        help="CPUs of the local Ray instance (default: all); ignored on a cluster",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show Ray's own logs and the workers' output")


# ---- search campaigns (service/driver/campaign.py) ----------------------------------------------------


def _is_job_file(value: str) -> bool:
    return value.endswith((".yaml", ".yml")) and Path(value).is_file()


def _run_campaign(args: argparse.Namespace, spec: JobSpec, resume: bool = False) -> int:
    from .driver.campaign import CampaignError, run_campaign

    try:
        outcome = run_campaign(
            spec,
            address=_address(args),
            num_cpus=getattr(args, "num_cpus", None),
            verbose=getattr(args, "verbose", False),
            resume=resume,
        )
    except CampaignError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("[stopped] interrupted: `hyperctl resume` continues the campaign", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    print(
        json.dumps(
            {
                "campaign": spec.name,
                "parent_run_id": outcome.parent_run_id,
                "tracking_uri": outcome.tracking_uri,
                "path": outcome.path,
                "status": outcome.status,
                "error": outcome.error,
                "best": outcome.best and {k: outcome.best[k] for k in ("trial", "run_id", "value", "config")},
                "trials": [
                    {k: t[k] for k in ("trial", "state", "step", "value", "run_id", "config")} for t in outcome.trials
                ],
            },
            indent=2,
            default=str,
        )
    )
    return EXIT_INTERRUPTED if outcome.interrupted else EXIT_OK if outcome.ok else EXIT_FAILED


def _campaign_spec(path: str, overrides: list[str] | None = None) -> JobSpec:
    spec = load_job(path, overrides or [])
    if spec.search is None:
        raise JobSpecError(path, ["not a campaign: the job has no search section (use hyperctl submit)"])
    return spec


def cmd_tune(args: argparse.Namespace) -> int:
    """Run a search campaign (a job with a search: section) on a local Ray instance in the
    foreground: every trial is a whole data-parallel training job, ASHA may stop it early, and MLflow
    holds one parent run with a nested run per trial and the campaign's summary. Running it again
    with the same name and storage continues it (as `hyperctl resume`)."""
    spec = _campaign_spec(args.job, args.overrides)
    return _run_foreground(args, spec)


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue a campaign whose driver died or was stopped: unfinished trials continue from their
    checkpoints, finished ones are kept, no MLflow run is duplicated. Exit 2 when there is nothing
    to resume."""
    spec = _campaign_spec(args.job, args.overrides)
    return _run_campaign(args, spec, resume=True)


def cmd_campaign_status(args: argparse.Namespace) -> int:
    """`hyperctl status CAMPAIGN.yaml`: the campaign's trials and their state (from its storage);
    `hyperctl status JOB.yaml`: the job's MLflow run (see :func:`cmd_job_status`)."""
    spec = _job_of(args, args.id)
    if spec.search is None:
        return cmd_job_status(args, spec)
    from .driver.campaign import campaign_status, format_trials  # deferred: torch, Ray

    status = campaign_status(spec)
    if getattr(args, "json", False):
        status["trials"] = [{k: v for k, v in t.items() if k != "history"} for t in status["trials"]]
        print(json.dumps(status, indent=2, default=str))
        return EXIT_OK
    print(f"campaign {status['campaign']}: {status['state']} ({len(status['trials'])} trials; {status['path']})")
    if status["trials"]:
        print(format_trials(spec, status["trials"]))
    return EXIT_OK


def cmd_job_status(args: argparse.Namespace, spec: JobSpec) -> int:
    """`hyperctl status JOB.yaml [--set ...] [--storage ...]`: the job's MLflow run (id, status, latest
    metrics), found through the run id kept in its folder; exit 2 when the job has no run there."""
    run_id = run_id_of(spec)
    found = find_run(tracking_uri_for(spec), run_id) if run_id else None
    if found is None:
        print(
            f"error: {args.id}: no run of job {spec.name!r} under {run_dir(spec)} (was it submitted with "
            f"other --set overrides or another storage? pass the same ones, or --storage)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    print(
        json.dumps(
            {"job": spec.name, "run_id": run_id, "status": found["status"], "run_name": found["run_name"]}
            | {"tracking_uri": redact(tracking_uri_for(spec)), "metrics": dict(sorted(found["metrics"].items()))},
            indent=2,
        )
    )
    return EXIT_OK


def cmd_campaign_stop(args: argparse.Namespace) -> int:
    """`hyperctl stop CAMPAIGN.yaml`: stop this host's campaign driver gracefully (Tune keeps its
    state; `hyperctl resume` continues it)."""
    from .driver.campaign import stop_campaign

    spec = _campaign_spec(args.id)
    stopped = stop_campaign(spec)
    if stopped:
        print(f"campaign {spec.name}: stopped (hyperctl resume {args.id} continues it)")
        return EXIT_OK
    if stopped is None:
        print(f"campaign {spec.name}: asked to stop, but its driver still runs after 120 s", file=sys.stderr)
        return EXIT_FAILED
    print(f"campaign {spec.name}: not running")
    return EXIT_OK


_EVAL_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a trained model on given data and print the result: a char LM's bits per character
    on a text file (--text) or a split of its own data (--split valid|test), a translator's BLEU on
    --source and --reference files (sacreBLEU, its signature printed), an image model's error rate
    on idx --images and --labels (gzip'd or not), a handwriting model's log-loss on a stroke-3 file
    (--strokes) or split. RUN_OR_CHECKPOINT is a run folder (runs/NAME: its newest checkpoint), a
    checkpoint folder (local or s3://), an MLflow run id (its final model), runs:/RUN_ID/model or
    models:/NAME/VERSION (or models:/NAME@ALIAS); the last three read the tracking store of
    JOB.yaml, --tracking-uri or --storage. Without --log nothing is written anywhere; with --log the
    results are added to the model's MLflow run as metrics eval/<name>/<metric> (name: --name, else
    the file's stem or the split). Bad input (a file, an option for another task's models) exits 2."""
    from .io.models import ModelSourceError, open_model
    from .tasks import find_task

    name = _EVAL_NAME.sub("_", args.name).strip("_") if args.name else None
    if args.name is not None and not name:
        raise JobSpecError("--name", [f"--name: expected letters, digits, '.', '_' or '-', found {args.name!r}"])
    try:
        with open_model(args.source, lambda: _tracking_uri(args)) as source:
            task = find_task(source.task)
            if task is None or task.evaluate is None:
                raise ModelSourceError(f"{args.source}: a model of task {source.task!r}, which evaluate does not know")
            foreign = [
                (option, owner)
                for owner, options in args.evaluate_options.items()
                if owner != task.name
                for dest, option in options
                if getattr(args, dest, None) is not None
            ]
            if foreign:
                own = ", ".join(o for _, o in args.evaluate_options.get(task.name, [])) + ", --split"
                option, owner = foreign[0]
                found = f"{args.source} is a {task.name} model (its options: {own})"
                raise JobSpecError(option, [f"{option} is for {owner} models; {found}"])
            target = source.log_target(args.tracking_uri) if args.log else None  # refused before any work
            result = task.evaluate(source, args)
            print(f"model: {source.describe()} ({task.name})")
    except (ModelSourceError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except JobSpecError as e:
        for problem in e.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    name = name or _EVAL_NAME.sub("_", result.name).strip("_") or "eval"
    for line in result.lines:
        print(line)
    metrics = {f"eval/{name}/{k}": v for k, v in result.metrics.items()}
    for key, value in metrics.items():
        print(f"{key} {value:.6g}")
    if target is not None:
        uri, run_id = target
        log = tracking.RunLog(uri, run_id)
        for key, value in metrics.items():
            log.log_metric(key, value)
        log.set_tags(**{f"eval/{name}/{k}": v for k, v in result.tags.items()})
        print(f"logged to run {run_id} in {redact(uri)}")
    return EXIT_OK


def _add_model_source(p: argparse.ArgumentParser) -> None:
    """A trained model's source (see :mod:`service.io.models`), the job whose store holds it, the store."""
    p.add_argument(
        "source",
        metavar="RUN_OR_CHECKPOINT",
        help="run folder, checkpoint folder, MLflow run id, runs:/RUN_ID/model or models:/NAME/VERSION",
    )
    p.add_argument("job", nargs="?", help="job YAML file whose tracking store holds the run or model")
    _add_store(p)


def _add_evaluate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a trained model on given data (bpc, BLEU, error rate, log-loss); --log adds it to its run",
        description=cmd_evaluate.__doc__,
    )
    _add_model_source(p)
    p.add_argument(
        "--split", help="a split of the data the model was trained on: valid or test (where its task has one)"
    )
    p.add_argument(
        "--log", action="store_true", help="add the results to the model's MLflow run as eval/<name>/<metric>"
    )
    p.add_argument("--name", help="the <name> of eval/<name>/<metric> (default: the file's stem, or the split)")
    options: dict[str, list[tuple[str, str]]] = {}
    for task in TASKS.values():
        if task.add_evaluate_arguments is not None:
            group = p.add_argument_group(f"{task.name} models")
            task.add_evaluate_arguments(group)
            options[task.name] = [(a.dest, a.option_strings[0]) for a in group._group_actions]
    p.set_defaults(func=cmd_evaluate, evaluate_options=options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperctl",
        description="Train HyperNetworks models (HyperLSTM language models and translators, static-hypernetwork "
        "convnets, and their baselines) from YAML jobs on Ray, "
        "tracked in MLflow. Without --address (or RAY_ADDRESS) jobs run on a local Ray instance.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  hyperctl validate jobs/quickstart.yaml\n"
        "  hyperctl submit jobs/quickstart.yaml --set train.max_steps=200\n"
        "  hyperctl submit jobs/mnist-test-hyper.yaml\n"
        "  hyperctl submit jobs/multi30k-en-fr-hyperlstm.yaml\n"
        "  echo 'A dog runs on the beach.' | hyperctl translate RUN_ID --storage ./runs\n"
        "  hyperctl evaluate runs/quickstart --split test\n"
        "  hyperctl evaluate models:/ptb-lm/1 --text my.txt --log --storage ./runs\n"
        "  hyperctl sample runs:/RUN_ID/model --prime 'the ' --length 200 --storage ./runs\n",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "validate",
        help="check a job spec and print it resolved, with the parameter count",
        description=cmd_validate.__doc__,
    )
    add_job_arguments(p)
    p.add_argument("--json", action="store_true", help="print the resolved spec as JSON")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "schema",
        help="every key of a task's jobs: type, default, description (--json: JSON Schema)",
        description=cmd_schema.__doc__,
    )
    p.add_argument("task_name", metavar="TASK", nargs="?", help=f"a task: {', '.join(TASKS)} (default {DEFAULT_TASK})")
    p.add_argument("--json", action="store_true", help="print a JSON Schema of jobs instead")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser(
        "submit",
        help="run a job: locally in the foreground, or on a Ray cluster (--address)",
        description=cmd_submit.__doc__,
    )
    add_job_arguments(p)
    _add_address(p)
    p.add_argument("--detach", action="store_true", help="cluster: print the submission id and return")
    _add_run_options(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("run", help="in-cluster entrypoint: run a job in the foreground", description=cmd_run.__doc__)
    p.add_argument("job", nargs="?", help="job YAML file")
    add_overrides(p, "override a spec field (repeatable)")
    p.add_argument("--spec-json", help="the resolved spec as JSON (used for job files outside the project)")
    _add_address(p)
    _add_run_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="status of a submitted job (all jobs without ID)", description=cmd_status.__doc__)
    p.add_argument("id", nargs="?", help="submission id, or a job's or campaign's YAML file")
    _add_address(p)
    _add_store(p)
    add_overrides(p, FIND_AGAIN)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="print or follow a submitted job's logs", description=cmd_logs.__doc__)
    p.add_argument("id", help="submission id")
    p.add_argument("-f", "--follow", action="store_true", help="follow until the job ends; exit with its status")
    _add_address(p)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("stop", help="stop a submitted job", description=cmd_stop.__doc__)
    p.add_argument("id", help="submission id")
    p.add_argument("--wait", action="store_true", help="return once the job has ended; print its status")
    _add_address(p)
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("list", help="list cluster jobs (--address) or local MLflow runs", description=cmd_list.__doc__)
    p.add_argument("job", nargs="?", help="job YAML file whose tracking store to list")
    _add_address(p)
    _add_store(p)
    add_overrides(p, FIND_AGAIN)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("ui", help="start the MLflow UI for a job's tracking store", description=cmd_ui.__doc__)
    p.add_argument("job", nargs="?", help="job YAML file whose tracking store to show")
    _add_store(p)
    add_overrides(p, FIND_AGAIN)
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser(
        "tune", help="run a search campaign (a job with a search: section)", description=cmd_tune.__doc__
    )
    add_job_arguments(p)
    _add_run_options(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("resume", help="continue an interrupted search campaign", description=cmd_resume.__doc__)
    add_job_arguments(p)
    _add_run_options(p)
    p.set_defaults(func=cmd_resume)

    _add_evaluate_parser(sub)
    kit = CommandKit(add_store_options=_add_store, tracking_uri=_tracking_uri, add_model_source=_add_model_source)
    for task in TASKS.values():  # the tasks' own commands, e.g. translate
        if task.add_commands is not None:
            task.add_commands(sub, kit)
    add_cluster_parser(sub)  # hyperctl cluster up|down|status|add-node|remove-node
    return parser


class _StderrLines(logging.Handler):
    """The ``hyperctl`` logger's warnings as ``warning: ...`` lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    log = logging.getLogger("hyperctl")  # e.g. a deprecated task name, said once, in one line
    if not any(isinstance(h, _StderrLines) for h in log.handlers):
        log.addHandler(_StderrLines(logging.WARNING))
        log.propagate = False
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (JobSpecError, ClusterError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
