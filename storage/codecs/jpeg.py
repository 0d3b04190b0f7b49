"""JPEG: lossy at the recipe's `quality` (Pillow); written as `.jpg`."""

from __future__ import annotations

from typing import Any

from synthgen.schemas.media import IMAGE_FORMATS
from synthgen.storage.codecs.image import ImageCodec


class JpegCodec(ImageCodec):
    name = IMAGE_FORMATS["jpeg"].name
    media_type = IMAGE_FORMATS["jpeg"].media_type
    extension = IMAGE_FORMATS["jpeg"].extension
    pillow_format = "JPEG"

    def encode(self, pixels: Any) -> bytes:
        return self.save_with_pillow(pixels, quality=self.options.quality)
