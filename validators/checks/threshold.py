"""A score compared with a threshold (absolute, or resolved per class from a quantile)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from synthgen.schemas.recipe import Recipe, RecipeError, Threshold
from synthgen.schemas.records import Sample
from synthgen.schemas.scores import ScoreColumn
from synthgen.validators.base import Check


class ScoreThreshold(Check):
    """Drop when `score < threshold` (`keep_above`) or `score > threshold` (not `keep_above`).

    `threshold` is one value or a per-class mapping (class id -> value). A check built with
    `quantile` instead has no threshold of its own: the build-wide `quantile` check of the
    same name cuts each class (`decided_build_wide`).

    From a recipe: the named checks (`clip_score`, `dark`, ...) in the order of the columns
    backing them (scorer order), then `checks.scores` in recipe order, each named after its
    column. A named check the recipe changes from its default but no listed scorer backs is
    an error; one at its default is skipped. Thresholds apply to scalar columns only.
    """

    name = "threshold"
    order = 30
    builtin = True

    def __init__(
        self,
        name: str,
        column: str,
        threshold: float | dict[int, float] | None,
        keep_above: bool = True,
        quantile: float | None = None,
    ):
        self.name = name
        self.column = column
        self.threshold = threshold
        self.keep_above = keep_above
        self.quantile = quantile
        self.decided_build_wide = quantile is not None

    @classmethod
    def from_recipe(cls, recipe: Recipe, columns: Sequence[ScoreColumn]) -> list[ScoreThreshold]:
        spec = recipe.checks
        backed = named_checks(columns)
        _refuse_unbacked(recipe, backed)
        out = []
        for name, (column, keep_above) in backed.items():
            threshold = getattr(spec, name, None)
            if isinstance(threshold, Threshold):
                out.append(cls._of(name, column, threshold, keep_above))
        by_name = {c.name: c for c in columns}
        for column_name, threshold in spec.scores.items():
            target = by_name.get(column_name)
            if target is None:
                raise RecipeError(
                    f"checks.scores.{column_name}: no listed scorer writes this column "
                    f"(columns: {', '.join(by_name)})"
                )
            out.append(cls._of(column_name, target, threshold, threshold.keep == "above"))
        return out

    @classmethod
    def _of(
        cls, name: str, column: ScoreColumn, threshold: Threshold, keep_above: bool
    ) -> ScoreThreshold:
        if column.is_vector:
            raise RecipeError(f"checks.{name}: {column.name!r} is a vector column; no threshold")
        q = threshold.per_class_quantile
        return cls(name, column.name, threshold.absolute, keep_above, quantile=q)

    def limit(self, class_label: int) -> float | None:
        if self.threshold is None:
            return None
        if isinstance(self.threshold, dict):
            return self.threshold.get(class_label)
        return self.threshold

    def fails(self, score: object, limit: float | None) -> bool:
        """Whether `score` falls on the rejected side of `limit` (never for a missing, vector
        or NaN score, or no limit)."""
        if not isinstance(score, float | int) or limit is None or math.isnan(score):
            return False
        return score < limit if self.keep_above else score > limit

    def reason(self, sample: Sample) -> str | None:
        score = sample.scores.get(self.column)
        return self.name if self.fails(score, self.limit(sample.request.class_label)) else None


def named_checks(columns: Sequence[ScoreColumn]) -> dict[str, tuple[ScoreColumn, bool]]:
    """Named recipe check -> (the column backing it, keep samples above the threshold?)."""
    out: dict[str, tuple[ScoreColumn, bool]] = {}
    for column in columns:
        for name, keep in column.checks.items():
            if name in out:
                raise RecipeError(
                    f"checks.{name}: backed by two columns, {out[name][0].name!r} and "
                    f"{column.name!r}"
                )
            out[name] = (column, keep == "above")
    return out


def _refuse_unbacked(recipe: Recipe, backed: dict[str, tuple[ScoreColumn, bool]]) -> None:
    """A named threshold the recipe changed from its default that no listed scorer backs."""
    spec = recipe.checks
    fields = type(spec).model_fields
    for name in fields:
        threshold = getattr(spec, name)
        if not isinstance(threshold, Threshold) or name in backed:
            continue
        # Only a threshold the recipe changed from its default is an error: a recipe dumped
        # and read back (extend, the Python API) sets every field, and must mean the same.
        if threshold != fields[name].default:
            listed = ", ".join(s.name for s in recipe.scoring.scorers)
            raise RecipeError(
                f"checks.{name}: no listed scorer writes the column it needs (scorers: {listed})"
            )
