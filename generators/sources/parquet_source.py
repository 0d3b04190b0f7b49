"""Parquet files with an image column (bytes, or a struct with `bytes`) and a label column."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from synthgen.generators.sources.base import (
    Source,
    SourceError,
    SourceImage,
    SourceOptions,
    inside_root,
)


class ParquetSource(Source):
    """One Parquet file, or every `*.parquet` in a folder (links must stay inside it).

    Images are read from the bytes in the image column only: a `path` beside them (the
    Hugging Face `Image` struct) is never opened, so rows cannot point at other files.
    """

    format = "parquet"

    @classmethod
    def open(cls, location: str, options: SourceOptions) -> ParquetSource:
        path = Path(location)
        if not path.exists():
            raise SourceError(f"{location}: balance source not found")
        return cls(path, options.label_column, options.image_column)

    @classmethod
    def guess(cls, location: str) -> int:
        path = Path(location)
        if location.endswith(".parquet"):
            return 30
        return 20 if path.is_dir() and any(path.glob("*.parquet")) else 0

    def __init__(self, path: Path, label_column: str, image_column: str):
        self.path = path
        self.label_column = label_column
        self.image_column = image_column
        self.description = f"Parquet {path}"
        self.files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        if not self.files:
            raise SourceError(f"{path}: no .parquet files")
        if path.is_dir():
            # a folder's files must be its own: no link out of it, nothing but regular files
            root = path.resolve()
            for f in self.files:
                if f.is_symlink() and not inside_root(f.resolve(), root):
                    raise SourceError(
                        f"{f}: symbolic link to {f.resolve()} leads out of the source folder"
                    )
        for f in self.files:
            if not f.is_file():
                raise SourceError(f"{f}: not a regular file")

    def _columns(self, f: Path, pf: Any, mask: str | None) -> None:
        names = pf.schema_arrow.names
        for column in (self.label_column, self.image_column):
            if column not in names:
                raise SourceError(
                    f"{f}: no column {column!r} (columns: {', '.join(names)}); "
                    "set balance.label_column / balance.image_column"
                )
        if mask is not None and mask not in names:
            raise SourceError(
                f"{f}: no mask column {mask!r} (columns: {', '.join(names)}); "
                "set source.mask_column"
            )

    def iter_images(self, mask: str | None = None) -> Iterator[SourceImage]:
        import pyarrow.parquet as pq

        for f in self.files:
            try:
                pf = pq.ParquetFile(f)
            except Exception as exc:
                raise SourceError(f"{f}: not a readable Parquet file: {exc}") from None
            self._columns(f, pf, mask)
            columns = [self.label_column, self.image_column] + ([mask] if mask else [])
            row = 0
            for batch in pf.iter_batches(columns=columns, batch_size=256):
                labels = batch.column(0).to_pylist()
                images = batch.column(1).to_pylist()
                masks = batch.column(2).to_pylist() if mask else [None] * batch.num_rows
                for label, image, mask_cell in zip(labels, images, masks, strict=True):
                    if label is None:
                        raise SourceError(f"{f}: row {row} has no label")
                    data = _cell_bytes(image, f"{f}: row {row}: {self.image_column!r}")
                    self._check(data, f"{f} row {row}")
                    mask_data = None
                    if mask is not None:
                        if mask_cell is None:
                            raise SourceError(f"{f}: row {row} has no mask in {mask!r}")
                        mask_data = _cell_bytes(mask_cell, f"{f}: row {row}: {mask!r}")
                        self._check(mask_data, f"{f} row {row} mask {mask!r}")
                    yield SourceImage(f"{f.name}#row={row}", str(label), data, mask_data)
                    row += 1

    def read(self, reference: str, mask: str | None = None) -> bytes:
        import pyarrow.parquet as pq

        name, _, row_text = reference.partition("#row=")
        f = next((f for f in self.files if f.name == name), None)
        if f is None or not row_text.isdigit():
            raise SourceError(f"{reference}: not a row of {self.path}")
        column = mask or self.image_column
        pf = pq.ParquetFile(f)
        row = int(row_text)
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if row < n:
                value = pf.read_row_group(g, columns=[column]).column(0)[row]
                return _cell_bytes(value.as_py(), f"{reference}: {column!r}")
            row -= n
        raise SourceError(f"{reference}: no such row in {f}")


def _cell_bytes(value: Any, where: str) -> bytes:
    """An image cell's bytes: raw bytes, or the `bytes` of a Hugging Face Image struct (its
    `path` is never opened)."""
    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, bytes | bytearray):
        raise SourceError(f"{where} holds no bytes")
    return bytes(data)
