"""The one place that maps a job's ``task`` to its parts: how the driver prepares its data and
which Ray Train worker loop trains it. Imports are lazy: a char-LM job never loads sentencepiece.

A prepared data set (any task) has ``root`` (its folder URI, handed to the workers),
``content_hash``, ``manifest`` (the JSON file in ``root`` that describes it; logged to MLflow) and
``summary()`` (one line for the terminal).
"""
from __future__ import annotations

from typing import Any, Callable

from .spec import JobSpec


def prepare(spec: JobSpec, cache_root: str) -> Any:
    """The prepared form of ``spec.data`` under ``cache_root``, built if missing (driver side)."""
    if spec.task == "image_classification":
        from .image_data import prepare_images

        return prepare_images(spec, cache_root)  # type: ignore[arg-type]
    if spec.task == "nmt":
        from .nmt_data import prepare_pairs

        return prepare_pairs(spec, cache_root)  # type: ignore[arg-type]
    from .data import prepare_data

    return prepare_data(spec, cache_root)  # type: ignore[arg-type]


def train_loop(spec: JobSpec) -> Callable[[dict[str, Any]], None]:
    """The task's ``train_loop_per_worker`` for Ray Train."""
    if spec.task == "image_classification":
        from .train_image import train_loop_per_worker
    elif spec.task == "nmt":
        from .train_nmt import train_loop_per_worker
    else:
        from .trainer import train_loop_per_worker
    return train_loop_per_worker


def source_name(spec: JobSpec) -> str:
    """What the data is, for the ``[data] preparing ...`` line."""
    data = spec.data  # type: ignore[attr-defined]
    if data.dataset is not None:
        return data.dataset
    if spec.task == "nmt":
        t = data.train
        return t.tsv or t.parquet or f"{t.src} + {t.tgt}"
    return str(getattr(data, "train", None) or getattr(data, "train_images", None) or getattr(data, "cifar10", None))


__all__ = ["prepare", "source_name", "train_loop"]
