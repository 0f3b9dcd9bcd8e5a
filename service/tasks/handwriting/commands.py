"""The handwriting model's ``hyperctl evaluate`` options (light: the model code loads when the command
runs, :mod:`.use`)."""

from __future__ import annotations

import argparse


def add_evaluate_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--strokes",
        metavar="FILE",
        help="handwriting: log-loss on a split (--split, default test) of this stroke-3 .npz (local or s3://)",
    )


__all__ = ["add_evaluate_arguments"]
