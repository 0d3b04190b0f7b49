"""A score compared with a threshold (absolute, or resolved per class from a quantile)."""

from __future__ import annotations

import math

from synthgen.schemas.records import Sample
from synthgen.validators.base import Check


class ScoreThreshold(Check):
    """Drop when `score < threshold` (`keep_above`) or `score > threshold` (not `keep_above`).

    `threshold` is one value or a per-class mapping (class id -> value). A check built with
    `quantile` instead has no threshold until the build-wide step fills in per-class cuts.
    """

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

    def limit(self, class_label: int) -> float | None:
        if self.threshold is None:
            return None
        if isinstance(self.threshold, dict):
            return self.threshold.get(class_label)
        return self.threshold

    def reason(self, sample: Sample) -> str | None:
        score = sample.scores.get(self.column)
        limit = self.limit(sample.request.class_label)
        if score is None or isinstance(score, tuple) or limit is None or math.isnan(score):
            return None
        failed = score < limit if self.keep_above else score > limit
        return self.name if failed else None
