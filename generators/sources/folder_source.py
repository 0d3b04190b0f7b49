"""An image folder with one sub-folder per class (the sub-folder name is the label)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from synthgen.generators.sources.base import (
    Source,
    SourceError,
    SourceImage,
    SourceOptions,
    inside_root,
)
from synthgen.schemas.media import IMAGE_SUFFIXES

__all__ = ["IMAGE_SUFFIXES", "FolderSource"]


class FolderSource(Source):
    """Class folders under `root`, walked in name order.

    A symbolic link (class folder, sub-folder or file) is followed only when it resolves
    inside `root`; one that leads out of it is refused by name. Within a class, a folder
    reached twice through links is walked once, so a link loop ends.
    """

    format = "folder"

    @classmethod
    def open(cls, location: str, options: SourceOptions) -> FolderSource:
        return cls(Path(location))

    @classmethod
    def guess(cls, location: str) -> int:
        return 10 if Path(location).is_dir() else 0

    def __init__(self, root: Path):
        self.root = root
        self.description = f"image folder {root}"
        if not root.is_dir():
            raise SourceError(f"{root}: source folder not found")
        self.real_root = root.resolve()

    def _checked(self, path: Path) -> Path:
        """`path` resolved, or SourceError if it is a link leading out of the source root."""
        real = path.resolve()
        if not inside_root(real, self.real_root):
            raise SourceError(
                f"{path}: symbolic link to {real} leads out of the source folder {self.root}"
            )
        return real

    def _files(self, folder: Path, seen: set[Path]) -> Iterator[Path]:
        real = self._checked(folder)
        if real in seen:
            return
        seen.add(real)
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            path = folder / entry.name
            if entry.is_symlink():
                self._checked(path)
            if entry.is_dir():
                yield from self._files(path, seen)
            elif entry.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                yield path

    def iter_images(self, mask: str | None = None) -> Iterator[SourceImage]:
        if mask is not None:
            raise SourceError(
                f"{self.description}: mask_column is for Parquet and WebDataset sources; an "
                "image folder's masks come from `mask_folder`"
            )
        for class_dir in sorted(self.root.iterdir()):
            if class_dir.is_symlink():
                self._checked(class_dir)
            if not class_dir.is_dir():
                continue
            for f in self._files(class_dir, set()):
                data = f.read_bytes()
                self._check(data, str(f))
                yield SourceImage(f.relative_to(self.root).as_posix(), class_dir.name, data)

    def read(self, reference: str, mask: str | None = None) -> bytes:
        if mask is not None:
            raise SourceError(f"{self.description}: an image folder holds no mask {mask!r}")
        path = self.root / reference
        real = path.resolve()
        if not inside_root(real, self.real_root) or real == self.real_root:
            raise SourceError(f"{reference}: leads out of the source folder {self.root}")
        if not real.is_file():
            raise SourceError(f"{reference}: no such image in {self.root}")
        return real.read_bytes()
