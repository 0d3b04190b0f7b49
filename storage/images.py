"""Images: the one decoder of encoded image bytes, and encoding by format name.

Encoders are codec plug-ins (`synthgen.storage.codecs`, one per format); `encode_image` and
`encoder_identity` look the format up there.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image


def decode_image(data: bytes, mode: str = "RGB") -> Image.Image:
    """Decode encoded image bytes (any format Pillow reads) to a PIL image in `mode`."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.convert(mode)


def encode_image(pixels: Any, fmt: str, png_compress_level: int = 1, quality: int = 95) -> bytes:
    """Encode uint8 (H, W, C) pixels in format `fmt` with its registered codec."""
    from synthgen.storage.codecs import image_codec

    return image_codec(fmt, png_compress_level, quality).encode(pixels)


def encoder_identity(fmt: str, png_compress_level: int, quality: int = 95) -> str:
    """Which encoder (and its libraries' versions) makes this format's bytes."""
    from synthgen.storage.codecs import image_codec

    return image_codec(fmt, png_compress_level, quality).identity()
