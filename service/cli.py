"""``hyperctl``: validate, submit, watch, stop and list HyperNetworks training jobs.

Each subcommand is a function ``cmd_<name>(args) -> int`` registered in :func:`build_parser`.
Exit codes: 0 success, 1 the job failed or was stopped, 2 bad input (job spec, arguments,
unreachable storage or Ray cluster, unknown submission id), 130 interrupted (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .driver import jobs_api
from .driver.campaign import CampaignError, campaign_status, format_trials, run_campaign, stop_campaign
from .driver.jobs_api import ClusterError
from .driver.local import cluster_address, run_job
from .driver.preflight import check_job
from .driver.runs import list_runs
from .exitcodes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from .io.tracking import redact, store_exists, tracking_uri_for
from .localcluster.cluster import add_parser as add_cluster_parser
from .spec.errors import JobSpecError
from .spec.loading import load_job, validate_job
from .spec.schema import JobSpec
from .tasks import TASKS, CommandKit, task_of


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job YAML file (see jobs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a spec field, e.g. --set model.hyper.embed_size=16 (repeatable)",
    )


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


# ---- running jobs ------------------------------------------------------------------------------


def _address(args: argparse.Namespace) -> str | None:
    return cluster_address(getattr(args, "address", None))


def _run_foreground(args: argparse.Namespace, spec: JobSpec) -> int:
    """Run a job or campaign here (preflight runs once, in its start-up, before Ray starts)."""
    if spec.search is not None:  # a search campaign (service/driver/campaign.py)
        return _run_campaign(args, spec)
    try:
        outcome = run_job(spec, address=_address(args), num_cpus=args.num_cpus, verbose=args.verbose)
    except KeyboardInterrupt as e:
        why = f" ({e})" if str(e) else ""
        print(
            f"[stopped] interrupted{why}: the MLflow run is marked KILLED; relaunch the job to resume it",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_INTERRUPTED
    print(
        json.dumps(
            {
                "run_id": outcome.run_id,
                "tracking_uri": outcome.tracking_uri,
                "run_path": outcome.run_path,
                "status": "FINISHED" if outcome.ok else "FAILED",
                "metrics": {k: outcome.metrics[k] for k in sorted(outcome.metrics)},
            },
            indent=2,
        )
    )
    return EXIT_OK if outcome.ok else EXIT_FAILED


def cmd_submit(args: argparse.Namespace) -> int:
    """Run a job. Without --address (and RAY_ADDRESS) it runs on a local Ray instance in the foreground,
    printing progress, and exits 1 if the job fails. With --address http://HOST:8265 it is submitted
    to that Ray cluster through the Jobs API (entrypoint `hyperctl run ...`, this project as the
    working_dir); the submission id is printed and, unless --detach, its logs are followed until the
    job ends, exiting 0 if it SUCCEEDED and 1 otherwise. The job's resources are checked on the
    cluster, not here (nodes may be added by its autoscaler); credentials are never sent with the
    job (the cluster's nodes have their own). Relaunching a job of the same name and storage resumes it
    from its latest checkpoint, in the same MLflow run."""
    spec = load_job(args.job, args.overrides)
    address = _address(args)
    if not address:
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
    """Status of a submitted job (or of every job when no ID is given) on the Ray cluster.
    Exit 0 when the job is known, whatever its status; 2 when it is not."""
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
    --storage). An http:// tracking URI is a server already: its address is printed."""
    uri = _tracking_uri(args)
    if uri.startswith(("http://", "https://")):
        print(f"tracking server: {uri}")
        return EXIT_OK
    if not store_exists(uri):  # the server would create an empty store: nothing to look at
        print(f"no runs in {redact(uri)} (no store there yet); nothing is started")
        return EXIT_OK
    artifacts = None
    if uri.startswith("sqlite:///"):
        artifacts = str(Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
    ]
    if artifacts:
        cmd += ["--default-artifact-root", artifacts]
    print(f"MLflow UI: http://127.0.0.1:{args.port}  (store {redact(uri)}; Ctrl-C to stop)", flush=True)
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return EXIT_OK


def _required_address(args: argparse.Namespace) -> str:
    address = _address(args)
    if not address:
        raise JobSpecError("--address", ["no Ray cluster given: pass --address http://HOST:8265 or set RAY_ADDRESS"])
    return address


def _tracking_uri(args: argparse.Namespace) -> str:
    """The tracking store named by --tracking-uri, else by the ``job`` argument's file, else by
    --storage (its sqlite store)."""
    if getattr(args, "tracking_uri", None):
        return args.tracking_uri
    if getattr(args, "job", None):
        return tracking_uri_for(load_job(args.job, []))
    return tracking_uri_for(validate_job({"name": "x", "train": {"max_steps": 1}, "storage": args.storage}))


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        help="Ray cluster dashboard address, e.g. http://127.0.0.1:8265 "
        "(default: RAY_ADDRESS; token auth from ~/.ray/auth_token is used automatically)",
    )


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (sqlite:///..., http://...)")
    p.add_argument(
        "--storage",
        default="./runs",
        help="job storage folder whose sqlite store to read when no URI is given (default ./runs)",
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
    """`hyperctl status CAMPAIGN.yaml`: the campaign's trials and their state (from its storage)."""
    spec = _campaign_spec(args.id)
    status = campaign_status(spec)
    if getattr(args, "json", False):
        status["trials"] = [{k: v for k, v in t.items() if k != "history"} for t in status["trials"]]
        print(json.dumps(status, indent=2, default=str))
        return EXIT_OK
    print(f"campaign {status['campaign']}: {status['state']} ({len(status['trials'])} trials; {status['path']})")
    if status["trials"]:
        print(format_trials(spec, status["trials"]))
    return EXIT_OK


def cmd_campaign_stop(args: argparse.Namespace) -> int:
    """`hyperctl stop CAMPAIGN.yaml`: stop this host's campaign driver gracefully (Tune keeps its
    state; `hyperctl resume` continues it)."""
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
        "  echo 'A dog runs on the beach.' | hyperctl translate RUN_ID --storage ./runs\n",
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
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a spec field (repeatable)",
    )
    p.add_argument("--spec-json", help="the resolved spec as JSON (used for job files outside the project)")
    _add_address(p)
    _add_run_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="status of a submitted job (all jobs without ID)", description=cmd_status.__doc__)
    p.add_argument("id", nargs="?", help="submission id")
    _add_address(p)
    _add_store(p)
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
    _add_address(p)
    _add_store(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("ui", help="start the MLflow UI for a job's tracking store", description=cmd_ui.__doc__)
    p.add_argument("job", nargs="?", help="job YAML file whose tracking store to show")
    _add_store(p)
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

    kit = CommandKit(add_store_options=_add_store, tracking_uri=_tracking_uri)
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
