"""Images whose invisible watermark does not survive encoding (lossy formats can erase it)."""

from __future__ import annotations

import numpy as np

from synthgen.schemas.records import Sample
from synthgen.storage.images import decode_image
from synthgen.storage.watermark import can_carry, read_watermark
from synthgen.validators.base import Check


class WatermarkSurvives(Check):
    """Decode the encoded image and compare its watermark with the build's payload.

    Images too small to carry a watermark pass (the manifest records, once, that they were
    not watermarked); every other image must carry exactly `payload`.
    """

    name = "watermark"

    def __init__(self, payload: bytes):
        self.payload = payload

    def reason(self, sample: Sample) -> str | None:
        if not can_carry(sample.width, sample.height):
            return None
        found = read_watermark(np.asarray(decode_image(sample.image)), len(self.payload))
        return None if found == self.payload else self.name
