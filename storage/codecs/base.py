"""The codec interface: a plug-in that turns pixels into one format's bytes and back.

A codec makes one media kind (`kind`: `image`, or `video` for the clip codecs of `mp4`):
an image codec encodes (H, W, C) pixels and decodes to a PIL image; a video codec encodes
(F, H, W, C) frames and decodes to such an array.

A codec lives where the scorer lives. On the driver, `from_recipe` checks its options (the
recipe's `output` encoding settings) and loads nothing; the instance is small and travels to
every worker. On a worker, `load` runs once (nothing, for the built-in codecs). Per sample,
`encode` makes the bytes a shard holds; `decode`, `fingerprint` and `thumbnail` read them.

Adding a codec is one new module in this package (or anywhere imported before a build) with
a `Codec` subclass that sets `name`: subclassing registers it under that name, and
`codec_classes()` imports every module of this package. The formats a build writes are
looked up here by name (`codec_class`) and the formats a reader recognises by extension
(`codec_for_extension`), never by an if-chain on the format.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from synthgen.schemas.media import (
    IMAGE_SUFFIXES,
    WRITTEN_IMAGE_EXTENSIONS,
    Media,
    Shape,
    extension_of,
)
from synthgen.schemas.plugins import Registry


class ImageEncoding(BaseModel):
    """The encoding options an image codec takes from the recipe's `output`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    png_compress_level: int = Field(default=1, ge=0, le=9)
    quality: int = Field(default=95, ge=1, le=100)


class UnknownFormat(ValueError):
    """A format (or extension) no registered codec makes."""


CODECS: Registry[Codec] = Registry("codec", "synthgen.storage.codecs")
"""Every registered codec by its name (a registry: `synthgen.schemas.plugins`)."""


class Codec(ABC):
    """One codec plug-in. Subclasses set `name` (as in the recipe's `output.image_format`),
    `media_type` and `extension` (the tar member suffix its bytes are written under)."""

    name: ClassVar[str]
    media_type: ClassVar[str]
    extension: ClassVar[str]
    # whether the bytes decode to exactly the pixels encoded (no decode needed to know them)
    lossless: ClassVar[bool] = False
    # the media kind it makes: `image` ((H, W, C) pixels) or `video` ((F, H, W, C) frames)
    kind: ClassVar[str] = "image"
    # pydantic model of the options this codec reads from the recipe's `output` section
    options_model: ClassVar[type[BaseModel]] = ImageEncoding

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        CODECS.add(cls)

    def __init__(self, options: BaseModel | None = None):
        self.options: Any = options if options is not None else self.options_model()

    @classmethod
    def from_recipe(cls, output: Any) -> Codec:
        """The codec with the options it reads from `output` (the recipe's `output` section,
        or any object with those attributes): checked here, nothing loaded."""
        names = [k for k in cls.options_model.model_fields if hasattr(output, k)]
        return cls(cls.options_model(**{k: getattr(output, k) for k in names}))

    def load(self) -> Any:
        """What encoding needs, once per worker; nothing for the image codecs."""
        return None

    @abstractmethod
    def encode(self, pixels: Any) -> bytes:
        """Encode uint8 (H, W, C) pixels: deterministic for given library versions."""

    @abstractmethod
    def decode(self, data: bytes) -> Any:
        """The decoded media (an RGB PIL image for the image codecs)."""

    @abstractmethod
    def fingerprint(self, decoded: Any) -> str:
        """What near-duplicate checks compare (an image's 64-bit perceptual hash, hex)."""

    @abstractmethod
    def thumbnail(self, decoded: Any, size: int) -> Any:
        """A small copy of the decoded media, at most `size` pixels on its long side (a clip
        codec: a strip of a few frames, each that small)."""

    def identity(self) -> str:
        """Which encoder (and its library's version) makes this codec's bytes, for provenance."""
        return _where(type(self))

    def preview(self, decoded: Any) -> Any:
        """The decoded media as one RGB PIL image to look at (the report's thumbnails): an
        image as it is; a clip codec shows a strip of frames."""
        return decoded

    @classmethod
    def recognises(cls, data: bytes) -> bool:
        """Whether `data` looks like this codec's bytes (its file signature). Only codecs
        Pillow cannot read need say yes: `preview_image` gives the rest to Pillow."""
        return False

    def media(self, data: bytes, shape: Shape, fingerprint: str = "") -> Media:
        """`data` (this codec's bytes) as the `Media` a sample carries."""
        return Media(data, self.media_type, self.extension, shape, fingerprint)


class VideoCodec(Codec):
    """A clip codec (abstract): encodes uint8 (F, H, W, C) frames at a frame rate, decodes
    to such an array; its fingerprint and thumbnail cover a few evenly spaced frames."""

    kind = "video"

    @abstractmethod
    def encode(self, pixels: Any, fps: int | None = None) -> bytes:
        """Encode uint8 (F, H, W, C) frames at `fps` frames a second (None: the codec's
        `options.fps`): the same frames give the same bytes."""

    @abstractmethod
    def decode(self, data: bytes, limit: Shape | None = None) -> Any:
        """The clip's frames, uint8 (F, H, W, C). With `limit` (bytes from elsewhere: a
        shard being checked), more frames or larger ones than it raise ValueError before
        more is decoded."""

    @abstractmethod
    def check_size(self, width: int, height: int) -> None:
        """Raise ValueError naming the problem when frames of this size cannot be written."""

    @abstractmethod
    def provenance(self) -> dict[str, Any]:
        """The encoding settings as a build records them (what regenerating a clip needs)."""


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def codec_classes() -> dict[str, type[Codec]]:
    """Every registered codec by name, after importing each module of this package."""
    return CODECS.classes()


def codec_class(fmt: str) -> type[Codec]:
    """The codec registered for format `fmt`; UnknownFormat names the known ones."""
    found = CODECS.get(fmt)
    if found is None:
        kinds: dict[str, list[str]] = {}
        for name, cls in codec_classes().items():
            kinds.setdefault(cls.kind, []).append(name)
        image = ", ".join(kinds.pop("image", []))
        rest = "".join(f"; {k} codecs: {', '.join(v)}" for k, v in sorted(kinds.items()))
        raise UnknownFormat(f"unknown output format {fmt!r} (codecs: {image}{rest})")
    return found


def codec_for_extension(extension: str) -> type[Codec]:
    """The codec whose files end in `extension` (`jpg`, `.PNG`); UnknownFormat if none."""
    ext = extension.lower().lstrip(".")
    for cls in codec_classes().values():
        if cls.extension == ext:
            return cls
    raise UnknownFormat(f"no codec writes .{ext} files")


def readable_extensions() -> tuple[str, ...]:
    """The media member extensions a shard may hold, in the order a reader looks for them:
    the built-in image formats' (`WRITTEN_IMAGE_EXTENSIONS`), then every other registered
    codec's (a clip's `mp4` among them: decode it with `codec_for_extension`)."""
    found = (c.extension for c in codec_classes().values())
    return tuple(dict.fromkeys((*WRITTEN_IMAGE_EXTENSIONS, *found)))


def readable_suffixes() -> tuple[str, ...]:
    """Path suffixes (`.png`) of every image file synthgen reads (`IMAGE_SUFFIXES`) and of
    every registered codec's files."""
    return tuple(dict.fromkeys((*IMAGE_SUFFIXES, *(f".{e}" for e in readable_extensions()))))


def extension_for(fmt: str) -> str:
    """The file extension of format `fmt`: its codec's, or (a format whose codec is not
    registered in this process) the table's (`schemas.media.extension_of`)."""
    found = CODECS.get(fmt)
    return found.extension if found is not None else extension_of(fmt)


def preview_image(data: bytes) -> Any:
    """Encoded media as one RGB PIL image to show (a report thumbnail): a clip (bytes a
    registered codec `recognises`) as its codec's strip of frames, anything else decoded by
    Pillow."""
    for cls in codec_classes().values():
        if cls.recognises(data):
            codec = cls()
            return codec.preview(codec.decode(data))
    from synthgen.storage.images import decode_image

    return decode_image(data)


def image_codec(fmt: str, png_compress_level: int = 1, quality: int = 95) -> Codec:
    """The codec of format `fmt` with these encoding options (one instance per setting and
    class: the name is looked up each time, so a plug-in registered again under a name is
    the one used)."""
    return _image_codec(codec_class(fmt), png_compress_level, quality)


@functools.lru_cache(maxsize=32)
def _image_codec(cls: type[Codec], png_compress_level: int, quality: int) -> Codec:
    options = {"png_compress_level": png_compress_level, "quality": quality}
    names = cls.options_model.model_fields
    return cls(cls.options_model(**{k: v for k, v in options.items() if k in names}))


def video_codec(fmt: str, fps: int = 8) -> VideoCodec:
    """The clip codec of format `fmt` (`mp4`, `mp4-lossless`) encoding at `fps` frames a
    second, with its other options at their defaults (one instance per setting and class)."""
    cls = codec_class(fmt)
    if not issubclass(cls, VideoCodec):
        raise UnknownFormat(f"{fmt!r} is an {cls.kind} format, not a video format")
    return _video_codec(cls, fps)


@functools.lru_cache(maxsize=32)
def _video_codec(cls: type[VideoCodec], fps: int) -> VideoCodec:
    return cls(cls.options_model(fps=fps))
