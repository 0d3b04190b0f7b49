"""Image measurements with no model: brightness, sharpness, entropy of the grey image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from synthgen.schemas.recipe import Recipe
from synthgen.schemas.records import Score
from synthgen.schemas.scores import ScoreColumn
from synthgen.validators.scorers.base import ScoreBatch, Scorer, ScorerIdentity


def image_stats(image: Any) -> dict[str, float]:
    """brightness: mean grey level in [0, 1]; sharpness: variance of the 4-neighbour Laplacian
    (grey in [0, 1]); entropy: Shannon entropy of the 256-level grey histogram, in bits."""
    grey = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    lap = (
        -4 * grey[1:-1, 1:-1] + grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]
    )
    hist = np.bincount((grey * 255).round().astype(np.int64).ravel(), minlength=256)
    p = hist[hist > 0] / hist.sum()
    return {
        "brightness": float(grey.mean()),
        "sharpness": float(lap.var()) if lap.size else 0.0,
        "entropy": float(-(p * np.log2(p)).sum()),
    }


class ImageStatsScorer(Scorer):
    """cleanvision-style measurements: `brightness` backs `dark` (keep above) and `light`
    (keep below), `sharpness` backs `blurry`, `entropy` backs `low_information`. A clip
    scores the mean of its sampled frames."""

    name = "image_stats"
    host_only = True

    @classmethod
    def from_recipe(cls, recipe: Recipe, base_dir: Path, options: Any) -> ImageStatsScorer:
        return cls()

    def columns(self) -> list[ScoreColumn]:
        return [
            ScoreColumn(
                name="brightness",
                scorer=self.name,
                minimum=0.0,
                maximum=1.0,
                checks={"dark": "above", "light": "below"},
                description="mean grey level",
            ),
            ScoreColumn(
                name="sharpness",
                scorer=self.name,
                minimum=0.0,
                checks={"blurry": "above"},
                description="variance of the grey Laplacian",
            ),
            ScoreColumn(
                name="entropy",
                scorer=self.name,
                minimum=0.0,
                maximum=8.0,
                checks={"low_information": "above"},
                description="grey-level histogram entropy, bits",
            ),
        ]

    def identity(self) -> ScorerIdentity:
        return ScorerIdentity(self.name, self.version, None, None, "numpy")

    def score(self, batch: ScoreBatch, state: Any) -> list[dict[str, Score]]:
        return [dict(image_stats(im)) for im in batch.images]
