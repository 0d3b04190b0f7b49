"""Images whose invisible watermark does not survive encoding (lossy formats can erase it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from synthgen.schemas.recipe import Recipe
from synthgen.schemas.records import Sample
from synthgen.schemas.scores import ScoreColumn
from synthgen.storage.watermark import can_carry, read_watermark, watermark_payload
from synthgen.validators.base import PixelCheck
from synthgen.validators.frames import clip_format, is_clip


class WatermarkSurvives(PixelCheck):
    """Read the watermark from the image as stored (its decoded pixels) and compare it with
    the build's payload.

    Images too small to carry a watermark pass (the manifest records, once, that they were
    not watermarked); every other image must carry exactly `payload`. On whenever the
    recipe's images are large enough to carry one. A clip carries it in every frame when
    its codec is lossless (`mp4-lossless`), and every frame is read; a lossy clip codec
    does not keep it, and the check is off.
    """

    name = "watermark"
    order = 20
    builtin = True

    def __init__(self, payload: bytes):
        self.payload = payload

    @classmethod
    def from_recipe(
        cls, recipe: Recipe, columns: Sequence[ScoreColumn]
    ) -> WatermarkSurvives | None:
        if not can_carry(recipe.sampling.width, recipe.sampling.height):
            return None
        clips = clip_format(recipe)
        if clips is not None and not clips.lossless:
            return None
        return cls(watermark_payload(recipe.hash))

    def pixel_reason(self, sample: Sample, pixels: Any) -> str | None:
        if not can_carry(sample.width, sample.height):
            return None
        frames = pixels if is_clip(pixels) else [pixels]
        ok = all(read_watermark(f, len(self.payload)) == self.payload for f in frames)
        return None if ok else self.name
