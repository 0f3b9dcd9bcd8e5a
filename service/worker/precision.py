"""Mixed precision (``train.precision``) for every task's worker loop: autocast around forward and
loss, and the backward pass and optimizer step through a gradient scaler.

* ``fp32``: autocast off, no scaling: exactly the plain float32 step.
* ``bf16``: autocast to bfloat16 on the worker's device type. bfloat16 has float32's exponent range,
  so gradients need no scaling.
* ``fp16``: autocast to float16 and a :class:`torch.amp.GradScaler`: the loss is multiplied by the
  scale before backward so that small gradients do not flush to zero in float16; the gradients are
  unscaled before clipping (the clip threshold is in true units); a step whose gradients
  overflowed is skipped by the scaler and the scale lowered. The scaler's state goes with every
  checkpoint (:mod:`.checkpoint`), so a resumed run continues with the same scale.

Parameters, optimizer state and the loss stay float32 (autocast computes ``cross_entropy`` and
``log_softmax`` in float32). No Ray and no pydantic here: GPU checks import this module alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any, Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecision:
    """Autocast and gradient scaling of one worker, for ``precision`` on ``device``."""

    def __init__(self, precision: Precision, device: torch.device | str) -> None:
        if precision not in DTYPES:
            raise ValueError(f"precision: expected one of {', '.join(DTYPES)}, found {precision!r}")
        self.precision = precision
        self.dtype = DTYPES[precision]
        self.device_type = torch.device(device).type
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=precision == "fp16")

    @property
    def scaling(self) -> bool:
        """Whether gradients go through the scaler (fp16)."""
        return self.scaler.is_enabled()

    def autocast(self) -> AbstractContextManager[Any]:
        """The context for forward and loss: autocast to :attr:`dtype` (inactive for fp32)."""
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.precision != "fp32")

    def backward(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        parameters: Iterable[torch.nn.Parameter],
        max_norm: float | None,
    ) -> torch.Tensor:
        """Gradients of ``loss`` in true units (fp16: scaled for backward, unscaled after it), then
        clipped to the global norm ``max_norm`` (None: not clipped). Returns the norm before
        clipping: not finite when a gradient overflowed (for fp16, :meth:`step` then skips the step)."""
        self.accumulate(loss)
        return self.unscale_and_clip(optimizer, parameters, max_norm)

    def accumulate(self, loss: torch.Tensor) -> None:
        """Add the gradient of ``loss`` (fp16: scaled) to the parameters' (a micro-batch's part)."""
        self.scaler.scale(loss).backward()

    def unscale_and_clip(
        self,
        optimizer: torch.optim.Optimizer,
        parameters: Iterable[torch.nn.Parameter],
        max_norm: float | None,
        multiplier: float = 1.0,
    ) -> torch.Tensor:
        """The accumulated gradients in true units (fp16: unscaled), times ``multiplier``, clipped to
        ``max_norm``; returns the norm before clipping (see :meth:`backward`)."""
        if self.scaling:
            self.scaler.unscale_(optimizer)
        params = [p for p in parameters if p.grad is not None]
        if multiplier != 1.0:
            for p in params:
                assert p.grad is not None
                p.grad.mul_(multiplier)
        return torch.nn.utils.clip_grad_norm_(params, max_norm or math.inf)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step after :meth:`backward` (fp16: skipped when the gradients overflowed,
        and the scale updated)."""
        if self.scaling:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state (empty unless fp16)."""
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaling and state:
            self.scaler.load_state_dict(state)


__all__ = ["DTYPES", "MixedPrecision", "Precision"]
