"""Images too close to a real image: a `reference` one (memorization) or an `eval_set` one
(contamination)."""

from __future__ import annotations

from collections.abc import Sequence

from synthgen.schemas.recipe import NearCopySpec, Recipe, RecipeError
from synthgen.schemas.records import Sample
from synthgen.schemas.scores import ScoreColumn, image_embedding_column
from synthgen.validators.base import Check
from synthgen.validators.build_checks import reference_kinds
from synthgen.validators.checks.semantic_duplicate import NEEDS_EMBEDDINGS
from synthgen.validators.nearest import KINDS, is_near_copy


class NearCopy(Check):
    """Rejects a sample too close to its nearest reference (`near_copy`) or eval-set
    (`contaminated`) image, from the columns `nearest.with_nearest` filled in (the deciding
    step looks every sample's nearest image up before the checks run)."""

    name = "near_copy"
    order = 50
    builtin = True

    def __init__(self, kind: str, spec: NearCopySpec):
        self.kind = kind
        self.prefix, self.name = KINDS[kind]
        self.spec = spec

    @classmethod
    def from_recipe(cls, recipe: Recipe, columns: Sequence[ScoreColumn]) -> list[NearCopy]:
        """`near_copy` when the build has a reference set, then `contaminated` when it has
        an eval set; either set needs the image embeddings."""
        kinds = reference_kinds(recipe, columns)
        if kinds and image_embedding_column(columns) is None:
            raise RecipeError(NEEDS_EMBEDDINGS)
        spec = recipe.checks
        out = []
        if spec.near_copy is not None and "reference" in kinds:
            out.append(cls("reference", spec.near_copy))
        if spec.contaminated is not None and "eval_set" in kinds:
            out.append(cls("eval_set", spec.contaminated))
        return out

    def reason(self, sample: Sample) -> str | None:
        sim = sample.scores.get(f"{self.prefix}_sim")
        dist = sample.scores.get(f"{self.prefix}_phash_dist")
        if not isinstance(sim, float) or not isinstance(dist, float):
            return None
        return self.name if is_near_copy(self.spec, sim, dist) else None
