"""Clips that flicker: a sudden jump between two frames, or a frame that flashes."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from synthgen.schemas.recipe import Recipe
from synthgen.schemas.records import Sample
from synthgen.schemas.scores import ScoreColumn
from synthgen.validators.base import ClipCheck


class FlickerOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    absolute: float | None = Field(
        default=5.0,
        ge=1.0,
        description="`max_jump` (largest consecutive-frame difference over the median one) "
        "above this -> rejected; null: not compared",
    )
    spike: float | None = Field(
        default=3.0,
        ge=0.0,
        description="`max_spike` (a frame's difference from both neighbours over theirs "
        "from each other) above this -> rejected; null: not compared",
    )


def _above(value: object, limit: float | None) -> bool:
    if limit is None or not isinstance(value, float) or math.isnan(value):
        return False
    return value > limit


class Flicker(ClipCheck):
    """`checks.flicker: {absolute: y, spike: z}` (video builds; on by default): a clip whose
    `max_jump` is above y (one change far larger than the clip's usual one) or whose
    `max_spike` is above z (a frame unlike both neighbours while they are alike: frames
    alternating, a flash) is rejected as `flicker`.

    Steady motion keeps both near 1: its frame differences are alike, and a frame two steps
    on differs at least as much as the next one."""

    name = "flicker"
    order = 26
    options_model = FlickerOptions

    def __init__(self, max_jump: float | None, max_spike: float | None):
        self.max_jump = max_jump
        self.max_spike = max_spike

    @classmethod
    def from_recipe(cls, recipe: Recipe, columns: Sequence[ScoreColumn]) -> Flicker | None:
        options = cls.clip_options(recipe, columns, "max_jump", "max_spike")
        if options is None or (options.absolute is None and options.spike is None):
            return None
        return cls(options.absolute, options.spike)

    def reason(self, sample: Sample) -> str | None:
        jump = _above(sample.scores.get("max_jump"), self.max_jump)
        spike = _above(sample.scores.get("max_spike"), self.max_spike)
        return self.name if jump or spike else None
