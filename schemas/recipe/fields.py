"""Markers a recipe field declares about itself: how the recipe hash treats it, and whether
it names a path (resolved against the working directory when given with `--set`)."""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python


class HashOmit(enum.Enum):
    """When a field is left out of the recipe hash (`Annotated[X, HashOmit.IF_DEFAULT]`).

    A field added after recipes were first hashed carries one, so a recipe that does not
    use it keeps the hash it had (its builds still resume and extend).
    """

    ALWAYS = "always"  # never affects what is made (Beam batching)
    IF_DEFAULT = "if_default"  # while it equals its default
    IF_EMPTY = "if_empty"  # while null, empty or zero

    def omits(self, info: FieldInfo, value: Any) -> bool:
        """Whether a field of `info` holding `value` (as JSON) is left out."""
        if self is HashOmit.ALWAYS:
            return True
        if self is HashOmit.IF_EMPTY:
            return not value
        return bool(value == to_jsonable_python(info.get_default(call_default_factory=True)))


class _IsPath:
    """The marker of a field holding a local path or a URL (`RecipePath`)."""

    def __repr__(self) -> str:
        return "IsPath"


IsPath = _IsPath()

# A field naming a file or folder: relative to the recipe's folder when read from the file,
# to the working directory when given with `--set`; a URL stays as it is.
RecipePath = Annotated[str, IsPath]


def hash_omit(info: FieldInfo) -> HashOmit | None:
    """The hash marker a field declares, if any."""
    return next((m for m in info.metadata if isinstance(m, HashOmit)), None)


class FieldPatterns(tuple[tuple[str, ...], ...]):
    """Dotted field locations, `*` standing for any list index or mapping key;
    `("adapters", "0", "path") in patterns` matches the pattern `("adapters", "*", "path")`."""

    def __contains__(self, parts: object) -> bool:
        return isinstance(parts, tuple) and any(_matches(p, parts) for p in self)

    def below(self, parts: tuple[str, ...]) -> bool:
        """Whether some location lies inside the field at `parts`."""
        n = len(parts)
        return any(len(p) > n and _matches(p[:n], parts) for p in self)


def _matches(pattern: tuple[str, ...], parts: tuple[Any, ...]) -> bool:
    return len(pattern) == len(parts) and all(
        a in ("*", b) for a, b in zip(pattern, parts, strict=True)
    )


def path_fields(model: type[BaseModel]) -> FieldPatterns:
    """Every location in `model` (nested models, list elements, mapping values) whose field
    is a `RecipePath`, in declaration order."""
    seen: dict[tuple[str, ...], None] = {}
    for parts in _paths_in(model, ()):
        seen.setdefault(parts, None)
    return FieldPatterns(seen)


def _paths_in(ann: Any, prefix: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Annotated:
        if any(m is IsPath for m in args[1:]):
            yield prefix
        yield from _paths_in(args[0], prefix)
    elif isinstance(ann, type) and issubclass(ann, BaseModel):
        for name, info in ann.model_fields.items():
            if any(m is IsPath for m in info.metadata):
                yield (*prefix, name)
            yield from _paths_in(info.annotation, (*prefix, name))
    elif origin in (list, tuple):
        yield from _paths_in(args[0], (*prefix, "*"))
    elif origin is dict:
        yield from _paths_in(args[1], (*prefix, "*"))
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            yield from _paths_in(arg, prefix)
