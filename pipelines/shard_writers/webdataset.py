"""The WebDataset layout: `{shard:05d}.tar` with the accepted samples and `{shard:05d}.parquet`
with every attempt.

The tar holds accepted samples (`key.<image>`, `key.json` full provenance with scalar scores,
`key.txt` prompt, `key.cls` class id); a video build's samples are laid out as video2dataset
writes them, the clip as `key.mp4` beside the same `key.json`, `key.txt` (caption = prompt)
and `key.cls`. The Parquet holds every attempt with every score column, vectors included
(a video build's also `frames`, `fps`, `duration_s`, `codec`), and the image or clip of
each rejected sample; build constants live in its file metadata. Both list samples in the
order they are written (shard order). A withheld image (a failed safety check) is in neither.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from pydantic import BaseModel

from synthgen.pipelines.shard_writers.base import ShardWriter
from synthgen.schemas.manifest import shard_files
from synthgen.schemas.records import (
    ACCEPTED,
    BuildContext,
    Sample,
    build_constants,
    provenance_from_row,
    sample_schema,
    strict_json,
    withheld,
)
from synthgen.schemas.scores import ScoreColumn

TAR_MTIME = 0  # fixed, so equal content gives equal tar bytes


class WebDatasetWriter(ShardWriter):
    """Today's layout: the tar (streamed, one sample at a time) and the Parquet (at close)."""

    name = "webdataset"

    def __init__(
        self,
        out_dir: Path,
        shard: int,
        ctx: BuildContext,
        columns: Sequence[ScoreColumn],
        options: BaseModel | None = None,
    ):
        super().__init__(out_dir, shard, ctx, columns, options)
        self.files = shard_files(shard)
        self._constants = build_constants(ctx)
        self._rows: list[dict[str, Any]] = []
        tar = self.open_file(self.files.tar)
        try:
            self._tar = wds.TarWriter(
                tar, encoder=False, mtime=TAR_MTIME, user="synthgen", group="synthgen"
            )
        except BaseException as exc:  # no `with` block runs for a writer never made
            self.abort(exc)
            raise

    def write(self, sample: Sample) -> None:
        row = self.row(sample)
        self._rows.append(row)
        if sample.status == ACCEPTED and not withheld(sample):
            self._tar.write(self.members(sample, row))

    def members(self, sample: Sample, row: dict[str, Any]) -> dict[str, Any]:
        """The tar members of an accepted sample, by extension (`__key__` its key)."""
        prov = provenance_from_row(
            {**row, "created_at": self.ctx.created_at}, self.columns, self._constants
        )
        return {
            "__key__": sample.request.key,
            sample.media.extension or self.codec.extension: sample.media.data,
            "json": strict_json(prov, sort_keys=True, ensure_ascii=False).encode(),
            "txt": sample.request.prompt.encode(),
            "cls": str(sample.request.class_label).encode("ascii"),
        }

    def abort(self, exc: BaseException | None = None) -> None:
        with contextlib.suppress(Exception):
            self._tar.close()  # its stream, before its temporary file goes
        super().abort(exc)

    def finish(self) -> None:
        self._tar.close()
        self.close_file(self.files.tar)
        schema = sample_schema(self.columns, self.ctx, self.class_names())
        table = pa.Table.from_pylist(self._rows, schema=schema)
        pq.write_table(table, self.open_file(self.files.parquet), compression="zstd")
        self.close_file(self.files.parquet)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The Parquet rows written so far (what a subclass may also write elsewhere)."""
        return self._rows
