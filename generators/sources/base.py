"""Labelled-dataset sources for class balancing: stream (reference, label) pairs."""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class SourceError(ValueError):
    """A balancing source is missing, malformed, empty or holds unreadable images."""


@dataclass(frozen=True, slots=True)
class SourceRecord:
    reference: str  # stable: "file.parquet#row=12", "shard.tar#key", "class/file.png"
    label: str  # as the source spells it: a class name or a class id


def check_image(data: bytes, where: str) -> None:
    """Decode an image fully, or raise SourceError naming it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Exception as exc:
        raise SourceError(f"{where}: unreadable image: {exc}") from None


def inside_root(path: Path, root: Path) -> bool:
    """Whether the resolved `path` is `root` or lies under it (both already resolved)."""
    return path == root or path.is_relative_to(root)


class Source(ABC):
    """One kind of labelled dataset. `records()` streams; it never holds images in memory."""

    description: str

    @abstractmethod
    def records(self) -> Iterator[SourceRecord]:
        """Every sample's reference and label, each image checked to decode."""
