"""Images whose size is not the size the recipe asked for."""

from __future__ import annotations

from collections.abc import Sequence

from synthgen.schemas.recipe import Recipe
from synthgen.schemas.records import Sample
from synthgen.schemas.scores import ScoreColumn
from synthgen.validators.base import Check


class OddSize(Check):
    """`checks.odd_size` (on by default): the size the recipe asked for; a clip also its
    number of frames (`sampling.num_frames`)."""

    name = "odd_size"
    order = 10
    builtin = True

    def __init__(self, width: int, height: int, frames: int | None = None):
        self.width = width
        self.height = height
        self.frames = frames

    @classmethod
    def from_recipe(cls, recipe: Recipe, columns: Sequence[ScoreColumn]) -> OddSize | None:
        if not recipe.checks.odd_size:
            return None
        frames = recipe.sampling.num_frames
        return cls(recipe.sampling.width, recipe.sampling.height, frames)

    def reason(self, sample: Sample) -> str | None:
        ok = (sample.width, sample.height) == (self.width, self.height)
        if self.frames is not None and sample.media.shape.frames != self.frames:
            ok = False
        return None if ok else self.name
