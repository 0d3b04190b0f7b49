"""Parquet files with an image column (bytes, or a struct with `bytes`) and a label column."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from synthgen.generators.sources.base import (
    Source,
    SourceError,
    SourceRecord,
    check_image,
    inside_root,
)


class ParquetSource(Source):
    """One Parquet file, or every `*.parquet` in a folder (links must stay inside it).

    Images are read from the bytes in the image column only: a `path` beside them (the
    Hugging Face `Image` struct) is never opened, so rows cannot point at other files.
    """

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

    def records(self) -> Iterator[SourceRecord]:
        import pyarrow.parquet as pq

        for f in self.files:
            try:
                pf = pq.ParquetFile(f)
            except Exception as exc:
                raise SourceError(f"{f}: not a readable Parquet file: {exc}") from None
            names = pf.schema_arrow.names
            for column in (self.label_column, self.image_column):
                if column not in names:
                    raise SourceError(
                        f"{f}: no column {column!r} (columns: {', '.join(names)}); "
                        "set balance.label_column / balance.image_column"
                    )
            row = 0
            for batch in pf.iter_batches(
                columns=[self.label_column, self.image_column], batch_size=256
            ):
                labels = batch.column(0).to_pylist()
                images = batch.column(1).to_pylist()
                for label, image in zip(labels, images, strict=True):
                    where = f"{f.name}#row={row}"
                    if isinstance(image, dict):
                        image = image.get("bytes")
                    if label is None:
                        raise SourceError(f"{f}: row {row} has no label")
                    if not isinstance(image, bytes | bytearray):
                        raise SourceError(f"{f}: row {row}: {self.image_column!r} holds no bytes")
                    check_image(bytes(image), f"{f} row {row}")
                    yield SourceRecord(where, str(label))
                    row += 1
