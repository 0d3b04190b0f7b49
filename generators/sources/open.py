"""Pick the reader for a balance source and read its label histogram."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from synthgen.generators.sources.base import PixelLimit, Source, SourceError, SourceRecord
from synthgen.generators.sources.folder_source import FolderSource
from synthgen.generators.sources.parquet_source import ParquetSource
from synthgen.generators.sources.webdataset_source import WebDatasetSource
from synthgen.schemas.recipe import BalanceSpec, Recipe


def open_source(spec: BalanceSpec, source: str, limit: PixelLimit | None = None) -> Source:
    """`source` is the resolved path or pattern; `format: auto` guesses from its shape.

    `limit`: images declaring more pixels are refused before they are decoded (see
    `PixelLimit`; callers that know the recipe pass `PixelLimit(width, height)`)."""
    src = _open(spec, source)
    src.limit = limit
    return src


def _open(spec: BalanceSpec, source: str) -> Source:
    fmt = spec.format
    path = Path(source)
    if fmt == "auto":
        if source.endswith(".tar") or any(c in source for c in "{*?["):
            fmt = "webdataset"
        elif source.endswith(".parquet") or (path.is_dir() and any(path.glob("*.parquet"))):
            fmt = "parquet"
        elif path.is_dir() and any(path.glob("*.tar")):
            return WebDatasetSource(str(path / "*.tar"))
        elif path.is_dir():
            fmt = "folder"
        else:
            raise SourceError(f"{source}: balance source not found")
    if fmt == "parquet":
        if not path.exists():
            raise SourceError(f"{source}: balance source not found")
        return ParquetSource(path, spec.label_column, spec.image_column)
    if fmt == "webdataset":
        return WebDatasetSource(source)
    return FolderSource(path)


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
