"""When training ends before its last step: ``train.early_stopping`` (the task's validation metric
stopped improving) and ``train.time_budget`` (wall-clock training time spent).

Both decisions are the same on every rank: early stopping reads the evaluation every rank receives
(rank 0's, broadcast), and the budget is agreed through the all-reduce that every optimizer step
already does (:meth:`service.worker.worker.Worker.all_finite`). The state (best value and its step,
evaluations since, training seconds so far) goes with every checkpoint; the budget counts the
training time of every attempt up to its last checkpoint.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

from ..spec.schema import EarlyStoppingSpec


class EarlyStopping:
    """Patience on a metric: ``update`` returns True when this evaluation improved it (by more than
    ``min_delta`` in the direction of ``mode``); :attr:`stopped` once ``patience`` evaluations in a row
    did not. :attr:`top_step` is the step of the best value itself (any improvement, however small):
    the checkpoint to keep."""

    def __init__(self, spec: EarlyStoppingSpec, mode: Literal["min", "max"]) -> None:
        self.spec, self.sign = spec, 1.0 if mode == "min" else -1.0
        self.best = math.inf
        self.best_step = 0
        self.top, self.top_step = math.inf, 0
        self.bad = 0
        self.stopped_at: int | None = None

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    def update(self, step: int, value: float) -> bool:
        score = self.sign * value  # lower is better
        if score < self.top:
            self.top, self.top_step = score, step
        if math.isfinite(score) and score < self.best - self.spec.min_delta:
            self.best, self.best_step, self.bad = score, step, 0
            return True
        self.bad += 1
        if self.bad >= self.spec.patience:
            self.stopped_at = step
        return False

    def best_value(self) -> float:
        return self.sign * self.best

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "top": self.top,
            "top_step": self.top_step,
            "bad": self.bad,
            "stopped_at": self.stopped_at,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = state["best"], state["best_step"]
        self.top, self.top_step = state["top"], state["top_step"]
        self.bad, self.stopped_at = state["bad"], state["stopped_at"]


class Clock:
    """Training seconds: those of earlier attempts (from the checkpoint) plus this one's since
    :meth:`start`."""

    def __init__(self, budget_s: float | None) -> None:
        self.budget_s = budget_s
        self.before = 0.0
        self.started: float | None = None

    def start(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return self.before + (0.0 if self.started is None else time.monotonic() - self.started)

    def over(self) -> bool:
        return self.budget_s is not None and self.elapsed() >= self.budget_s

    def fraction(self) -> float:
        """The share of the budget spent (0 without one)."""
        return 0.0 if self.budget_s is None else min(self.elapsed() / self.budget_s, 1.0)

    def left_s(self) -> float:
        return math.inf if self.budget_s is None else max(self.budget_s - self.elapsed(), 0.0)


__all__ = ["Clock", "EarlyStopping"]
