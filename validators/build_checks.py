"""Recipe + declared score columns -> the per-sample checks and the build-wide ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from synthgen.schemas.recipe import Recipe, Threshold
from synthgen.schemas.scores import ScoreColumn, image_embedding_column
from synthgen.storage.watermark import can_carry, watermark_payload
from synthgen.validators.base import Check
from synthgen.validators.checks.odd_size import OddSize
from synthgen.validators.checks.threshold import ScoreThreshold
from synthgen.validators.checks.watermark import WatermarkSurvives
from synthgen.validators.nearest import NearCopy, nearest_columns


@dataclass(frozen=True)
class GlobalChecks:
    """Build-wide checks: duplicates across the whole build and per-class quantile cuts."""

    exact_duplicate: bool
    near_duplicate_distance: int | None
    # check name -> (score column, quantile, keep_above); resolved into per-class thresholds.
    quantiles: dict[str, tuple[str, float, bool]]
    # semantic dedup within the build: (embedding column, min cosine similarity)
    semantic_duplicate: tuple[str, float] | None = None


def uses_embeddings(recipe: Recipe) -> bool:
    """Whether the recipe stores image embeddings (the `clip_embedding` scorer)."""
    return any(s.name == "clip_embedding" for s in recipe.scoring.scorers)


def reference_kinds(recipe: Recipe) -> list[str]:
    """Which nearest-image lookups a build does: `reference` (the recipe's, else its balance
    source when the recipe stores embeddings) and `eval_set`."""
    kinds = []
    balance_as_reference = recipe.balance is not None and uses_embeddings(recipe)
    if recipe.reference is not None or balance_as_reference:
        kinds.append("reference")
    if recipe.eval_set is not None:
        kinds.append("eval_set")
    return kinds


def check_columns(recipe: Recipe) -> list[ScoreColumn]:
    """Score columns written by build-wide steps (nearest reference / eval-set image)."""
    return [c for kind in reference_kinds(recipe) for c in nearest_columns(kind)]


def embedding_column(columns: Sequence[ScoreColumn]) -> str | None:
    """The image-embedding vector column (the one declaring that role), if any."""
    return image_embedding_column(columns)


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
    recipe changes from its default but no listed scorer backs is an error; one at its default
    is skipped. Thresholds apply to scalar columns only.
    """
    spec = recipe.checks
    by_name = {c.name: c for c in columns}
    backed = named_checks(columns)
    checks: list[Check] = []
    if spec.odd_size:
        checks.append(OddSize(recipe.sampling.width, recipe.sampling.height))
    if can_carry(recipe.sampling.width, recipe.sampling.height):
        checks.append(WatermarkSurvives(watermark_payload(recipe.hash)))
    quantiles: dict[str, tuple[str, float, bool]] = {}

    def add(name: str, column: ScoreColumn, threshold: Threshold, keep_above: bool) -> None:
        if column.is_vector:
            raise ValueError(f"checks.{name}: {column.name!r} is a vector column; no threshold")
        q = threshold.per_class_quantile
        checks.append(ScoreThreshold(name, column.name, threshold.absolute, keep_above, quantile=q))
        if q is not None:
            quantiles[name] = (column.name, q, keep_above)

    for name in type(spec).model_fields:
        threshold = getattr(spec, name)
        if not isinstance(threshold, Threshold) or name in backed:
            continue
        # Only a threshold the recipe changed from its default is an error: a recipe dumped
        # and read back (extend, the Python API) sets every field, and must mean the same.
        if threshold != type(spec).model_fields[name].default:
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
    kinds = reference_kinds(recipe)
    needs_embedding = kinds or spec.semantic_duplicate is not None
    embedding = embedding_column(columns)
    if needs_embedding and embedding is None:
        raise ValueError(
            "reference / eval_set / checks.semantic_duplicate: need the image embeddings of "
            "the `clip_embedding` scorer; add it to scoring.scorers"
        )
    if spec.near_copy is not None and "reference" in kinds:
        checks.append(NearCopy("reference", spec.near_copy))
    if spec.contaminated is not None and "eval_set" in kinds:
        checks.append(NearCopy("eval_set", spec.contaminated))
    near = spec.near_duplicate.max_distance if spec.near_duplicate else None
    semantic = None
    if spec.semantic_duplicate is not None and embedding is not None:
        semantic = (embedding, spec.semantic_duplicate.min_similarity)
    return checks, GlobalChecks(spec.exact_duplicate, near, quantiles, semantic)
