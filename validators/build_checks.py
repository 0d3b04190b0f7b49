"""Recipe + declared score columns -> the per-sample checks and the build-wide ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from synthgen.schemas.recipe import Recipe, Threshold
from synthgen.schemas.scores import ScoreColumn
from synthgen.validators.base import Check
from synthgen.validators.checks.odd_size import OddSize
from synthgen.validators.checks.threshold import ScoreThreshold


@dataclass(frozen=True)
class GlobalChecks:
    """Build-wide checks: duplicates across the whole build and per-class quantile cuts."""

    exact_duplicate: bool
    near_duplicate_distance: int | None
    # check name -> (score column, quantile); resolved into per-class thresholds.
    quantiles: dict[str, tuple[str, float]]


def named_checks(columns: Sequence[ScoreColumn]) -> dict[str, tuple[ScoreColumn, bool]]:
    """Named recipe check -> (the column backing it, keep samples above the threshold?)."""
    out: dict[str, tuple[ScoreColumn, bool]] = {}
    for column in columns:
        for name, keep in column.checks.items():
            if name in out:
                raise ValueError(
                    f"checks.{name}: backed by two columns, {out[name][0].name!r} and "
                    f"{column.name!r}"
                )
            out[name] = (column, keep == "above")
    return out


def make_checks(recipe: Recipe, columns: Sequence[ScoreColumn]) -> tuple[list[Check], GlobalChecks]:
    """Per-sample checks in reporting order, and the build-wide ones.

    Order (the first failing check is a sample's reject reason): `odd_size`, then the named
    checks (`clip_score`, `dark`, ...) in the order of the columns backing them (scorer order),
    then `checks.scores` in recipe order, each named after its column. A named check the
    recipe sets explicitly but no listed scorer backs is an error; one left at its default
    is skipped. Thresholds apply to scalar columns only.
    """
    spec = recipe.checks
    by_name = {c.name: c for c in columns}
    backed = named_checks(columns)
    checks: list[Check] = []
    if spec.odd_size:
        checks.append(OddSize(recipe.sampling.width, recipe.sampling.height))
    quantiles: dict[str, tuple[str, float]] = {}

    def add(name: str, column: ScoreColumn, threshold: Threshold, keep_above: bool) -> None:
        if column.is_vector:
            raise ValueError(f"checks.{name}: {column.name!r} is a vector column; no threshold")
        q = threshold.per_class_quantile
        checks.append(ScoreThreshold(name, column.name, threshold.absolute, keep_above, quantile=q))
        if q is not None:
            quantiles[name] = (column.name, q)

    for name in type(spec).model_fields:
        threshold = getattr(spec, name)
        if not isinstance(threshold, Threshold) or name in backed:
            continue
        if name in spec.model_fields_set:
            listed = ", ".join(s.name for s in recipe.scoring.scorers)
            raise ValueError(
                f"checks.{name}: no listed scorer writes the column it needs (scorers: {listed})"
            )
    for name, (column, keep_above) in backed.items():
        threshold = getattr(spec, name, None)
        if threshold is not None:
            add(name, column, threshold, keep_above)
    for column_name, threshold in spec.scores.items():
        target = by_name.get(column_name)
        if target is None:
            raise ValueError(
                f"checks.scores.{column_name}: no listed scorer writes this column "
                f"(columns: {', '.join(by_name)})"
            )
        add(column_name, target, threshold, threshold.keep == "above")
    near = spec.near_duplicate.max_distance if spec.near_duplicate else None
    return checks, GlobalChecks(spec.exact_duplicate, near, quantiles)
