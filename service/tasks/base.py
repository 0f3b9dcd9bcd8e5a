"""What a task declares to the service: :class:`Task`, one object per task, found through the
registry in :mod:`service.tasks`. Everything outside ``service/tasks/<task>/`` reaches a task
through these fields and never branches on its name."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

from ..spec.schema import JobSpec

J = TypeVar("J", bound=JobSpec)


def deferred(module: str, name: str) -> Callable[..., Any]:
    """``module.name``, imported at its first call. A task's ``__init__`` names its functions this way so
    that reading the registry loads no heavy module (torch, pyarrow, MLflow): commands that only read
    specs (validate, schema) start fast, and each task's code loads when a job of it runs. Ray pickles
    the wrapper by reference (module and name), so a worker imports the function itself."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = name
    call.__qualname__ = f"{module}.{name}"
    return call


@dataclass(frozen=True)
class Metrics:
    """The metrics a task's worker loop logs, by role.

    ``valid`` is what campaigns optimise by default and ``hyperctl list`` shows (with its
    ``final_<valid>`` when the run logged one), ``test`` the held-out figure, ``train`` the
    training loss logged every ``train.log_every`` steps (its last step is a run's progress),
    ``reported`` every metric the loop reports to Ray Tune (a campaign's ``search.metric`` must be
    one of them), ``higher_is_better`` the metrics a campaign maximises (all others: minimised).
    """

    valid: str
    test: str
    train: str
    reported: tuple[str, ...]
    higher_is_better: frozenset[str] = frozenset()

    def mode(self, metric: str) -> Literal["min", "max"]:
        return "max" if metric in self.higher_is_better else "min"


@dataclass(frozen=True)
class DataFile:
    """A user file a job reads, checked by preflight before anything starts."""

    field: str  # the spec field that names it, e.g. "data.train"
    uri: str  # a path or s3:// URI
    text: bool  # UTF-8 text (checked by decoding its head) or binary


class Prepared(Protocol):
    """A task's prepared data set, as the driver sees it."""

    @property
    def root(self) -> str:
        """URI of the prepared folder, handed to the workers."""

    @property
    def content_hash(self) -> str:
        """Hash of the sources and settings the folder was prepared from."""

    @property
    def manifest(self) -> str:
        """Name of the JSON file in ``root`` that describes the data (logged to MLflow)."""

    def summary(self) -> str:
        """One line for the terminal."""


@dataclass(frozen=True)
class SummaryAxis:
    """A spec key a campaign summary always plots its metric against, searched or not."""

    key: str  # dotted spec key, e.g. "model.hyper.embed_size"
    label: str  # axis label, e.g. "N_z"
    log_base: int | None = None  # a logarithmic axis of this base


@dataclass(frozen=True)
class CommandKit:
    """What the CLI lends a task's own subcommands (``Task.add_commands``): the options that name an
    MLflow tracking store, how they resolve to a URI, and the arguments that name a trained model."""

    add_store_options: Callable[[argparse.ArgumentParser], None]  # --tracking-uri, --storage
    tracking_uri: Callable[[argparse.Namespace], str]  # from those, or from a ``job`` argument
    # SOURCE (run folder, checkpoint, run id, runs:/, models:/), an optional JOB.yaml and the store options
    add_model_source: Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Evaluation:
    """What a task's ``evaluate`` found: ``metrics`` (name -> value, logged with ``--log`` as
    ``eval/<name>/<metric>``), ``name`` (the default for ``<name>``: the file's stem or the split),
    ``lines`` (said before the metrics, e.g. how many items and the sacreBLEU signature) and ``tags``
    (logged with ``--log`` as ``eval/<name>/<tag>``)."""

    name: str
    metrics: dict[str, float]
    lines: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Task(Generic[J]):
    """One task: its job schema, how the driver prepares its data, the Ray Train worker loop, and
    what the rest of the service needs to know about it.

    * ``job_class``: the task's :class:`~service.spec.schema.JobSpec` subclass (``task`` literal = ``name``).
    * ``prepare(spec, cache_root)``: the prepared data under ``cache_root``, built if missing (driver side).
    * ``train_loop(config)``: Ray Train's ``train_loop_per_worker``.
    * ``data_files(spec)``: the user files the job reads (preflight checks them before a run starts).
    * ``source_name(spec)``: what the data is, for the ``[data] preparing ...`` line.
    * ``parameter_count(spec)``: trainable parameters of the job's model before its data is prepared.
    * ``check_prepared(spec, prepared)``: one line per way the prepared data cannot serve the job
      (too few symbols, pairs or images for a batch or an evaluation, after every filter), each
      naming the spec field that causes it; the driver calls it right after preparation, before an
      MLflow run exists, so that no worker meets an empty split.
    * ``metrics``: see :class:`Metrics`.
    * ``summary_axis``: what a campaign summary plots the metric against, besides the searched keys.
    * ``add_commands(subparsers, kit)``: the task's own ``hyperctl`` subcommands (e.g. ``translate``).
    * ``add_evaluate_arguments(group)``: the options ``hyperctl evaluate`` takes for this task's models
      (e.g. ``--text``), added to their own argument group; ``evaluate(source, args)``: a trained model
      (a :class:`service.io.models.ModelSource`) evaluated as those options (and ``--split``, a split of
      the data it was trained on) ask, an :class:`Evaluation`; a JobSpecError naming the option and file
      for bad input.
    * ``aliases``: old names job files may still use (read with a deprecation message).
    """

    name: str
    job_class: type[J]
    prepare: Callable[[J, str], Prepared]
    train_loop: Callable[[dict[str, Any]], None]
    data_files: Callable[[J], list[DataFile]]
    source_name: Callable[[J], str]
    parameter_count: Callable[[J], int]
    check_prepared: Callable[[J, Any], list[str]]
    metrics: Metrics
    summary_axis: SummaryAxis | None = None
    add_commands: Callable[[argparse._SubParsersAction[Any], CommandKit], None] | None = None
    add_evaluate_arguments: Callable[[argparse._ArgumentGroup], None] | None = None
    evaluate: Callable[[Any, argparse.Namespace], Evaluation] | None = None
    aliases: tuple[str, ...] = field(default=())


__all__ = ["CommandKit", "DataFile", "Evaluation", "Metrics", "Prepared", "SummaryAxis", "Task"]
