"""Error messages of a recipe that does not validate: one line per problem, naming the file
or the `--set` that gave the field, with a "did you mean" for a misspelt field."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from synthgen.schemas.recipe.recipe import Recipe


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold (through Optional, list, dict, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _field_names_at(loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed where `loc` (an error location) points: its parent's fields."""
    models: list[type[BaseModel]] = [Recipe]
    for part in loc[:-1]:
        if not isinstance(part, str):
            continue  # a list index or dict key: same models
        found = [m.model_fields[part].annotation for m in models if part in m.model_fields]
        if found:
            models = [m for a in found for m in _models_in(a)]
    return sorted({name for m in models for name in m.model_fields})


def did_you_mean(name: str, choices: list[str]) -> str:
    """` (did you mean 'x'?)` for the closest of `choices` (difflib), or ''."""
    import difflib

    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_validation_error(
    exc: ValidationError, source: str, overridden: dict[str, str] | None = None
) -> str:
    """One line per problem; a problem in a field given with `--set` names that `--set`
    (the file did not say it), the others name the file."""
    overridden = overridden or {}
    lines = []
    from_set = 0
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field" + did_you_mean(str(err["loc"][-1]), _field_names_at(err["loc"]))
        item = next((v for k, v in overridden.items() if loc == k or loc.startswith(k + ".")), None)
        from_set += item is not None
        lines.append(f"  --set {item}: {loc}: {msg}" if item else f"  {loc}: {msg}")
    n = exc.error_count()
    if from_set == n:
        head = f"--set: invalid override of recipe {source} ({n} problem(s))"
    else:
        head = f"{source}: invalid recipe ({n} problem(s))"
    return "\n".join([head, *lines])
