"""The media contract: what a sample carries, whatever its modality.

A `Media` is encoded bytes with their media type (`image/png`), the file extension they are
written under (`png`, the tar member `<key>.png`), their shape as (frames, height, width) —
one frame for an image — and a fingerprint (for an image, its perceptual hash). The codecs
that make and read those bytes (`synthgen.storage.codecs`) are plug-ins; this module holds
only the data and the one table of image formats and extensions every reader and writer uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple


class MediaFormat(NamedTuple):
    """One encoded format: its recipe name, media type and file extension."""

    name: str  # as a recipe names it (`output.image_format`): `png`, `webp`, `jpeg`
    media_type: str  # `image/png`
    extension: str  # the file extension (and tar member suffix) it is written under
    lossless: bool  # whether its bytes decode to exactly the pixels encoded


# The image formats a build writes, by name.
IMAGE_FORMATS: dict[str, MediaFormat] = {
    f.name: f
    for f in (
        MediaFormat("png", "image/png", "png", True),
        MediaFormat("webp", "image/webp", "webp", False),
        MediaFormat("jpeg", "image/jpeg", "jpg", False),
    )
}

# Extensions (lower case, no dot) of the image files a build writes, in the order a reader
# looks for a sample's image among its tar members.
WRITTEN_IMAGE_EXTENSIONS: tuple[str, ...] = tuple(f.extension for f in IMAGE_FORMATS.values())

# Extensions (lower case, no dot) of every image file synthgen reads: what it writes, plus
# the other spellings and formats a source folder or WebDataset may hold.
IMAGE_EXTENSIONS: tuple[str, ...] = (*WRITTEN_IMAGE_EXTENSIONS, "jpeg", "bmp", "gif")

# The same, as path suffixes (`.png`), for `Path.suffix` and `str.endswith`.
IMAGE_SUFFIXES: tuple[str, ...] = tuple(f".{e}" for e in IMAGE_EXTENSIONS)

IMAGE_MEDIA_TYPES: dict[str, str] = {
    **{f.extension: f.media_type for f in IMAGE_FORMATS.values()},
    "jpeg": "image/jpeg",
    "bmp": "image/bmp",
    "gif": "image/gif",
}


def extension_of(fmt: str) -> str:
    """The file extension of an image format (`jpeg` -> `jpg`); an unknown format is its own
    extension (a codec plug-in names its format as its extension)."""
    known = IMAGE_FORMATS.get(fmt)
    return known.extension if known is not None else fmt


def media_type_of(extension: str) -> str:
    """The media type of a file extension (`jpg` -> `image/jpeg`); unknown: `image/<ext>`."""
    ext = extension.lower().lstrip(".")
    return IMAGE_MEDIA_TYPES.get(ext, f"image/{ext}")


class Shape(NamedTuple):
    """The shape of a media item: frames (1 for an image), height, width (pixels)."""

    frames: int
    height: int
    width: int


@dataclass(frozen=True, slots=True)
class Media:
    """One encoded media item as a sample carries it."""

    data: bytes
    media_type: str  # `image/png`
    extension: str  # `png`: the tar member `<key>.png`
    shape: Shape
    fingerprint: str = ""  # an image's perceptual hash (hex); empty: not computed

    @property
    def is_image(self) -> bool:
        return self.media_type.startswith("image/") and self.shape.frames == 1

    @property
    def width(self) -> int:
        return self.shape.width

    @property
    def height(self) -> int:
        return self.shape.height

    def with_data(self, data: bytes) -> Media:
        """The same media with other bytes (signed, or dropped: `b""`)."""
        return dataclasses.replace(self, data=data)

    def with_fingerprint(self, fingerprint: str) -> Media:
        return dataclasses.replace(self, fingerprint=fingerprint)


# The media of a sample that has none (its generation failed).
NO_MEDIA = Media(b"", "", "", Shape(0, 0, 0))


def image_media(data: bytes, fmt: str, width: int, height: int, fingerprint: str = "") -> Media:
    """An encoded image of format `fmt` (a name of `IMAGE_FORMATS` or a codec plug-in's)."""
    known = IMAGE_FORMATS.get(fmt)
    media_type = known.media_type if known is not None else media_type_of(fmt)
    return Media(data, media_type, extension_of(fmt), Shape(1, height, width), fingerprint)
