"""Labelled-dataset sources (balancing, conditioning, reference sets): one reader per format.

A source streams its samples' references, labels and encoded image bytes (`iter_images`)
and reads one image back by its reference (`read`); `records()` is `iter_images()` without
the bytes. Every caller reads through these, so labels and images always come from the same
walk with the same key rule, and a reference always names the image it was listed with.
"""

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
    """Decode an image fully, or raise SourceError naming it. With `limit`, an image whose
    header declares more pixels is refused before it is decoded."""
    from PIL import Image

    if limit is not None:
        limit.check(image_size(data, where), where)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Exception as exc:
        raise SourceError(f"{where}: unreadable image: {exc}") from None


def inside_root(path: Path, root: Path) -> bool:
    """Whether the resolved `path` is `root` or lies under it (both already resolved)."""
    return path == root or path.is_relative_to(root)


class Source(ABC):
    """One kind of labelled dataset. It streams; it never holds more than one sample's images.

    `limit` (set by `open_source` from the recipe's sampling size): images declaring more
    pixels are refused by name before they are decoded.
    """

    description: str
    limit: PixelLimit | None = None

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
