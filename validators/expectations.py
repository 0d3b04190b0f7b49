"""Corpus expectations with great_expectations 1.x (ephemeral context, pandas, no network)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from synthgen.schemas.manifest import ExpectationInfo, Manifest
from synthgen.schemas.records import (
    ACCEPTED,
    FAILED,
    KEY_PATTERN,
    REJECTED,
    ROW_FIELDS,
)
from synthgen.schemas.scores import ScoreColumn

if TYPE_CHECKING:
    from synthgen.schemas.recipe import Recipe

logger = logging.getLogger(__name__)

STATUSES = (ACCEPTED, REJECTED, FAILED)
# Provenance columns every row must fill: those declared non-nullable, and `class_label`
# (nullable only as the storage of a `datasets` ClassLabel).
REQUIRED_FIELDS = tuple(
    f.name for f in ROW_FIELDS if f.provenance and (not f.nullable or f.name == "class_label")
)


@dataclass(frozen=True)
class ExpectationResult:
    dataset: str
    expectation: str
    kwargs: dict[str, Any]
    success: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "expectation": self.expectation,
            "kwargs": self.kwargs,
            "success": self.success,
            "detail": self.detail,
        }

    def as_info(self) -> ExpectationInfo:
        return ExpectationInfo.model_validate(self.as_dict())


def _detail(result: Any) -> str:
    r = result.result or {}
    parts = []
    if "observed_value" in r:
        parts.append(f"observed {r['observed_value']}")
    if r.get("unexpected_count"):
        sample = r.get("partial_unexpected_list") or []
        parts.append(f"{r['unexpected_count']} unexpected, e.g. {sample[:3]}")
    return "; ".join(parts)


def _validate(
    context: Any, name: str, df: pd.DataFrame, expectations: list[Any], part: str = ""
) -> list[ExpectationResult]:
    """Validate `df` as dataset `name`; `part` tells apart two suites over one dataset."""
    import great_expectations as gx

    # The context's default pandas source and a suite that is never saved: no project
    # config or expectation store is written per expectation.
    batch = context.data_sources.pandas_default.read_dataframe(df, asset_name=f"{name}{part}")
    suite = gx.ExpectationSuite(name=f"synthgen_{name}{part}", expectations=expectations)
    # BASIC keeps what `_detail` reads (observed value, unexpected count and examples) and
    # skips SUMMARY's extra metrics: the corpus gate in about half the time.
    outcome = batch.validate(suite, result_format="BASIC")
    out = []
    for r in outcome.results:
        cfg = r.expectation_config
        kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)}
        out.append(ExpectationResult(name, cfg.type, kwargs, bool(r.success), _detail(r)))
    return out


def _vector_summary(rows: pd.DataFrame, name: str) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Per row: length, smallest and largest element of a list column (NaN where null)."""
    lengths, lows, highs = [], [], []
    for value in rows[name] if name in rows else [None] * len(rows):
        arr = None if value is None else np.asarray(value, dtype=np.float64)
        lengths.append(np.nan if arr is None else float(arr.size))
        lows.append(np.nan if arr is None or arr.size == 0 else float(arr.min()))
        highs.append(np.nan if arr is None or arr.size == 0 else float(arr.max()))
    return (
        pd.Series(lengths, index=rows.index),
        pd.Series(lows, index=rows.index),
        pd.Series(highs, index=rows.index),
    )


def _context() -> Any:
    """An ephemeral great_expectations context: no analytics, no progress bars, its
    loggers quiet but for errors."""
    import os

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("great_expectations"):
            logging.getLogger(name).setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _sample_suite(recipe_hash: str | list[str], min_accepted_fraction: float) -> list[Any]:
    """Every row: a unique, well-formed key, a known status, the build's recipe hash, the
    required provenance; at least `min_accepted_fraction` of the rows accepted."""
    import great_expectations.expectations as gxe

    suite: list[Any] = [
        gxe.ExpectColumnValuesToBeUnique(column="key"),
        gxe.ExpectColumnValuesToMatchRegex(column="key", regex=KEY_PATTERN.pattern),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=list(STATUSES)),
        gxe.ExpectColumnValuesToBeInSet(
            column="recipe_hash",
            value_set=[recipe_hash] if isinstance(recipe_hash, str) else list(recipe_hash),
        ),
    ]
    for name in REQUIRED_FIELDS:  # build constants live in file metadata
        suite.append(gxe.ExpectColumnValuesToNotBeNull(column=name))
    if min_accepted_fraction > 0:
        suite.append(
            gxe.ExpectColumnValuesToBeInSet(
                column="status", value_set=["accepted"], mostly=min_accepted_fraction
            )
        )
    return suite


def _score_suite(rows: pd.DataFrame, column: ScoreColumn) -> list[Any]:
    """A scalar column within its declared range; a vector column on every row, `dim`
    long, each element within the range (checked on derived columns added to `rows`:
    gx has no list-valued expectations)."""
    import great_expectations.expectations as gxe

    lo, hi = column.minimum, column.maximum
    if column.dim is None:
        if lo is None and hi is None:
            return []
        return [gxe.ExpectColumnValuesToBeBetween(column=column.name, min_value=lo, max_value=hi)]
    length, low, high = (f"{column.name}__{part}" for part in ("length", "min", "max"))
    rows[length], rows[low], rows[high] = _vector_summary(rows, column.name)
    suite: list[Any] = [
        gxe.ExpectColumnValuesToNotBeNull(column=column.name),
        gxe.ExpectColumnValuesToBeBetween(
            column=length, min_value=column.dim, max_value=column.dim
        ),
    ]
    if lo is not None:
        suite.append(gxe.ExpectColumnValuesToBeBetween(column=low, min_value=lo))
    if hi is not None:
        suite.append(gxe.ExpectColumnValuesToBeBetween(column=high, max_value=hi))
    return suite


def _image_suite(
    rows: pd.DataFrame, width: int, height: int, score_columns: Sequence[ScoreColumn]
) -> tuple[pd.DataFrame, list[Any]]:
    """The samples with an image (a failed one has none), with any derived columns, and
    their size and score expectations."""
    import great_expectations.expectations as gxe

    rows = rows[rows["status"] != FAILED].copy() if len(rows) else rows.copy()
    suite: list[Any] = [
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=width, max_value=width),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=height, max_value=height),
    ]
    for column in score_columns:
        suite += _score_suite(rows, column)
    return rows, suite


def _classes_suite() -> list[Any]:
    """Every class attempted as planned and accepted as its target requires."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnPairValuesToBeEqual(column_A="planned", column_B="attempted"),
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="accepted_or_untargeted", column_B="target_accepted"
        ),
    ]


def _files_suite() -> list[Any]:
    """Every shard file there, with the sha256 and size the manifest records."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToNotBeNull(column="actual_sha256"),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="manifest_sha256", column_B="actual_sha256"),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="manifest_bytes", column_B="actual_bytes"),
    ]


def corpus_expectations(
    rows: pd.DataFrame,
    files: pd.DataFrame,
    classes: pd.DataFrame,
    *,
    recipe_hash: str | list[str],
    width: int,
    height: int,
    score_columns: Sequence[ScoreColumn],
    min_accepted_fraction: float,
    max_failed_fraction: float = 1.0,
) -> list[ExpectationResult]:
    """Run every corpus expectation.

    rows: the build's Parquet rows (image bytes dropped). files: one row per shard file with
    manifest and actual sha256/bytes. classes: per class `planned`, `attempted`, `accepted`,
    `target_accepted` (the accepted count the plan requires; -1 where the plan sets none).
    Score columns are checked against their declared ranges; a vector column must be
    present on every row with exactly `dim` elements, each within the declared range.
    Image expectations (size, scores) apply to samples with an image, failed ones aside;
    the failed fraction of all rows must stay within `max_failed_fraction`.
    """
    context = _context()
    results = _validate(context, "samples", rows, _sample_suite(recipe_hash, min_accepted_fraction))
    imaged, suite = _image_suite(rows, width, height, score_columns)
    results += _validate(context, "samples", imaged, suite, part="_images")
    results += _validate(context, "classes", classes, _classes_suite())
    results += _validate(context, "files", files, _files_suite())
    results += failure_budget(context, rows, max_failed_fraction)
    return results


def failure_budget(context: Any, rows: pd.DataFrame, budget: float) -> list[ExpectationResult]:
    """The recipe's `validation.max_failed_fraction` as an expectation: the fraction of
    attempted samples that failed (status `failed`) is at most `budget`. Its detail names the
    budget and the observed fraction."""
    import great_expectations.expectations as gxe

    attempted = len(rows)
    failed = int((rows["status"] == FAILED).sum()) if attempted else 0
    fraction = failed / attempted if attempted else 0.0
    table = pd.DataFrame([{"attempted": attempted, "failed": failed, "failed_fraction": fraction}])
    (result,) = _validate(
        context,
        "failures",
        table,
        [
            gxe.ExpectColumnValuesToBeBetween(
                column="failed_fraction", min_value=0, max_value=budget
            )
        ],
    )
    detail = (
        f"validation.max_failed_fraction {budget:g}: observed failed fraction {fraction:.4g} "
        f"({failed} of {attempted} samples failed)"
    )
    return [dataclasses.replace(result, detail=detail)]


def metric_expectations(metrics: dict[str, Any], gates: dict[str, Any]) -> list[ExpectationResult]:
    """The recipe's `validation.metrics` gates as great_expectations results.

    `metrics` is the manifest's metrics block ({"overall", "per_class"}); `gates` maps a
    metric name to a `MetricGate` (min / max / per_class). One row per scope (overall and,
    with per_class, each class with reference images); a metric that could not be computed
    (None) fails its gate.
    """
    if not gates:
        return []
    import os

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from synthgen.validators.metrics import gate_values

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    table: dict[str, dict[str, float]] = {}
    expectations: list[Any] = []
    for name, gate in sorted(gates.items()):
        values = gate_values(metrics, name, gate.per_class)
        for scope, value in values.items():
            table.setdefault(scope, {})[name] = np.nan if value is None else float(value)
        expectations += [
            gxe.ExpectColumnValuesToNotBeNull(column=name),
            gxe.ExpectColumnValuesToBeBetween(column=name, min_value=gate.min, max_value=gate.max),
        ]
    df = pd.DataFrame([{"scope": scope, **values} for scope, values in table.items()])
    return _validate(context, "metrics", df, expectations)


def metric_gate_results(manifest: Manifest, recipe: Recipe) -> list[ExpectationResult]:
    """The recipe's `validation.metrics` gates evaluated (great_expectations) on the
    manifest's metrics block; a gate with no metrics to read fails as a failure row."""
    gates = recipe.validation.metrics
    if not gates:
        return []
    if manifest.metrics is None:
        return [
            ExpectationResult(
                "metrics", "metrics_computed", {}, False, "no reference embeddings: no metrics"
            )
        ]
    return metric_expectations(manifest.metrics.model_dump(mode="json"), dict(gates))


def stored_metric_gates(out: Any) -> list[ExpectationResult]:
    """The recipe's `validation.metrics` gates on the metrics block the build's manifest
    stored (its own reference set), as the build's gate evaluated them: what `synthgen
    validate DIR` adds to the corpus suite so that it runs the build's expectations. Empty
    when the manifest cannot be read (validate reports that itself)."""
    from pathlib import Path

    from pydantic import ValidationError

    from synthgen.schemas.manifest import MANIFEST_NAME
    from synthgen.schemas.recipe import RecipeError, recipe_from_dict

    path = Path(out) / MANIFEST_NAME
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
        recipe = recipe_from_dict(manifest.recipe, str(path))
    except (OSError, ValueError, ValidationError, RecipeError):
        return []
    return metric_gate_results(manifest, recipe)


def _signature(dataset: str, expectation: str, kwargs: dict[str, Any]) -> tuple[str, str, str]:
    column = kwargs.get("column") or "/".join(
        str(kwargs[k]) for k in ("column_A", "column_B") if k in kwargs
    )
    return dataset, expectation, str(column)


def not_run(ran: Sequence[ExpectationResult], build: Sequence[ExpectationInfo] | None) -> list[str]:
    """The build gate's expectations (the manifest's `validation.expectations`) that `ran`
    does not include, as `dataset: expectation (column)`; one entry per missing run."""
    from collections import Counter

    if not build:
        return []
    have = Counter(_signature(e.dataset, e.expectation, e.kwargs) for e in ran)
    want = Counter(_signature(e.dataset, e.expectation, e.kwargs) for e in build)
    missing = want - have
    return [
        f"{dataset}: {expectation}" + (f" ({column})" if column else "")
        for (dataset, expectation, column), n in sorted(missing.items())
        for _ in range(n)
    ]
