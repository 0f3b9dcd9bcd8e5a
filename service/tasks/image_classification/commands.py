"""The image classifier's ``hyperctl evaluate`` options (light: the model code loads when the command
runs, :mod:`.use`)."""

from __future__ import annotations

import argparse


def add_evaluate_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--images",
        metavar="FILE",
        help="image_classification: error rate on these idx images (gzip'd or not; local or s3://) ...",
    )
    group.add_argument("--labels", metavar="FILE", help="... with these idx labels")


__all__ = ["add_evaluate_arguments"]
