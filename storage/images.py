"""Image encoding: float arrays from a pipeline -> deterministic encoded bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpg"}
LOSSLESS = frozenset({"png"})  # formats whose file decodes to exactly the pixels encoded


def encode_image(
    pixels: np.ndarray, fmt: str, png_compress_level: int = 1, quality: int = 95
) -> bytes:
    """Encode uint8 (H, W, C) pixels. PNG is lossless; its level trades CPU for size only."""
    img = Image.fromarray(pixels)
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=png_compress_level)
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=quality, method=4)
    elif fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()


def decode_image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")
