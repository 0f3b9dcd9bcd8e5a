"""The base of every spec section: unknown keys are errors and defaults are validated too."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


__all__ = ["Strict"]
