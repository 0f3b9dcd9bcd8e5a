"""Reading a job: YAML, ``--set a.b.c=value`` overrides, then the task's job class from the
registry (:mod:`service.tasks`). Every problem becomes one :class:`JobSpecError` whose lines name
the field, what was expected and what was found."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ..tasks import DEFAULT_TASK, task_named
from .errors import JobSpecError, validate_as
from .schema import JobSpec
from .search import check_search


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key.strip()):
        raise JobSpecError("--set", [f"{text!r}: expected KEY.PATH=VALUE, e.g. model.hyper.embed_size=16"])
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``raw`` with every ``--set`` applied in order (sections created as needed; ``raw`` is changed)."""
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise JobSpecError("--set", [f"{text!r}: {k} is not a section"])
            node = child
        node[keys[-1]] = value
    return raw


def validate_job(raw: Any, source: str = "job") -> JobSpec:
    """Validate a parsed document as its task's job class (``task``, default the registry's
    default task); a campaign's ``search`` section gets the task's metric defaults and is checked
    against the schema. Raises :class:`JobSpecError` listing every problem."""
    if not isinstance(raw, dict):
        raise JobSpecError(
            source, [f"expected a mapping of sections (name, data, model, train, ...), found {type(raw).__name__}"]
        )
    task = task_named(raw.get("task", DEFAULT_TASK), source)
    if raw.get("task", task.name) != task.name:  # an old name of the task: the document says the new one
        raw = {**raw, "task": task.name}
    spec: JobSpec = validate_as(task.job_class, raw, source)
    if spec.search is not None:
        metrics = task.metrics
        if spec.search.metric is None:
            spec.search.metric = metrics.valid
        if spec.search.mode is None:
            spec.search.mode = metrics.mode(spec.search.metric)
        problems = check_search(spec, metrics.reported)
        if problems:
            raise JobSpecError(source, problems)
    return spec


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read, override and validate a job YAML file."""
    path = Path(path)
    if not path.is_file():
        raise JobSpecError(str(path), ["file not found (expected a job YAML file)"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise JobSpecError(str(path), [f"not valid YAML: {e}"]) from None
    if isinstance(raw, dict):
        raw = apply_overrides(raw, overrides or [])
    return validate_job(raw, str(path))


__all__ = ["apply_overrides", "load_job", "parse_override", "validate_job"]
