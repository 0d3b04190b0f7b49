"""An image folder with one sub-folder per class (the sub-folder name is the label)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from synthgen.generators.sources.base import Source, SourceError, SourceRecord, check_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


class FolderSource(Source):
    def __init__(self, root: Path):
        self.root = root
        self.description = f"image folder {root}"
        if not root.is_dir():
            raise SourceError(f"{root}: source folder not found")

    def records(self) -> Iterator[SourceRecord]:
        for class_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for f in sorted(class_dir.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    rel = f.relative_to(self.root).as_posix()
                    check_image(f.read_bytes(), str(f))
                    yield SourceRecord(rel, class_dir.name)
