"""The task registry: a task's name -> its :class:`~service.tasks.base.Task`.

Each task owns one folder, ``service/tasks/<task>/``: its spec classes, data preparation, model
construction, worker loop, evaluation and artifacts, and any commands of its own. The folder's
``__init__`` defines ``TASK``; adding a task is one new folder plus one line in :data:`TASKS`.
Nothing outside the task folders and this file names a task.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any

from ..spec.errors import JobSpecError
from ..spec.schema import JobSpec
from . import char_lm, handwriting, image_classification, translation
from .base import CommandKit, DataFile, Evaluation, Metrics, Prepared, SummaryAxis, Task

TASKS: dict[str, Task[Any]] = {
    t.name: t
    for t in (
        char_lm.TASK,
        handwriting.TASK,
        image_classification.TASK,
        translation.TASK,
    )
}
DEFAULT_TASK = char_lm.TASK.name  # a job without `task:`
log = logging.getLogger("hyperctl")


def _aliases() -> dict[str, str]:
    """Old name -> task name (computed on each call: a test may register a task)."""
    return {alias: t.name for t in TASKS.values() for alias in t.aliases}


def task_named(name: Any, source: str = "job") -> Task[Any]:
    """The task called ``name`` (an old alias too, with a deprecation warning on the ``hyperctl``
    logger); JobSpecError with a did-you-mean for an unknown one."""
    aliases = _aliases()
    if name in aliases:
        new = aliases[name]
        log.warning(f"{source}: task: {name!r} is deprecated, write task: {new!r} (it is read as {new!r})")
        return TASKS[new]
    if name not in TASKS:
        guess = difflib.get_close_matches(str(name), list(TASKS) + list(aliases), n=1)
        hint = f"; did you mean {aliases.get(guess[0], guess[0])!r}?" if guess else ""
        raise JobSpecError(source, [f"task: expected one of {', '.join(TASKS)}, found {name!r}{hint}"])
    return TASKS[name]


def find_task(name: str) -> Task[Any] | None:
    """The task called ``name`` or one of its aliases, silently; None when there is none (e.g. a
    run in an MLflow store written by another version)."""
    return TASKS.get(_aliases().get(name, name))


def task_of(spec: JobSpec) -> Task[Any]:
    """The task of a validated job."""
    return TASKS[spec.task]


__all__ = [
    "DEFAULT_TASK",
    "TASKS",
    "CommandKit",
    "DataFile",
    "Evaluation",
    "Metrics",
    "Prepared",
    "SummaryAxis",
    "Task",
    "find_task",
    "task_named",
    "task_of",
]
