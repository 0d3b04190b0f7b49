"""Images of the build with the same bytes: all but the smallest key are duplicates."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

from synthgen.schemas.recipe import Recipe
from synthgen.schemas.scores import ScoreColumn
from synthgen.validators.base import BuildCheck, BuildFeatures
from synthgen.validators.dedup import exact_duplicate_losers


class ExactDuplicate(BuildCheck):
    """`checks.exact_duplicate` (on by default): samples sharing one image sha256."""

    name = "exact_duplicate"
    order = 10
    builtin = True
    duplicate = True

    @classmethod
    def from_recipe(cls, recipe: Recipe, columns: Sequence[ScoreColumn]) -> ExactDuplicate | None:
        return cls() if recipe.checks.exact_duplicate else None

    def groups(self, features: BuildFeatures) -> Iterable[Hashable]:
        return (features.image_sha256,)

    def tag(self, features: Sequence[BuildFeatures]) -> Iterable[tuple[str, str]]:
        return [(key, self.name) for key in exact_duplicate_losers(f.key for f in features)]
