"""Images whose size is not the size the recipe asked for."""

from __future__ import annotations

from collections.abc import Sequence

from synthgen.schemas.recipe import Recipe
from synthgen.schemas.records import Sample
from synthgen.schemas.scores import ScoreColumn
from synthgen.validators.base import Check


class OddSize(Check):
    """`checks.odd_size` (on by default)."""

    name = "odd_size"
    order = 10
    builtin = True

    def __init__(self, width: int, height: int):
        self.width = width
        self.height = height

    @classmethod
    def from_recipe(cls, recipe: Recipe, columns: Sequence[ScoreColumn]) -> OddSize | None:
        if not recipe.checks.odd_size:
            return None
        return cls(recipe.sampling.width, recipe.sampling.height)

    def reason(self, sample: Sample) -> str | None:
        ok = (sample.width, sample.height) == (self.width, self.height)
        return None if ok else self.name
