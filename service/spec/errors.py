"""The one error type of a job that cannot run, and pydantic's errors as readable lines."""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ValidationError


class JobSpecError(ValueError):
    """A job spec that cannot run; ``problems`` holds one readable line per problem, each naming the
    field, what was expected and what was found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source, self.problems = source, problems
        super().__init__(f"{source}: invalid job spec\n" + "\n".join(f"  - {p}" for p in problems))

    def __reduce__(self) -> tuple[type[JobSpecError], tuple[str, list[str]]]:  # raised in a Ray task too
        return (JobSpecError, (self.source, self.problems))


def _first_model(ann: Any) -> type[BaseModel] | None:
    """The first schema class inside an annotation (through unions, lists and Annotated)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        if (found := _first_model(arg)) is not None:
            return found
    return None


def _model_at(path: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The schema class that holds the field at ``path`` (None when the path leaves the schema)."""
    model: Any = root
    parts = list(path)
    while parts:
        part = parts.pop(0)
        if isinstance(part, int):  # an item of a list: the list's schema class is already chosen
            continue
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = field.annotation if field is not None else None
        if typing.get_origin(ann) is dict and parts:  # dict[str, Section]: skip the key
            parts.pop(0)
            ann = typing.get_args(ann)[1]
        elif ann is not None and not isinstance(ann, type):  # X | None, X | list[X], Annotated[...]
            ann = _first_model(ann)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def describe(err: Any, root: type[BaseModel]) -> str:
    """One pydantic error (``ValidationError.errors()`` item) as a line naming the dotted field."""
    # a tagged union's tag, written "(...)" by the schemas (e.g. one corpus or a list), is no field
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("(")))
    where = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1], root)
        known = list(parent.model_fields) if parent else []
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean '{'.'.join(map(str, loc[:-1] + (guess[0],)))}'?" if guess else ""
        return f"{where}: unknown key{hint} (known keys here: {', '.join(known)})"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{where}: required field is missing"
    if err["type"] == "value_error" or "input" not in err:
        return f"{where}: {msg}" if loc else msg
    return f"{where}: {msg}; found {err['input']!r}"


def validate_as(cls: type[BaseModel], raw: Any, source: str) -> Any:
    """``cls.model_validate(raw)``, every pydantic error as one line of a :class:`JobSpecError`."""
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise JobSpecError(source, [describe(err, cls) for err in e.errors()]) from None


__all__ = ["JobSpecError", "describe", "validate_as"]
