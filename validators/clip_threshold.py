"""Reject samples whose CLIP image-prompt similarity is below a threshold."""

from __future__ import annotations

from schemas.records import Sample
from validators.base import Check


class ClipThreshold(Check):
    def __init__(self, column: str, threshold: float):
        self.name = f"{column}_threshold"
        self.column = column
        self.threshold = threshold

    def reason(self, sample: Sample) -> str | None:
        score = sample.scores.get(self.column)
        if score is None:
            return f"missing_{self.column}"
        if score < self.threshold:
            return "clip_score_low"
        return None
