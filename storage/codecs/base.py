"""The codec interface: a plug-in that turns pixels into one format's bytes and back.

A codec lives where the scorer lives. On the driver, `from_recipe` checks its options (the
recipe's `output` encoding settings) and loads nothing; the instance is small and travels to
every worker. On a worker, `load` runs once (nothing, for the image codecs). Per image,
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
        """A small copy of the decoded media, at most `size` pixels on its long side."""

    def identity(self) -> str:
        """Which encoder (and its library's version) makes this codec's bytes, for provenance."""
        return _where(type(self))

    def media(self, data: bytes, shape: Shape, fingerprint: str = "") -> Media:
        """`data` (this codec's bytes) as the `Media` a sample carries."""
        return Media(data, self.media_type, self.extension, shape, fingerprint)


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def codec_classes() -> dict[str, type[Codec]]:
    """Every registered codec by name, after importing each module of this package."""
    return CODECS.classes()


def codec_class(fmt: str) -> type[Codec]:
    """The codec registered for format `fmt`; UnknownFormat names the known ones."""
    found = CODECS.get(fmt)
    if found is None:
        known = ", ".join(codec_classes())
        raise UnknownFormat(f"unknown output format {fmt!r} (codecs: {known})")
    return found


def codec_for_extension(extension: str) -> type[Codec]:
    """The codec whose files end in `extension` (`jpg`, `.PNG`); UnknownFormat if none."""
    ext = extension.lower().lstrip(".")
    for cls in codec_classes().values():
        if cls.extension == ext:
            return cls
    raise UnknownFormat(f"no codec writes .{ext} files")


def readable_extensions() -> tuple[str, ...]:
    """The image member extensions a shard may hold, in the order a reader looks for them:
    the built-in formats' (`WRITTEN_IMAGE_EXTENSIONS`), then every other registered codec's."""
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


@functools.lru_cache(maxsize=32)
def image_codec(fmt: str, png_compress_level: int = 1, quality: int = 95) -> Codec:
    """The codec of format `fmt` with these encoding options (one instance per setting)."""
    cls = codec_class(fmt)
    options = {"png_compress_level": png_compress_level, "quality": quality}
    names = cls.options_model.model_fields
    return cls(cls.options_model(**{k: v for k, v in options.items() if k in names}))
