"""Preemption: on SIGTERM a job finishes its current step, writes a checkpoint at that step and ends,
so that relaunching the same command loses no work.

SIGTERM is what Kubernetes sends a pod's processes, and a spot instance its own, before killing
them; ``kill`` and ``hyperctl stop`` send it too. It may reach the driver (``hyperctl submit``,
the pod's main process) or a Ray Train worker:

* the driver (:func:`service.driver.local.run_job`) writes :data:`REQUEST_FILE` in the run folder
  ``<storage>/<name>/``; rank 0 looks for it (:class:`StopRequests`, at most every
  :data:`POLL_S` seconds: a stat on local disk, a HEAD request on S3);
* a worker process sets a flag of its own (:func:`catch_sigterm`) instead of exiting.

Every rank adds what it knows to the small all-reduce each optimizer step already does
(:meth:`service.worker.worker.Worker.all_finite`), so every rank stops after the same step. The
loop's ``while not w.done(pos)`` then ends, the step's checkpoint is written and reported, rank 0
writes :data:`OUTCOME_FILE` (the step and why), and the final evaluation is skipped (it belongs
to the finished run). The driver ends the MLflow run KILLED with the tag ``hyperctl.preempted_at_step``
and exits 130 (``service.exitcodes.EXIT_INTERRUPTED``). A second SIGTERM (or Ctrl-C) to the
driver stops at once, as does the driver itself when the workers have not stopped within
``PREEMPT_GRACE_S`` seconds: the run then ends KILLED at its last checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

from ..io import storage

REQUEST_FILE = "stop_request.json"  # in the run folder: the driver asks the workers to stop
OUTCOME_FILE = "preempted.json"  # in the run folder: rank 0's answer, the step of the checkpoint
POLL_S = 0.5  # how often rank 0 looks for the driver's request

_signalled = threading.Event()  # this process received SIGTERM (catch_sigterm)


def catch_sigterm() -> bool:
    """In a Ray Train worker process, make the first SIGTERM set a flag (:func:`signalled`) instead
    of exiting, and a second one exit as before (Ray's handler). A signal handler can only be set
    from a process's main thread and the worker trains in another, so the handler is set by a call
    its actor runs on its main thread (the actor's ``execute``; not awaited: it runs between the
    controller's status polls). Elsewhere (Ray Train's local mode, in the caller's process) nothing
    is changed. Returns whether the handler was requested."""
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return False  # not in an actor: the driver's request remains the way to stop
    ray.get_runtime_context().current_actor.execute.remote(install)
    return True


def install() -> None:
    """Set this process's SIGTERM handler (from its main thread): see :func:`catch_sigterm`."""
    previous = signal.getsignal(signal.SIGTERM)
    if getattr(previous, "_hyperctl_preemption", False):
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if not _signalled.is_set():
            _signalled.set()
            return
        signal.signal(signal.SIGTERM, previous)  # the second one: as before (Ray's handler exits)
        if callable(previous):
            previous(signum, frame)
        else:
            os.kill(os.getpid(), signum)

    on_sigterm._hyperctl_preemption = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, on_sigterm)


def signalled() -> bool:
    """Whether this process received SIGTERM since :func:`catch_sigterm`."""
    return _signalled.is_set()


class StopRequests:
    """Rank 0's look at the run folder for the driver's request (:data:`REQUEST_FILE`), at most every
    ``poll_s`` seconds; :meth:`flags` is what a rank adds to the step's all-reduce."""

    def __init__(self, run_folder: str | None, poll_s: float = POLL_S) -> None:
        self.request = None if run_folder is None else storage.join(run_folder, REQUEST_FILE)
        self.poll_s = poll_s
        self._next = 0.0
        self._requested = False

    def requested(self) -> bool:
        if self.request is None or self._requested:
            return self._requested
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.poll_s
            try:
                self._requested = storage.exists(self.request)
            except Exception:  # noqa: BLE001 - storage unreachable: no request seen; the next look may
                self._requested = False
        return self._requested

    def flags(self) -> tuple[float, float]:
        """This rank's contribution: (its own SIGTERM, the driver's request), each 0 or 1."""
        return float(signalled()), float(self.requested())


def reason(worker_signals: float, driver_requests: float) -> str | None:
    """Why the job stops, from the all-reduced :meth:`StopRequests.flags` (None: it does not)."""
    said = ["SIGTERM to the driver"] if driver_requests > 0 else []
    if worker_signals > 0:
        said.append(f"SIGTERM to {int(worker_signals)} worker{'s' if worker_signals > 1 else ''}")
    return " and ".join(said) or None


def write_request(run_folder: str, why: str) -> None:
    storage.write_bytes_atomic(storage.join(run_folder, REQUEST_FILE), json.dumps({"by": why}).encode())


def write_outcome(run_folder: str, step: int, why: str) -> None:
    storage.write_bytes_atomic(storage.join(run_folder, OUTCOME_FILE), json.dumps({"step": step, "by": why}).encode())


def read_outcome(run_folder: str) -> dict[str, Any] | None:
    """Rank 0's outcome of a preempted run (``step``, ``by``), or None when it was not preempted."""
    path = storage.join(run_folder, OUTCOME_FILE)
    if not storage.exists(path):
        return None
    info: dict[str, Any] = json.loads(storage.read_bytes(path))
    return info


def clear(run_folder: str) -> None:
    """Before a (re)launch: no request or outcome of an earlier attempt."""
    for name in (REQUEST_FILE, OUTCOME_FILE):
        storage.delete(storage.join(run_folder, name))


__all__ = [
    "OUTCOME_FILE",
    "REQUEST_FILE",
    "StopRequests",
    "catch_sigterm",
    "clear",
    "read_outcome",
    "reason",
    "signalled",
    "write_outcome",
    "write_request",
]
