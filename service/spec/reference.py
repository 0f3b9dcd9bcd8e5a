"""The reference of every job key (``hyperctl schema``): read from the job classes themselves, so it
never drifts from what :func:`~service.spec.loading.validate_job` accepts."""

from __future__ import annotations

import enum
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


@dataclass(frozen=True)
class KeyDoc:
    """One leaf key of a job: dotted ``key``, readable ``type``, ``default`` (text) and ``description``."""

    key: str
    type: str
    default: str
    description: str


def _section(ann: Any) -> type[BaseModel] | None:
    """The section class a field holds (``X`` or ``X | None``), else None."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        sections = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(sections) == 1:
            return sections[0]
    return None


def _section_or_list(ann: Any) -> type[BaseModel] | None:
    """The section class of a field that holds ``X``, ``list[X]`` or a union of them (Annotated or
    not), when it is not a plain section; else None."""
    found: set[type[BaseModel]] = set()

    def walk(a: Any) -> None:
        if isinstance(a, type) and issubclass(a, BaseModel):
            found.add(a)
        elif typing.get_origin(a) in (typing.Annotated, typing.Union, types.UnionType, list):
            args = typing.get_args(a)
            for arg in args[:1] if typing.get_origin(a) is typing.Annotated else args:
                walk(arg)

    walk(ann)
    return next(iter(found)) if len(found) == 1 else None


def type_name(ann: Any) -> str:
    """A field's type as a user reads it: ``int``, ``adam | adamw | sgd``, ``str | null``, ``list[int]``."""
    if ann is type(None):
        return "null"
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return type_name(typing.get_args(ann)[0])
    if origin is typing.Literal:
        return " | ".join("null" if v is None else str(v) for v in typing.get_args(ann))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(ann))
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in typing.get_args(ann) if a is not Ellipsis)}]"
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return " | ".join(str(m.value) for m in ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "section"
    return getattr(ann, "__name__", str(ann)).replace("typing.", "")


def _bounds(field: FieldInfo) -> str:
    """The field's numeric bounds as text (``> 0``, ``>= 0, < 1``), from its ``gt``/``ge``/``lt``/``le``."""
    parts = []
    for meta in field.metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
    return ", ".join(parts)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)


def key_reference(model: type[BaseModel], prefix: str = "") -> list[KeyDoc]:
    """Every leaf key of ``model`` in schema order, recursing into sections (``section.<name>.key`` for
    a mapping of named sections)."""
    out: list[KeyDoc] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        section = _section(ann)
        if section is not None:
            if field.description:
                out.append(KeyDoc(f"{prefix}{name}", type_name(ann), _default(field), field.description))
            out.extend(key_reference(section, f"{prefix}{name}."))
            continue
        listed = _section_or_list(ann)
        if listed is not None:  # one section or a list of them (e.g. data.train: a corpus or several)
            out.append(KeyDoc(f"{prefix}{name}", type_name(ann), _default(field), (field.description or "").strip()))
            out.extend(key_reference(listed, f"{prefix}{name}[.<i>]."))
            continue
        if typing.get_origin(ann) is dict:
            value = typing.get_args(ann)[1]
            inner = _section(value)
            if inner is not None:
                out.extend(key_reference(inner, f"{prefix}{name}.<name>."))
                continue
        bounds = _bounds(field)
        kind = f"{type_name(ann)}, {bounds}" if bounds else type_name(ann)
        out.append(KeyDoc(f"{prefix}{name}", kind, _default(field), (field.description or "").strip()))
    return out


def format_reference(model: type[BaseModel], title: str) -> str:
    """The key reference as aligned text: ``key  type  default  description``."""
    rows = key_reference(model)
    width_key = max(len(r.key) for r in rows)
    width_type = min(max(len(r.type) for r in rows), 36)
    width_default = min(max(len(r.default) for r in rows), 16)
    lines = [title, f"{'key':<{width_key}}  {'type':<{width_type}}  {'default':<{width_default}}  description"]
    for r in rows:
        line = f"{r.key:<{width_key}}  {r.type:<{width_type}}  {r.default:<{width_default}}  {r.description}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def json_schema(models: dict[str, type[BaseModel]]) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) accepting a job of any of ``models`` (task name -> job class), for
    editors: one shared ``$defs``, a job matches the schema of its task."""
    from pydantic.json_schema import models_json_schema

    refs, top = models_json_schema([(cls, "validation") for cls in models.values()], title="hyperctl job")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "hyperctl job",
        "description": "A job of one task: " + ", ".join(models) + " (task: defaults to the first)",
        "anyOf": [refs[(cls, "validation")] for cls in models.values()],
        "$defs": top.get("$defs", {}),
    }


__all__ = ["KeyDoc", "format_reference", "json_schema", "key_reference", "type_name"]
