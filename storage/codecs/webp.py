"""WebP: lossy at the recipe's `quality` (Pillow, method 4)."""

from __future__ import annotations

from typing import Any

from synthgen.schemas.media import IMAGE_FORMATS
from synthgen.storage.codecs.image import ImageCodec


class WebpCodec(ImageCodec):
    name = IMAGE_FORMATS["webp"].name
    media_type = IMAGE_FORMATS["webp"].media_type
    extension = IMAGE_FORMATS["webp"].extension
    pillow_format = "WEBP"

    def encode(self, pixels: Any) -> bytes:
        return self.save_with_pillow(pixels, quality=self.options.quality, method=4)
