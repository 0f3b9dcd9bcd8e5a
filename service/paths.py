"""Where things are: the project's checkout, its vendored data, and a job's run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .io import storage

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VENDORED_DATA = PROJECT_ROOT / "data"  # data/<set>/PROVENANCE.md says where each copy comes from


class _Named(Protocol):
    @property
    def storage(self) -> str: ...

    @property
    def name(self) -> str: ...


def run_dir(spec: _Named) -> str:
    """``<storage>/<name>``: a job's (or campaign's) folder: Ray's checkpoints or Tune's experiment,
    the MLflow run id, the failure marker, a campaign's trials."""
    return storage.join(spec.storage, spec.name)


__all__ = ["PROJECT_ROOT", "VENDORED_DATA", "run_dir"]
