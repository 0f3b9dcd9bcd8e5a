"""``hyperctl translate``: the translation task's own command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ...exitcodes import EXIT_BAD_INPUT, EXIT_OK
from ...io import text
from ...spec.errors import JobSpecError
from ..base import CommandKit


def read_sentences(path: str | None) -> list[str]:
    """One sentence a line from ``path`` or stdin, read as every text file is (:mod:`service.io.text`:
    a BOM stripped and noted, LF/CRLF/CR, bad bytes and mixed terminators named)."""
    where = path or "stdin"
    raw = Path(path).read_bytes() if path else sys.stdin.buffer.read()
    return text.split_lines("--input", where, text.decode("--input", where, raw))


def add_evaluate_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--source",
        dest="source_file",
        metavar="FILE",
        help="translation: BLEU of the translations of this file's sentences (one a line; local or s3://) ...",
    )
    group.add_argument("--reference", metavar="FILE", help="... against this file's references, line for line")


def add_commands(sub: argparse._SubParsersAction[Any], kit: CommandKit) -> None:
    def cmd_translate(args: argparse.Namespace) -> int:
        """Translate sentences with a trained translation model: one sentence a line on stdin (or
        --input FILE), one translation a line on stdout, in the same order (a blank line stays blank).
        RUN_OR_CHECKPOINT is the run folder that submit prints (runs/NAME: its newest checkpoint, the final
        model once the job has finished), a checkpoint folder of a translation job (local or s3://, e.g.
        runs/NAME/checkpoint_00001000, usable while the job still trains), an MLflow run id (its final
        model), runs:/RUN_ID/model, or a registered model's models:/NAME/VERSION or models:/NAME@ALIAS
        (these read the tracking store of JOB.yaml, --tracking-uri or --storage)."""
        from ...io.models import ModelSourceError, open_model
        from .translate import translator_of  # deferred: torch loads only when a model does

        try:
            with open_model(args.source, lambda: kit.tracking_uri(args)) as source:
                translator = translator_of(source)
        except (ModelSourceError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            sentences = read_sentences(args.input)
        except OSError as e:
            print(f"error: --input: cannot read {args.input}: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except JobSpecError as e:
            print(f"error: {e.problems[0]}", file=sys.stderr)
            return EXIT_BAD_INPUT
        for line in translator.translate(sentences, batch_size=args.batch_size, beam_size=args.beam_size):
            print(line, flush=False)
        sys.stdout.flush()
        return EXIT_OK

    p = sub.add_parser(
        "translate",
        help="translate stdin with a trained translation model (run, checkpoint or model URI)",
        description=cmd_translate.__doc__,
    )
    kit.add_model_source(p)
    p.add_argument("--input", help="read sentences from this file instead of stdin")
    p.add_argument(
        "--beam-size", type=int, default=None, help="beam width (default: the job's model.beam_size; 1 = greedy)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="sentences decoded together (default 32)")
    p.set_defaults(func=cmd_translate)


__all__ = ["add_commands", "add_evaluate_arguments", "read_sentences"]
