"""The runs of a tracking store as ``hyperctl list`` shows them, each with its task's metrics."""

from __future__ import annotations

from typing import Any

from ..io import tracking
from ..tasks import DEFAULT_TASK, find_task


def list_runs(uri: str) -> list[dict[str, Any]]:
    """The runs of every experiment in a tracking store, newest first: id, status, task, job, the
    last step of its training metric, and its validation (final if logged) and test metrics,
    named by its task's :class:`~service.tasks.base.Metrics`. A run of a task this version does
    not know shows no metrics."""
    rows = []
    for run in tracking.search_runs(uri):
        m = run["metrics"]
        name = run["tags"].get(tracking.TAG_TASK, DEFAULT_TASK)
        task = find_task(name)
        valid = test = train = ""
        if task is not None:
            valid, test, train = task.metrics.valid, task.metrics.test, task.metrics.train
        steps = [step for step, _ in tracking.metric_history(uri, run["run_id"], train)] if train in m else []
        rows.append(
            {
                "run_id": run["run_id"],
                "status": run["status"],
                "task": task.name if task else name,
                "job": run["tags"].get(tracking.TAG_JOB, run["run_name"]),
                "step": max(steps, default=0),
                "metric": valid.removeprefix("valid_") or "-",
                "valid": final(m, valid),
                "test": final(m, test),
            }
        )
    return rows


def final(metrics: dict[str, float], name: str) -> float | None:
    """A run's final ``name``: ``final/<name>``, else ``final_<name>`` (runs of versions before the
    final/ section), else the last value logged under ``name`` (a run that has not finished)."""
    for key in (tracking.FINAL_PREFIX + name, f"final_{name}", name):
        if key in metrics:
            return metrics[key]
    return None


__all__ = ["final", "list_runs"]
