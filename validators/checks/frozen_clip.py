"""Clips that do not move: their consecutive frames (nearly) the same."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from synthgen.schemas.recipe import Recipe
from synthgen.schemas.records import Sample
from synthgen.schemas.scores import ScoreColumn
from synthgen.validators.base import ClipCheck


class FrozenClipOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    absolute: float | None = Field(
        default=2e-4,
        ge=0.0,
        le=1.0,
        description="`motion` (mean absolute consecutive-frame difference, 0-1) below this "
        "-> rejected; null: off",
    )


class FrozenClip(ClipCheck):
    """`checks.frozen_clip: {absolute: x}` (video builds; on by default): a clip whose
    `motion` is below x is rejected as `frozen_clip`. The default, 2e-4 (a twentieth of a
    grey level on average), rejects clips of repeated frames, even through a lossy codec,
    and keeps a small object moving over a still background."""

    name = "frozen_clip"
    order = 25  # a clip's defect ranks before its scores' thresholds
    options_model = FrozenClipOptions

    def __init__(self, minimum: float):
        self.minimum = minimum

    @classmethod
    def from_recipe(cls, recipe: Recipe, columns: Sequence[ScoreColumn]) -> FrozenClip | None:
        options = cls.clip_options(recipe, columns, "motion")
        if options is None or options.absolute is None:
            return None
        return cls(options.absolute)

    def reason(self, sample: Sample) -> str | None:
        motion = sample.scores.get("motion")
        if not isinstance(motion, float) or math.isnan(motion):
            return None
        return self.name if motion < self.minimum else None
