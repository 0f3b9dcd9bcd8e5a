"""The learning-rate schedule of every task (``train.lr_schedule``), built from torch's
``lr_scheduler`` classes: an optional linear warm-up (``LambdaLR``) then constant, step decay
(``MultiStepLR``), cosine (``CosineAnnealingLR``) or reduce-on-plateau (``ReduceLROnPlateau``).

The per-step schedules advance once per optimizer step (:meth:`LRSchedule.step`); reduce-on-plateau
advances once per evaluation, on the task's validation metric (:meth:`LRSchedule.evaluated`), and
only after the warm-up (during it the warm-up owns the rate). Milestones count optimizer steps
from the start of training. The state goes with every checkpoint, so a resumed run continues with
the same rates. No Ray and no pydantic objects here beyond the spec it reads.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LambdaLR,
    LRScheduler,
    MultiStepLR,
    ReduceLROnPlateau,
    SequentialLR,
)

from ..spec.schema import LRScheduleSpec


class LRSchedule:
    """The rate of ``optimizer`` over a run of ``total_steps`` optimizer steps (None: unknown, a
    time-budgeted run; cosine then cannot be asked for, the spec refuses it)."""

    def __init__(
        self,
        spec: LRScheduleSpec,
        optimizer: torch.optim.Optimizer,
        total_steps: int | None,
        mode: Literal["min", "max"] = "min",
    ) -> None:
        self.spec = spec
        warm = spec.warmup_steps
        main: LRScheduler | None = None
        if spec.name == "step":
            main = MultiStepLR(optimizer, [m - warm for m in spec.milestones], gamma=spec.factor)
        elif spec.name == "cosine":
            assert total_steps is not None, "the spec requires max_steps or epochs with a cosine schedule"
            main = CosineAnnealingLR(optimizer, T_max=max(total_steps - warm, 1), eta_min=spec.min_lr)
        warmup = LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm)) if warm else None
        if warmup is not None and main is not None:
            self.per_step: LRScheduler | None = SequentialLR(optimizer, [warmup, main], milestones=[warm])
        else:
            self.per_step = warmup or main
        self.plateau = (
            ReduceLROnPlateau(optimizer, mode=mode, factor=spec.factor, patience=spec.patience, min_lr=spec.min_lr)
            if spec.name == "plateau"
            else None
        )
        self.steps = 0

    def step(self) -> None:
        """After each optimizer step."""
        self.steps += 1
        # With reduce-on-plateau the warm-up's LambdaLR must stop once done: stepping it further would
        # write the base rate back over the plateau's cuts.
        if self.per_step is not None and (self.plateau is None or self.steps <= self.spec.warmup_steps):
            self.per_step.step()

    def evaluated(self, value: float) -> None:
        """After each evaluation, with the task's validation metric."""
        if self.plateau is not None and self.steps >= self.spec.warmup_steps:
            self.plateau.step(value)

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "per_step": None if self.per_step is None else self.per_step.state_dict(),
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        if self.per_step is not None and state.get("per_step") is not None:
            self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None and state.get("plateau") is not None:
            self.plateau.load_state_dict(state["plateau"])


__all__ = ["LRSchedule"]
