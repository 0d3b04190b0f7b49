"""Images of the build whose perceptual hashes are within a few bits of each other."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

from synthgen.schemas.recipe import Recipe
from synthgen.schemas.scores import ScoreColumn
from synthgen.validators.base import BuildCheck, BuildFeatures
from synthgen.validators.dedup import hash_bands, near_duplicate_losers
from synthgen.validators.frames import is_video


class NearDuplicate(BuildCheck):
    """`checks.near_duplicate`: of samples within `max_distance` bits (perceptual hash), all
    but the smallest key. Samples are grouped by hash band (pigeonhole: two hashes that
    close share a band), so each group is small. In a video build `near_duplicate_clip`
    answers for `checks.near_duplicate` instead."""

    name = "near_duplicate"
    order = 20
    builtin = True
    duplicate = True

    def __init__(self, max_distance: int):
        self.max_distance = max_distance

    @classmethod
    def from_recipe(cls, recipe: Recipe, columns: Sequence[ScoreColumn]) -> NearDuplicate | None:
        spec = recipe.checks.near_duplicate
        return None if spec is None or is_video(recipe) else cls(spec.max_distance)

    def groups(self, features: BuildFeatures) -> Iterable[Hashable]:
        return hash_bands(features.phash, self.max_distance)

    def tag(self, features: Sequence[BuildFeatures]) -> Iterable[tuple[str, str]]:
        members = [(f.key, f.phash) for f in features]
        return [(key, self.name) for key in near_duplicate_losers(members, self.max_distance)]
