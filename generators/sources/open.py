"""Open a labelled source by its registered format and read its label histogram."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Literal

from synthgen.generators.sources.base import (
    PixelLimit,
    Source,
    SourceError,
    SourceOptions,
    SourceRecord,
    guess_format,
    source_classes,
)
from synthgen.schemas.recipe import Recipe

__all__ = ["SourceOptions", "label_resolver", "open_source", "read_histogram"]


def open_source(
    location: str, options: SourceOptions | None = None, limit: PixelLimit | None = None
) -> Source:
    """The source at `location` (a resolved path or shard pattern), read as `options` say
    (`SourceOptions`: format, columns; default: `auto`, `label`, `image`); `format: auto`
    picks the registered format whose `guess` is surest.

    `limit`: images declaring more pixels are refused before they are decoded (see
    `PixelLimit`; callers that know the recipe pass `PixelLimit(width, height)`).
    """
    opts = options or SourceOptions()
    fmt = guess_format(location) if opts.format == "auto" else opts.format
    formats = source_classes()
    if fmt not in formats:
        raise SourceError(f"{location}: unknown source format {fmt!r}; known: {', '.join(formats)}")
    src = formats[fmt].open(location, opts)
    src.limit = limit
    return src


_ID = re.compile(r"[0-9]{1,18}")


def label_resolver(
    recipe: Recipe, label_type: Literal["auto", "name", "id"] | None = None
) -> Callable[[str], int | None]:
    """Source label -> class id, or None for a label that is no class.

    `label_type` (default: the recipe's `balance.label_type`, else `auto`): `name` reads a
    label as a class name only, `id` as a class id (a decimal number) only, `auto` as
    either — and refuses, with SourceError, a label that is the name of one class and the
    id of another, rather than pick one silently.
    """
    if label_type is None:
        label_type = recipe.balance.label_type if recipe.balance is not None else "auto"
    by_name = {c.name: c for c in recipe.classes}
    by_id = recipe.classes_by_id

    def resolve(label: str) -> int | None:
        named = by_name.get(label) if label_type != "id" else None
        numbered = by_id.get(int(label)) if label_type != "name" and _ID.fullmatch(label) else None
        if named is not None and numbered is not None and named.id != numbered.id:
            raise SourceError(
                f"label {label!r} is ambiguous: it is the name of class {named.id} "
                f"({named.name!r}) and the id of class {numbered.id} ({numbered.name!r}); "
                "set balance.label_type to `name` or `id`"
            )
        found = named if named is not None else numbered
        return None if found is None else found.id

    return resolve


def read_histogram(
    source: Source, recipe: Recipe, sink: Callable[[SourceRecord, int], None] | None = None
) -> dict[int, int]:
    """Stream the source once: per class id counts; `sink` sees every (record, class id).

    Raises SourceError for an empty source, labels absent from the recipe's classes, or a
    label that `balance.label_type: auto` cannot read unambiguously (see `label_resolver`).
    """
    resolve = label_resolver(recipe)
    counts: Counter[int] = Counter()
    unknown: Counter[str] = Counter()
    for record in source.records():
        try:
            class_id = resolve(record.label)
        except SourceError as exc:
            raise SourceError(f"{source.description}: {record.reference}: {exc}") from None
        if class_id is None:
            unknown[record.label] += 1
            continue
        counts[class_id] += 1
        if sink is not None:
            sink(record, class_id)
    if unknown:
        listed = ", ".join(f"{k!r} ({n})" for k, n in sorted(unknown.items())[:10])
        raise SourceError(
            f"{source.description}: labels not among the recipe's classes: {listed}; "
            f"classes are {', '.join(c.name for c in recipe.classes)}"
        )
    if not counts:
        raise SourceError(f"{source.description}: the source is empty")
    return {c.id: counts.get(c.id, 0) for c in recipe.classes}
