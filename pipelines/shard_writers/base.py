"""The shard writer interface: opened for one shard, given its samples in order, closed.

A writer is made for one shard (`ShardWriter(out_dir, shard, ctx, columns)`), receives each
of the shard's samples once, in shard order (`write`), and on `close` publishes its files
and returns them with their sha256 and size: what the shard's stats and the manifest list.
Every file goes through `open_file`: written under a temporary name and renamed when closed
(`close_file`, or `close` for those still open); a writer left by an exception (`abort`,
or leaving its `with` block) removes its temporary files and renames nothing.

A shard's files always include `ShardFiles` (`shard_files(shard)`: the tar and the Parquet,
what readers, checks and resume read); a writer may add more, named `{shard:05d}.<ext>`.
Subclassing with a `name` registers a writer; the build context names the one a build
uses (`BuildContext.shard_writer`), and `shard_writer_class` finds it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from synthgen.schemas.manifest import STATE_DIR, STATE_NAME, FileInfo, shard_stem
from synthgen.schemas.plugins import Registry
from synthgen.schemas.records import (
    BuildContext,
    Sample,
    ctx_class_names,
    ctx_video,
    sample_row,
)
from synthgen.schemas.scores import ScoreColumn
from synthgen.storage.atomic import atomic_write
from synthgen.storage.codecs import Codec, image_codec, video_codec
from synthgen.storage.hashing import file_sha256

logger = logging.getLogger(__name__)

DEFAULT_WRITER = "webdataset"


class NoOptions(BaseModel):
    """Options model of a writer that takes none: any option given is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class UnknownWriter(ValueError):
    """A shard writer name no registered writer has."""


SHARD_WRITERS: Registry[ShardWriter] = Registry("shard writer", "synthgen.pipelines.shard_writers")
"""Every registered shard writer by its name (a registry: `synthgen.schemas.plugins`)."""


class ShardWriter(ABC):
    """One shard writer plug-in. Subclasses set `name` and implement `write` (and `finish`
    for what they write once every sample is in)."""

    name: ClassVar[str]
    options_model: ClassVar[type[BaseModel]] = NoOptions

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        SHARD_WRITERS.add(cls)

    def __init__(
        self,
        out_dir: Path,
        shard: int,
        ctx: BuildContext,
        columns: Sequence[ScoreColumn],
        options: BaseModel | None = None,
    ):
        self.out_dir = out_dir
        self.shard = shard
        self.ctx = ctx
        self.columns = tuple(columns)
        self.options: Any = options if options is not None else self.options_model()
        video = ctx_video(ctx)  # a video build's clips, else images
        self.codec: Codec = (
            image_codec(ctx.image_format)
            if video is None
            else video_codec(video.video_format, video.fps)
        )
        self._open: dict[str, contextlib.ExitStack] = {}
        self._names: list[str] = []  # every file opened, in order
        self._files: dict[str, FileInfo] | None = None

    # -- the interface ----------------------------------------------------------------------
    @abstractmethod
    def write(self, sample: Sample) -> None:
        """Add one sample of the shard (every status; each sample once, in shard order)."""

    def finish(self) -> None:
        """Write what is written once every sample is in (called by `close`). Default: none."""
        return None

    def close(self) -> dict[str, FileInfo]:
        """Finish, publish every file (renamed to its final name) and return them by name with
        sha256 and size, in the order they were opened. Calling it again returns the same."""
        if self._files is None:
            self.finish()
            for name in list(self._open):
                self.close_file(name)
            self._files = {name: self._info(name) for name in self._names}
        return self._files

    def abort(self, exc: BaseException | None = None) -> None:
        """Remove every file still open (temporary), publish none."""
        error = exc or RuntimeError("shard writer aborted")
        for name in list(self._open):
            stack = self._open.pop(name)
            with contextlib.suppress(Exception):  # cleanup; an interrupt still stops it
                stack.__exit__(type(error), error, error.__traceback__)

    # -- helpers for implementations --------------------------------------------------------
    def file_name(self, extension: str) -> str:
        """The name of this shard's file with `extension` (`00003.tar`)."""
        return f"{shard_stem(self.shard)}.{extension}"

    def open_file(self, name: str) -> IO[bytes]:
        """A new file of this shard, written under a temporary name until closed."""
        if name in self._names:
            raise ValueError(f"shard {self.shard}: {name} opened twice")
        stack = contextlib.ExitStack()
        f = stack.enter_context(atomic_write(self.out_dir / name))
        self._open[name] = stack
        self._names.append(name)
        return f

    def close_file(self, name: str) -> None:
        """Publish one file now (fsync, rename to its final name)."""
        self._open.pop(name).close()

    def row(self, sample: Sample) -> dict[str, Any]:
        """The sample's Parquet row (`sample_row`)."""
        return sample_row(sample, self.ctx, self.columns)

    def class_names(self) -> dict[int, str]:
        """{class id: name} for the Parquet's ClassLabel: from the context, else from the
        recipe in the output directory's state (written before any shard)."""
        return class_names(self.out_dir, self.ctx)

    def _info(self, name: str) -> FileInfo:
        path = self.out_dir / name
        return FileInfo(sha256=file_sha256(path), bytes=path.stat().st_size)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.abort(exc)
        else:
            self.close()


def class_names(out_dir: Path, ctx: BuildContext) -> dict[int, str]:
    """{class id: name} from `ctx`, else from the recipe in `out_dir`'s state; else none."""
    names = ctx_class_names(ctx)
    if names:
        return names
    try:
        state = json.loads((out_dir / STATE_DIR / STATE_NAME).read_text(encoding="utf-8"))
        return {int(c["id"]): str(c["name"]) for c in state["recipe"]["classes"]}
    except (OSError, ValueError, KeyError, TypeError):
        logger.debug("no class names for %s: class_label stays a plain integer", out_dir)
        return {}


def shard_writer_classes() -> dict[str, type[ShardWriter]]:
    """Every registered shard writer by name, after importing each module of this package."""
    return SHARD_WRITERS.classes()


def shard_writer_class(name: str) -> type[ShardWriter]:
    """The shard writer registered as `name`; UnknownWriter names the known ones."""
    found = SHARD_WRITERS.get(name)
    if found is None:
        known = ", ".join(shard_writer_classes())
        raise UnknownWriter(f"unknown shard writer {name!r} (writers: {known})")
    return found
