"""Dotted keys over a job's nested sections: ``{"model": {"hyper": {...}}}`` <-> ``model.hyper.*``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def leaf_fields(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every leaf field of a schema as ``{"a.b.c": FieldInfo}`` (sections recursed into)."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(leaf_fields(ann, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = field
    return out


def get_dotted(tree: dict[str, Any], key: str) -> Any:
    """The value at ``a.b.c`` of a nested document; None when a part is missing."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """``raw`` with ``a.b.c`` set to ``value`` (sections created as needed; ``raw`` is changed)."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value
    return raw


def with_values(spec: BaseModel, values: dict[str, Any], **top: Any) -> dict[str, Any]:
    """The spec as a plain document with dotted ``values`` put in and no ``search`` section; ``top``
    replaces top-level fields (e.g. ``name``, ``storage``). Not validated."""
    raw = spec.model_dump(mode="json", exclude={"search"})
    for key, value in values.items():
        set_dotted(raw, key, value)
    raw.update(top)
    return raw


__all__ = ["flatten", "get_dotted", "leaf_fields", "set_dotted", "with_values"]
