"""Checks of a validated spec against the world: files, URIs, cluster resources.

``check_job`` raises JobSpecError naming the field, what was expected and what was found.
"""
from __future__ import annotations

from .spec import JobSpec


def check_job(spec: JobSpec) -> None:
    """Raise JobSpecError for problems only the environment can reveal (to be completed)."""
