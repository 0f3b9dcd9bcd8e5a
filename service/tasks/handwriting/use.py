"""Using a trained handwriting model: loading it (:mod:`service.io.models`) and its log-loss on a
stroke-3 file or a split of its own data (``hyperctl evaluate``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from ...io.datacache import data_error
from ...io.models import ModelSource, ModelSourceError
from ...spec.errors import validate_as
from ..base import Evaluation
from .spec import HandwritingJob

SCALE_FILE = "scale.json"  # the MLflow model's offset scale: [sx, sy], the training split's standard deviations
TASK_NAME = "handwriting"


def load_writer(source: ModelSource) -> tuple[HandwritingJob, Any, tuple[float, float]]:
    """(spec, model, offset scale) of a handwriting model; ModelSourceError for another task's model."""
    if source.task != TASK_NAME:
        raise ModelSourceError(f"{source.given}: a model of a {source.task or 'unknown'} job, not of a handwriting job")
    from .data import load_prepared  # deferred: pyarrow
    from .model import build_model

    spec: HandwritingJob = validate_as(HandwritingJob, source.spec, source.given)
    if source.checkpoint is not None:
        scale = load_prepared(source.prepared_root("the offset scale")).scale
    else:
        doc = json.loads(source.file(SCALE_FILE) or b"null")
        if not doc:
            raise ModelSourceError(f"{source.given}: the model has no {SCALE_FILE}")
        scale = (float(doc[0]), float(doc[1]))
    return spec, source.module(lambda: build_model(spec)), scale


def evaluate(source: ModelSource, args: argparse.Namespace) -> Evaluation:
    """Log-loss (nats per sequence and per point, as ``test_nll``) of a handwriting model on a split of
    ``--strokes FILE`` (a stroke-3 ``.npz``; ``--split``, default ``test``) or, without ``--strokes``,
    on ``--split valid|test`` of the job's own data; offsets clipped and scaled as in training."""
    import torch

    from hypermodels import log_loss

    from .data import read_sources, read_stroke3

    spec, model, scale = load_writer(source)
    split = args.split or "test"
    if split not in ("valid", "test"):
        raise data_error("--split", f"expected valid or test for a handwriting model, found {split!r}")
    if args.strokes is not None:
        raw, where = read_stroke3("--strokes", args.strokes, spec.data.max_points), args.strokes
        name = Path(args.strokes.rstrip("/")).name.split(".")[0] or "strokes"
    elif args.split is not None:
        raw, where, name = read_sources(spec)[2], f"the job's data ({spec.data.dataset or spec.data.path})", split
    else:
        raise data_error("--strokes", "give --strokes FILE or --split valid|test for a handwriting model")
    if split not in raw:
        raise data_error("--split", f"{where} has no {split!r} split (it has {', '.join(raw)})")
    clip = spec.data.clip()
    seqs = []
    for _, rows in raw[split]:
        xy = np.clip(rows[:, :2], -clip, clip) if clip else rows[:, :2]
        seqs.append(torch.from_numpy(np.column_stack([xy / np.array(scale), rows[:, 2]]).astype(np.float32)))
    per_sequence, per_point = log_loss(model, seqs, spec.data.eval_batch_size)
    return Evaluation(
        name,
        {"nll": per_sequence, "nll_per_point": per_point},
        [f"{where}: {split} split, {len(seqs):,} sequences, {sum(len(s) for s in seqs):,} points"],
    )


__all__ = ["SCALE_FILE", "evaluate", "load_writer"]
