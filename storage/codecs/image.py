"""What every raster image codec shares: Pillow decoding, perceptual hash, thumbnails."""

from __future__ import annotations

import io
from typing import Any

from synthgen.storage.codecs.base import Codec


class ImageCodec(Codec):
    """An image format Pillow reads (abstract: subclasses set `name` and `encode`)."""

    pillow_format: str = ""  # Pillow's name of the format, for `save_with_pillow`

    def decode(self, data: bytes) -> Any:
        from synthgen.storage.images import decode_image

        return decode_image(data)

    def fingerprint(self, decoded: Any) -> str:
        import imagehash

        return str(imagehash.phash(decoded))

    def thumbnail(self, decoded: Any, size: int) -> Any:
        copy = decoded.copy()
        copy.thumbnail((size, size))
        return copy

    def identity(self) -> str:
        import PIL

        return f"pillow {PIL.__version__}"

    def save_with_pillow(self, pixels: Any, **params: Any) -> bytes:
        """`pixels` saved by Pillow in `pillow_format` with `params`."""
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format=self.pillow_format, **params)
        return buf.getvalue()
