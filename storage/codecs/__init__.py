"""Codecs: one plug-in per encoded format (`png`, `webp`, `jpeg`, `mp4`, ...), by media type.

A codec encodes pixels to bytes, decodes bytes, fingerprints and thumbnails what it decoded.
Adding one is a new module in this package with a `Codec` subclass that sets `name` (the
format as a recipe names it): subclassing registers it, `codec_classes()` imports every
module of the package. See `base` for the interface.
"""

from synthgen.storage.codecs.base import (
    Codec,
    ImageEncoding,
    UnknownFormat,
    VideoCodec,
    codec_class,
    codec_classes,
    codec_for_extension,
    extension_for,
    image_codec,
    preview_image,
    readable_extensions,
    readable_suffixes,
    video_codec,
)

__all__ = [
    "Codec",
    "ImageEncoding",
    "UnknownFormat",
    "VideoCodec",
    "codec_class",
    "codec_classes",
    "codec_for_extension",
    "extension_for",
    "image_codec",
    "preview_image",
    "readable_extensions",
    "readable_suffixes",
    "video_codec",
]
