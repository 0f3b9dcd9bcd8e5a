"""Using a trained image classifier: loading it (:mod:`service.io.models`) and its error on given idx
files (``hyperctl evaluate``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ...io.datacache import data_error, read_data_file
from ...io.models import ModelSource, ModelSourceError
from ...spec.errors import validate_as
from ..base import Evaluation
from .spec import ImageJob

NORMALISATION_FILE = "images.json"  # the MLflow model's input: shape, classes, per-channel mean and std
TASK_NAME = "image_classification"


def normalisation_document(prepared: Any) -> bytes:
    """What the model's input must look like (:class:`.data.PreparedImages`): the images' shape, the
    number of classes and the training split's per-channel mean and standard deviation."""
    return json.dumps(
        {
            "shape": list(prepared.shape),
            "num_classes": prepared.num_classes,
            "mean": list(prepared.mean),
            "std": list(prepared.std),
        }
    ).encode()


def load_classifier(source: ModelSource) -> tuple[ImageJob, Any, dict[str, Any]]:
    """(spec, model, input document) of an image model; ModelSourceError for another task's model."""
    if source.task != TASK_NAME:
        raise ModelSourceError(f"{source.given}: a model of a {source.task or 'unknown'} job, not of an image job")
    from .data import load_prepared  # deferred: pyarrow
    from .model import build_model

    spec: ImageJob = validate_as(ImageJob, source.spec, source.given)
    if source.checkpoint is not None:
        doc = json.loads(normalisation_document(load_prepared(source.prepared_root("the input normalisation"))))
    else:
        doc = json.loads(source.file(NORMALISATION_FILE) or b"null")
        if not doc:
            raise ModelSourceError(f"{source.given}: the model has no {NORMALISATION_FILE}")
    shape = tuple(doc["shape"])
    model = source.module(lambda: build_model(spec, shape, int(doc["num_classes"])))  # type: ignore[arg-type]
    return spec, model, doc


def evaluate(source: ModelSource, args: argparse.Namespace) -> Evaluation:
    """Error rate of an image model on ``--images FILE`` and ``--labels FILE`` (idx, gzip'd or not),
    standardised with the training split's statistics as in training."""
    import torch

    from .data import parse_idx
    from .loop import evaluate as error_and_loss

    if args.images is None or args.labels is None or args.split is not None:
        raise data_error("--images", "give --images FILE and --labels FILE (idx files) for an image model")
    x = parse_idx(read_data_file("--images", args.images), "--images", args.images, images=True)
    y = parse_idx(read_data_file("--labels", args.labels), "--labels", args.labels, images=False)
    if len(x) != len(y):
        raise data_error(
            "--labels", f"{args.labels} has {len(y):,} labels but {args.images} (--images) has {len(x):,} images"
        )
    if not len(x):
        raise data_error("--images", f"{args.images}: expected images, found none")
    spec, model, doc = load_classifier(source)
    shape, classes = tuple(doc["shape"]), int(doc["num_classes"])
    if (1, *x.shape[1:]) != shape:
        raise data_error(
            "--images",
            f"{args.images}: expected {'x'.join(map(str, shape))} images (what the model was trained on), "
            f"found 1x{'x'.join(map(str, x.shape[1:]))}",
        )
    if int(y.max()) >= classes:
        raise data_error("--labels", f"{args.labels}: expected labels 0..{classes - 1}, found {int(y.max())}")
    mean = torch.tensor(doc["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(doc["std"]).view(1, -1, 1, 1).clamp_min(1e-6)
    images = torch.from_numpy(x[:, None].copy())
    labels = torch.from_numpy(y.astype("int64"))
    error, loss = error_and_loss(model, images, labels, mean, std, spec.data.eval_batch_size)
    wrong = round(error * len(x))
    name = Path(args.images.rstrip("/")).name.split(".")[0] or "images"
    return Evaluation(
        name,
        {"error": error, "loss": loss},
        [f"{args.images}: {len(x):,} images, {wrong:,} misclassified (error {100 * error:.2f}%)"],
    )


__all__ = ["NORMALISATION_FILE", "evaluate", "load_classifier", "normalisation_document"]
