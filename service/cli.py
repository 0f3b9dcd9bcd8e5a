"""``hyperctl``: validate, submit, watch, stop and list HyperNetworks training jobs.

Each subcommand is a function ``cmd_<name>(args) -> int`` registered in :func:`build_parser`.
Exit codes: 0 success, 1 the job failed, 2 bad input (job spec, arguments, unreachable storage).
"""
from __future__ import annotations

import argparse
import json
import sys

from .spec import JobSpecError, load_job

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job YAML file (see jobs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a spec field, e.g. --set model.hyper.embed_size=16 (repeatable)")


def cmd_validate(args: argparse.Namespace) -> int:
    """Print the fully resolved spec (defaults filled in) and the model's parameter count."""
    from .models import model_parameter_count
    from .preflight import check_job

    spec = load_job(args.job, args.overrides)
    check_job(spec, source=args.job)
    resolved = spec.model_dump(mode="json")
    params = model_parameter_count(spec)
    if args.json:
        print(json.dumps({"spec": resolved, "parameters": params}, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(resolved, sort_keys=False).rstrip())
        print(f"# model parameters: {params:,} ({params / 1e6:.2f}M)")
        print(f"# {args.job}: valid")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperctl",
        description="Train HyperNetworks models (HyperLSTM and baselines) from YAML jobs on Ray, "
                    "tracked in MLflow. Without --address (or RAY_ADDRESS) jobs run on a local Ray instance.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  hyperctl validate jobs/quickstart.yaml\n"
               "  hyperctl submit jobs/quickstart.yaml --set train.max_steps=200\n",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a job spec and print it resolved, with the parameter count",
                       description=cmd_validate.__doc__)
    add_job_arguments(p)
    p.add_argument("--json", action="store_true", help="print the resolved spec as JSON")
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except JobSpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
