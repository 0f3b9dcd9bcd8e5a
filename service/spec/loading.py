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


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: object, first: int, second: int) -> None:
        super().__init__(f"line {second}: key {key!r} appears twice (first at line {first}); keep one")


class _JobLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKeyError(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: the base class reports it
                pass
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str, source: str) -> Any:
    """Parse a job document; syntax problems become a :class:`JobSpecError` naming ``source`` and the line
    (tabs, duplicate keys and an empty document each said in plain words)."""
    try:
        doc = yaml.load(text, Loader=_JobLoader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKeyError as e:
        raise JobSpecError(source, [str(e)]) from None
    except yaml.YAMLError as e:
        raise JobSpecError(source, [_yaml_problem(e, text)]) from None
    if doc is None:
        raise JobSpecError(
            source, ["the file is empty (expected a job: name, data, model, train, ...; see jobs/quickstart.yaml)"]
        )
    return doc


def _yaml_problem(e: yaml.YAMLError, text: str) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    if mark is None:
        return f"not valid YAML: {problem}"
    line_no = mark.line + 1
    lines = text.splitlines()
    line = lines[mark.line] if mark.line < len(lines) else ""
    if "\t" in line[: len(line) - len(line.lstrip())] or "'\\t'" in problem:
        return f"line {line_no}: indented with a tab; YAML indents with spaces only: {line.strip()!r}"
    context = getattr(e, "context", None)
    context_mark = getattr(e, "context_mark", None)
    if context and context_mark is not None and context_mark.line != mark.line:
        context = f"{context} started at line {context_mark.line + 1}"
    what = f"{context}, {problem}" if context else problem
    return f"line {line_no}, column {mark.column + 1}: not valid YAML ({what}): {line.strip()!r}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key.strip()):
        raise JobSpecError("--set", [f"{text!r}: expected KEY.PATH=VALUE, e.g. model.hyper.embed_size=16"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise JobSpecError("--set", [f"{text!r}: the value is not valid YAML ({getattr(e, 'problem', e)})"]) from None
    return key.strip().split("."), value


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
    """Read, override and validate a job YAML file.

    Raises :class:`JobSpecError` naming the file (and line) for a missing file, a folder, bad YAML, an
    empty file or an invalid spec; a problem in a field that a ``--set`` gave says so.
    """
    path = Path(path)
    if path.is_dir():
        raise JobSpecError(str(path), ["is a folder; expected a job YAML file, e.g. jobs/quickstart.yaml"])
    if not path.is_file():
        raise JobSpecError(str(path), ["file not found (expected a job YAML file, e.g. jobs/quickstart.yaml)"])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise JobSpecError(str(path), [f"not UTF-8 text (byte {e.start}): is this a job YAML file?"]) from None
    raw = read_yaml(text, str(path))
    overrides = overrides or []
    if isinstance(raw, dict):
        raw = apply_overrides(raw, overrides)
    try:
        return validate_job(raw, str(path))
    except JobSpecError as e:
        raise JobSpecError(e.source, [_blame_override(p, overrides) for p in e.problems]) from None


def _blame_override(problem: str, overrides: list[str]) -> str:
    """``problem`` with the ``--set`` that gave its field named (the last one wins, as applied)."""
    field = problem.partition(":")[0]
    for text in reversed(overrides):
        key = text.partition("=")[0].strip()
        if field == key or field.startswith(key + ".") or key.startswith(field + "."):
            return f"{problem} (from --set {text})"
    return problem


__all__ = ["apply_overrides", "load_job", "parse_override", "read_yaml", "validate_job"]
