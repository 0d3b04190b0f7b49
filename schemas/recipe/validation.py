"""Corpus expectations checked after writing, and gates on distribution metrics."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from synthgen.schemas.recipe.common import _Frozen
from synthgen.schemas.recipe.fields import HashOmit

# Distribution metrics a recipe may gate (validators.metrics computes them).
METRIC_NAMES = (
    "frechet_distance",
    "kid",
    "precision",
    "recall",
    "density",
    "coverage",
    "vendi",
    "vendi_reference",
    "mean_pairwise_distance",
    "mean_pairwise_distance_reference",
)


class MetricGate(_Frozen):
    """Bounds (inclusive) one corpus metric must meet, overall and in every class."""

    min: float | None = None
    max: float | None = None
    per_class: bool = Field(default=True, description="also gate each class, not only overall")

    @model_validator(mode="after")
    def _some_bound(self) -> MetricGate:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        return self


class ValidationSpec(_Frozen):
    """Corpus expectations run after writing (great_expectations)."""

    min_accepted_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    max_failed_fraction: Annotated[float, HashOmit.IF_DEFAULT] = Field(
        default=0.001,
        ge=0.0,
        le=1.0,
        description="budget for failed samples (an exception while generating, scoring or "
        "encoding one sample: `status=failed`): past this fraction of attempted samples the "
        "build fails validation",
    )
    metrics: Annotated[dict[str, MetricGate], HashOmit.IF_EMPTY] = Field(
        default_factory=dict,
        description="gates on distribution metrics against the reference set, by name: "
        + ", ".join(METRIC_NAMES),
    )

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: dict[str, MetricGate]) -> dict[str, MetricGate]:
        unknown = sorted(set(v) - set(METRIC_NAMES))
        if unknown:
            raise ValueError(
                f"unknown metric {', '.join(unknown)}; known: {', '.join(METRIC_NAMES)}"
            )
        return v
