"""Images of one class whose embeddings are nearly the same (SemDeDup-style)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

from synthgen.schemas.recipe import Recipe, RecipeError
from synthgen.schemas.scores import ScoreColumn, image_embedding_column
from synthgen.validators.base import BuildCheck, BuildFeatures
from synthgen.validators.nearest import semantic_duplicate_losers

NEEDS_EMBEDDINGS = (
    "reference / eval_set / checks.semantic_duplicate: need the image embeddings of "
    "the `clip_embedding` scorer; add it to scoring.scorers"
)


class SemanticDuplicate(BuildCheck):
    """`checks.semantic_duplicate`: per class, of samples whose image embeddings (the column
    with the image-embedding role) are at least `min_similarity` alike, all but the
    smallest key."""

    name = "semantic_duplicate"
    order = 30
    builtin = True
    duplicate = True

    def __init__(self, column: str, min_similarity: float):
        self.column = column
        self.min_similarity = min_similarity

    @classmethod
    def from_recipe(
        cls, recipe: Recipe, columns: Sequence[ScoreColumn]
    ) -> SemanticDuplicate | None:
        spec = recipe.checks.semantic_duplicate
        if spec is None:
            return None
        column = image_embedding_column(columns)
        if column is None:
            raise RecipeError(NEEDS_EMBEDDINGS)
        return cls(column, spec.min_similarity)

    def needs(self) -> tuple[str, ...]:
        return (self.column,)

    def groups(self, features: BuildFeatures) -> Iterable[Hashable]:
        return (features.class_label,) if self.column in features.vectors else ()

    def tag(self, features: Sequence[BuildFeatures]) -> Iterable[tuple[str, str]]:
        members = [(f.key, f.vectors[self.column]) for f in features]
        losers = semantic_duplicate_losers(members, self.min_similarity)
        return [(key, self.name) for key in losers]
