"""The char LM's own command line: ``hyperctl sample`` and its ``hyperctl evaluate`` options (light:
the model code loads when a command runs, :mod:`.use`)."""

from __future__ import annotations

import argparse
from typing import Any

from ...exitcodes import EXIT_BAD_INPUT, EXIT_OK
from ..base import CommandKit


def add_evaluate_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--text",
        metavar="FILE",
        help="char_lm: bits per character on this text file (local or s3://; in the format the job read: PTB "
        "char's space-separated symbols, or plain characters)",
    )


def add_commands(sub: argparse._SubParsersAction[Any], kit: CommandKit) -> None:
    def cmd_sample(args: argparse.Namespace) -> int:
        """Sample text from a trained character-level LM: the prime and LENGTH symbols drawn after it
        (the same --seed draws the same text). RUN_OR_CHECKPOINT is a run folder, a checkpoint folder
        (local or s3://), an MLflow run id, runs:/RUN_ID/model or models:/NAME/VERSION (or
        models:/NAME@ALIAS); the last three read the tracking store of JOB.yaml, --tracking-uri or
        --storage."""
        import sys

        from ...io.models import ModelSourceError, open_model
        from ...spec.errors import JobSpecError
        from .use import load_lm, sample_text

        if args.length < 1 or args.temperature < 0:
            print("error: --length must be at least 1 and --temperature at least 0", file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            with open_model(args.source, lambda: kit.tracking_uri(args)) as source:
                lm = load_lm(source)
                out = sample_text(lm, args.prime, args.length, args.temperature, args.seed)
        except (ModelSourceError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except JobSpecError as e:
            for problem in e.problems:
                print(f"error: {problem}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(out)
        return EXIT_OK

    p = sub.add_parser(
        "sample",
        help="sample text from a trained char LM (run, checkpoint or model URI)",
        description=cmd_sample.__doc__,
    )
    kit.add_model_source(p)
    p.add_argument("--length", type=int, default=200, help="symbols to sample after the prime (default 200)")
    p.add_argument("--prime", help="text to start from (default: a newline)")
    p.add_argument(
        "--temperature", type=float, default=1.0, help="below 1 sharper, above 1 flatter, 0 the argmax (default 1)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the draws (default 0)")
    p.set_defaults(func=cmd_sample)


__all__ = ["add_commands", "add_evaluate_arguments"]
