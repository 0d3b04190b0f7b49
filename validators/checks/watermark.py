"""Images whose invisible watermark does not survive encoding (lossy formats can erase it)."""

from __future__ import annotations

from typing import Any

from synthgen.schemas.records import Sample
from synthgen.storage.watermark import can_carry, read_watermark
from synthgen.validators.base import PixelCheck


class WatermarkSurvives(PixelCheck):
    """Read the watermark from the image as stored (its decoded pixels) and compare it with
    the build's payload.

    Images too small to carry a watermark pass (the manifest records, once, that they were
    not watermarked); every other image must carry exactly `payload`.
    """

    name = "watermark"

    def __init__(self, payload: bytes):
        self.payload = payload

    def pixel_reason(self, sample: Sample, pixels: Any) -> str | None:
        if not can_carry(sample.width, sample.height):
            return None
        found = read_watermark(pixels, len(self.payload))
        return None if found == self.payload else self.name
