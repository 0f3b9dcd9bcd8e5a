"""A worker's own exception, told as it happened, and not retried when retrying cannot help.

Ray Train shows a failed job as ``WorkerGroupError: Training failed due to worker errors:`` and
retries every worker error ``resources.max_failures`` times. That budget is for lost workers and
nodes; a deterministic error (a ``ValueError`` from the data, a spec the code cannot run, an index
out of range: :data:`DETERMINISTIC`) would only repeat. Ray 2.60 offers no public hook for a
non-retryable error, so, as for a non-finite loss (:mod:`service.worker.worker`):

* :func:`run_task_loop` runs the task's loop on every rank; when a deterministic exception escapes
  it, it records it (type, message, the failing ``file:line`` of the project's code) in
  ``<storage>/<name>/failure.json`` and re-raises;
* a retried attempt finds that record and returns at once on every rank, without training, so the
  retry costs a worker-group start and nothing else;
* the driver reads the record (:func:`recorded_error`) and reports the worker's exception; for any
  other failure it describes Ray's error by each rank's exception (:func:`describe`).
"""

from __future__ import annotations

import json
import re
import traceback
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from ..io import storage
from ..paths import run_dir

# In the run folder: a worker's error that a retry cannot fix (or a non-finite loss), for the driver.
FAILURE_FILE = "failure.json"

DETERMINISTIC: tuple[type[BaseException], ...] = (
    ValueError,  # JobSpecError, pydantic's ValidationError, UnicodeDecodeError included
    TypeError,
    LookupError,
    ArithmeticError,
    AssertionError,
    AttributeError,
    NotImplementedError,
)
# A frame of the project's code, wherever the checkout lies (a Ray job's working_dir on a cluster).
_PROJECT_FRAME = re.compile(r'File "[^"]*?/((?:service|hypermodels)/[^"]+\.py)", line (\d+), in (\S+)')


class WorkerError(RuntimeError):
    """A worker's exception as the driver reports it (see the module's docstring)."""


def where(tb_text: str) -> str | None:
    """``path:line in function`` of the innermost frame of the project's own code in a traceback."""
    found = _PROJECT_FRAME.findall(tb_text)
    if not found:
        return None
    path, line, function = found[-1]
    return f"{path}:{line} in {function}"


def describe(error: BaseException, tb_text: str | None = None) -> str:
    """``Type: message (at file:line in function)``; for Ray's ``WorkerGroupError``, each rank's; for
    its ``ControllerError`` (e.g. its own write to the storage failed), the controller's exception."""
    controller_failure = getattr(error, "controller_failure", None)
    if isinstance(controller_failure, BaseException):
        return "Ray Train's controller failed: " + describe(controller_failure)
    failures: dict[int, BaseException] | None = getattr(error, "worker_failures", None)
    if failures:
        text = str(error)  # Ray's message holds each rank's traceback
        parts = []
        for rank, e in sorted(failures.items()):
            tb = traceback.format_exception(e)
            place = where("".join(tb)) or where(text)
            parts.append(f"rank {rank}: {type(e).__name__}: {e}" + (f" (at {place})" if place else ""))
        return "worker error, " + "; ".join(parts)
    tb_text = tb_text if tb_text is not None else "".join(traceback.format_exception(error))
    place = where(tb_text)
    return f"{type(error).__name__}: {error}" + (f" (at {place})" if place else "")


def _failure_file(config: dict[str, Any]) -> str:
    spec = config["spec"]
    return storage.join(run_dir(SimpleNamespace(storage=spec["storage"], name=spec["name"])), FAILURE_FILE)


def recorded_error(failure_file: str) -> str | None:
    """The worker exception recorded in ``failure_file`` (None if none: absent, or a non-finite stop)."""
    if not storage.exists(failure_file):
        return None
    info = json.loads(storage.read_bytes(failure_file))
    return str(info["error"]) if info.get("kind") == "exception" else None


def run_task_loop(train_loop: Callable[[dict[str, Any]], None], config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker`` for every task (bound to the task's own loop with
    ``functools.partial``: a task need not be importable by name in the worker), guarded as the
    module's docstring says."""
    failure_file = _failure_file(config)
    if recorded_error(failure_file) is not None:  # a retry of a deterministic error: it would repeat
        return
    try:
        train_loop(config)
    except DETERMINISTIC as e:
        message = describe(e)
        storage.write_bytes_atomic(failure_file, json.dumps({"kind": "exception", "error": message}).encode())
        raise


__all__ = ["DETERMINISTIC", "WorkerError", "describe", "recorded_error", "run_task_loop", "where"]
