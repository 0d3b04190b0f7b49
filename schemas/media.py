"""The media contract: what a sample carries, whatever its modality.

A `Media` is encoded bytes with their media type (`image/png`), the file extension they are
written under (`png`, the tar member `<key>.png`), their shape as (frames, height, width) —
one frame for an image — and a fingerprint (for an image, its perceptual hash; for a clip,
the perceptual hashes of a few of its frames, concatenated). The codecs that make and read
those bytes (`synthgen.storage.codecs`) are plug-ins; this module holds only the data and the
tables of image and video formats and extensions every reader and writer uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final, NamedTuple


class MediaFormat(NamedTuple):
    """One encoded format: its recipe name, media type and file extension."""

    name: str  # as a recipe names it (`output.image_format`): `png`, `webp`, `jpeg`
    media_type: str  # `image/png`
    extension: str  # the file extension (and tar member suffix) it is written under
    lossless: bool  # whether its bytes decode to exactly the pixels encoded
    # whether frames must have an even width and height (4:2:0 chroma: one sample per 2x2)
    even_size: bool = False


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

# The video formats a build writes (`output.video_format`), by name: H.264 in MP4, lossy
# (yuv420p) or lossless (RGB, qp 0); both are `.mp4` files.
VIDEO_FORMATS: dict[str, MediaFormat] = {
    f.name: f
    for f in (
        MediaFormat("mp4", "video/mp4", "mp4", False, even_size=True),
        MediaFormat("mp4-lossless", "video/mp4", "mp4", True),
    )
}
DEFAULT_VIDEO_FORMAT: Final = "mp4"

# Extensions (lower case, no dot) of the video files a build writes.
VIDEO_EXTENSIONS: tuple[str, ...] = tuple(
    dict.fromkeys(f.extension for f in VIDEO_FORMATS.values())
)

IMAGE_MEDIA_TYPES: dict[str, str] = {
    **{f.extension: f.media_type for f in IMAGE_FORMATS.values()},
    "jpeg": "image/jpeg",
    "bmp": "image/bmp",
    "gif": "image/gif",
}


def extension_of(fmt: str) -> str:
    """The file extension of an image or video format (`jpeg` -> `jpg`, `mp4-lossless` ->
    `mp4`); an unknown format is its own extension (a codec plug-in names its format as its
    extension)."""
    known = IMAGE_FORMATS.get(fmt) or VIDEO_FORMATS.get(fmt)
    return known.extension if known is not None else fmt


def media_type_of(extension: str) -> str:
    """The media type of a file extension (`jpg` -> `image/jpeg`, `mp4` -> `video/mp4`);
    unknown: `image/<ext>`."""
    ext = extension.lower().lstrip(".")
    if ext in VIDEO_EXTENSIONS:
        return next(f.media_type for f in VIDEO_FORMATS.values() if f.extension == ext)
    return IMAGE_MEDIA_TYPES.get(ext, f"image/{ext}")


def is_video_format(fmt: str) -> bool:
    """Whether `fmt` names a video format (`VIDEO_FORMATS`)."""
    return fmt in VIDEO_FORMATS


def video_size_problem(fmt: str, width: int, height: int) -> str | None:
    """Why clips of `width` x `height` cannot be written as `fmt` (None: they can): a 4:2:0
    format needs an even width and height."""
    known = VIDEO_FORMATS.get(fmt)
    if known is None or not known.even_size or (width % 2 == 0 and height % 2 == 0):
        return None
    lossless = [f.name for f in VIDEO_FORMATS.values() if not f.even_size]
    return (
        f"{fmt} (H.264 4:2:0) needs an even width and height, got {width}x{height}: use an "
        f"even size or {' / '.join(lossless)}"
    )


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
    def is_video(self) -> bool:
        """A clip: video bytes (`video/mp4`), any number of frames."""
        return self.media_type.startswith("video/")

    @property
    def frames(self) -> int:
        return self.shape.frames

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


def video_media(
    data: bytes, fmt: str, frames: int, width: int, height: int, fingerprint: str = ""
) -> Media:
    """An encoded clip of format `fmt` (a name of `VIDEO_FORMATS`) with `frames` frames."""
    known = VIDEO_FORMATS.get(fmt)
    if known is None:
        raise ValueError(f"unknown video format {fmt!r} (known: {', '.join(VIDEO_FORMATS)})")
    shape = Shape(frames, height, width)
    return Media(data, known.media_type, known.extension, shape, fingerprint)


def sampled_frames(frames: int, n: int) -> list[int]:
    """`n` evenly spaced frame indices of a clip of `frames` frames, the first and the last
    among them (every frame when there are no more than `n`): index i * (frames - 1) / (n - 1)
    rounded half up, in integers."""
    if frames <= n:
        return list(range(frames))
    if n == 1:
        return [0]
    return [(2 * i * (frames - 1) + n - 1) // (2 * (n - 1)) for i in range(n)]
