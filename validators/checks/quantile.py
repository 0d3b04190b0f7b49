"""Per-class quantile cuts: a threshold check given as `quantile` / `kept_fraction` rejects
each class's worst share of the whole build by its score."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

from synthgen.schemas.recipe import Recipe
from synthgen.schemas.scores import ScoreColumn
from synthgen.validators.base import BuildCheck, BuildFeatures
from synthgen.validators.checks.threshold import ScoreThreshold
from synthgen.validators.dedup import quantile_threshold


class QuantileCut(BuildCheck):
    """The build-wide half of a quantile `ScoreThreshold` of the same name: per class, the
    cut is computed from every sample's score in that class (`quantile_threshold`), and the
    samples on the rejected side of it are tagged with the check's name. Its outcome is the
    threshold check's, in the threshold check's place."""

    name = "quantile"
    order = 40
    builtin = True

    def __init__(self, name: str, column: str, quantile: float, keep_above: bool):
        self.name = name
        self.column = column
        self.quantile = quantile
        self.keep_above = keep_above

    @classmethod
    def from_recipe(cls, recipe: Recipe, columns: Sequence[ScoreColumn]) -> list[QuantileCut]:
        return [
            cls(t.name, t.column, t.quantile, t.keep_above)
            for t in ScoreThreshold.from_recipe(recipe, columns)
            if t.quantile is not None
        ]

    def needs(self) -> tuple[str, ...]:
        return (self.column,)

    def groups(self, features: BuildFeatures) -> Iterable[Hashable]:
        return (features.class_label,)

    def tag(self, features: Sequence[BuildFeatures]) -> Iterable[tuple[str, str]]:
        scores = [(f.key, f.scores.get(self.column, float("nan"))) for f in features]
        cut = quantile_threshold([s for _, s in scores], self.quantile, self.keep_above)
        threshold = ScoreThreshold(self.name, self.column, cut, self.keep_above)
        return [(key, self.name) for key, score in scores if threshold.fails(score, cut)]
