"""Pick the reader for a balance source and read its label histogram."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from synthgen.generators.sources.base import Source, SourceError, SourceRecord
from synthgen.generators.sources.folder_source import FolderSource
from synthgen.generators.sources.parquet_source import ParquetSource
from synthgen.generators.sources.webdataset_source import WebDatasetSource
from synthgen.schemas.recipe import BalanceSpec, Recipe


def open_source(spec: BalanceSpec, source: str) -> Source:
    """`source` is the resolved path or pattern; `format: auto` guesses from its shape."""
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


def label_resolver(recipe: Recipe) -> Callable[[str], int | None]:
    """Source label -> class id: by class name first, then by class id written as a number."""
    by_name = {c.name: c.id for c in recipe.classes}
    ids = {c.id for c in recipe.classes}

    def resolve(label: str) -> int | None:
        if label in by_name:
            return by_name[label]
        if label.lstrip("-").isdigit() and int(label) in ids:
            return int(label)
        return None

    return resolve


def read_histogram(
    source: Source, recipe: Recipe, sink: Callable[[SourceRecord, int], None] | None = None
) -> dict[int, int]:
    """Stream the source once: per class id counts; `sink` sees every (record, class id).

    Raises SourceError for an empty source or labels absent from the recipe's classes.
    """
    resolve = label_resolver(recipe)
    counts: Counter[int] = Counter()
    unknown: Counter[str] = Counter()
    for record in source.records():
        class_id = resolve(record.label)
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
