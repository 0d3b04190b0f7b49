"""Labelled-dataset sources (balancing, conditioning, reference sets): one plug-in per format.

A source streams its samples' references, labels and encoded image bytes (`iter_images`)
and reads one image back by its reference (`read`); `records()` is `iter_images()` without
the bytes. Every caller reads through these, so labels and images always come from the same
walk with the same key rule, and a reference always names the image it was listed with.

Adding a format is one new module in this package with a `Source` subclass that sets
`format`, `open` and `guess`: subclassing registers it, `source_classes()` imports every
module of the package, and `format: auto` picks the format whose `guess` is surest.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from synthgen.schemas.plugins import Registry


class SourceError(ValueError):
    """A balancing source is missing, malformed, empty or holds unreadable images."""


@dataclass(frozen=True, slots=True)
class SourceRecord:
    reference: str  # stable: "file.parquet#row=12", "shard.tar#key", "class/file.png"
    label: str  # as the source spells it: a class name or a class id


@dataclass(frozen=True, slots=True)
class SourceImage:
    """One sample with its encoded image, and its mask's bytes when `iter_images` was asked
    for a mask column / member (else None)."""

    reference: str
    label: str
    data: bytes
    mask: bytes | None = None


# A source image may hold this many times the recipe's sampling pixels, and never less than
# MIN_LIMIT_PIXELS: room for photographs to be fitted down, none for a decompression bomb.
PIXELS_PER_SAMPLE_PIXEL = 16
MIN_LIMIT_PIXELS = 4096 * 4096
TAR_METADATA_BYTES = 2**20  # beside the pixels in one tar member: headers, ICC profiles, text


@dataclass(frozen=True, slots=True)
class PixelLimit:
    """The most pixels an input image may declare for a `width` x `height` build; checked on
    the image's header, before anything is decoded."""

    width: int
    height: int

    @property
    def pixels(self) -> int:
        return max(PIXELS_PER_SAMPLE_PIXEL * self.width * self.height, MIN_LIMIT_PIXELS)

    @property
    def member_bytes(self) -> int:
        """The most bytes one tar member of such an image can need (4 bytes a pixel, no
        encoding is larger, plus metadata): a member declaring more is not read."""
        return 4 * self.pixels + TAR_METADATA_BYTES

    def describe(self) -> str:
        return (
            f"{self.pixels} pixels ({PIXELS_PER_SAMPLE_PIXEL}x the {self.width}x{self.height} "
            f"sampling size, at least {MIN_LIMIT_PIXELS})"
        )

    def check(self, size: tuple[int, int], where: str) -> None:
        """SourceError naming `where` and the limit when `size` (w, h) is over it."""
        w, h = size
        if w * h > self.pixels:
            raise SourceError(
                f"{where}: {w}x{h} is more pixels than an input image may have, "
                f"{self.describe()}: not decoded; downscale it"
            )


def image_size(data: bytes, where: str) -> tuple[int, int]:
    """The (width, height) an encoded image's header declares; no pixel is decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception as exc:
        raise SourceError(f"{where}: unreadable image: {exc}") from None


def check_image(data: bytes, where: str, limit: PixelLimit | None = None) -> None:
    """Decode an image fully (the package's one decoder, `storage.images.decode_image`), or
    raise SourceError naming it. With `limit`, an image whose header declares more pixels is
    refused before it is decoded."""
    from synthgen.storage.images import decode_image

    if limit is not None:
        limit.check(image_size(data, where), where)
    try:
        decode_image(data)
    except Exception as exc:
        raise SourceError(f"{where}: unreadable image: {exc}") from None


def inside_root(path: Path, root: Path) -> bool:
    """Whether the resolved `path` is `root` or lies under it (both already resolved)."""
    return path == root or path.is_relative_to(root)


@dataclass(frozen=True, slots=True)
class SourceOptions:
    """How a labelled source is read, beside its location: the recipe's `format` (`auto`:
    guessed from the location), the label and image columns (formats with columns)."""

    format: str = "auto"
    label_column: str = "label"
    image_column: str = "image"

    @classmethod
    def of(cls, spec: Any) -> SourceOptions:
        """The options of any recipe block shaped like a source (balance, reference,
        eval set, conditioning source): its `format`, `label_column`, `image_column`."""
        return cls(
            format=str(getattr(spec, "format", "auto")),
            label_column=str(getattr(spec, "label_column", "label")),
            image_column=str(getattr(spec, "image_column", "image")),
        )


SOURCES: Registry[Source] = Registry(
    "source format", "synthgen.generators.sources", attribute="format"
)
"""Every registered source format by its name (a registry: `synthgen.schemas.plugins`)."""


class Source(ABC):
    """One kind of labelled dataset. It streams; it never holds more than one sample's images.

    Subclasses set `format` (the recipe's `format:` name) and implement `open`, `guess`,
    `iter_images` and `read`. `limit` (set by `open_source` from the recipe's sampling
    size): images declaring more pixels are refused by name before they are decoded.
    """

    format: ClassVar[str]
    description: str
    limit: PixelLimit | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        SOURCES.add(cls)

    @classmethod
    @abstractmethod
    def open(cls, location: str, options: SourceOptions) -> Source:
        """The source at `location` (a resolved path or shard pattern), checked to exist and
        to be of this format (SourceError naming it); nothing is read beyond that."""

    @classmethod
    def guess(cls, location: str) -> int:
        """How surely this format reads `location`, for `format: auto`: 0 not at all; the
        highest guess wins (a file's own suffix 30, a folder of such files 20, any folder
        10)."""
        return 0

    @abstractmethod
    def iter_images(self, mask: str | None = None) -> Iterator[SourceImage]:
        """Every sample in source order with its encoded image, each checked to decode.

        `mask`: the Parquet column or WebDataset member extension holding each image's mask;
        a sample without one raises SourceError naming it (a source format without such
        columns refuses `mask`)."""

    @abstractmethod
    def read(self, reference: str, mask: str | None = None) -> bytes:
        """The encoded image (or, with `mask`, the mask) of the sample `iter_images` listed
        as `reference`; nothing is decoded. SourceError when it names no sample."""

    def records(self) -> Iterator[SourceRecord]:
        """Every sample's reference and label, each image checked to decode."""
        for image in self.iter_images():
            yield SourceRecord(image.reference, image.label)

    def _check(self, data: bytes, where: str) -> None:
        check_image(data, where, self.limit)


def source_classes() -> dict[str, type[Source]]:
    """Every registered source format by name, after importing each module of this package."""
    return SOURCES.classes()


def guess_format(location: str) -> str:
    """The format whose `guess` of `location` is surest (ties: by format name), or
    SourceError when none reads it."""
    ranked = sorted((-cls.guess(location), name) for name, cls in source_classes().items())
    if not ranked or ranked[0][0] >= 0:
        raise SourceError(f"{location}: balance source not found")
    return ranked[0][1]
