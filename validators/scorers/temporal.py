"""Temporal measures of a clip, from the differences between its frames (video builds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from synthgen.schemas.recipe import Recipe
from synthgen.schemas.records import Sample, Score
from synthgen.schemas.scores import ScoreColumn
from synthgen.validators.frames import is_video
from synthgen.validators.scorers.base import ScoreBatch, Scorer, ScorerIdentity

FLOOR = 1e-3
"""The smallest frame difference a ratio divides by (a quarter of a grey level, on average):
a still clip's ratios stay finite, and noise far below a visible change is not a jump."""

RATIO_MAX = 1.0 / FLOOR
"""The largest ratio there can be (differences are at most 1)."""

NO_CLIP = {"motion": float("nan"), "max_jump": float("nan"), "max_spike": float("nan")}


def frame_differences(clip: Any, lag: int = 1) -> Any:
    """Mean absolute difference, in [0, 1], of each frame and the frame `lag` after it, over
    every pixel and channel of a uint8 (F, H, W, C) clip: F - lag values (float64)."""
    frames = np.asarray(clip, dtype=np.int16)
    if frames.shape[0] <= lag:
        return np.zeros(0)
    diff = np.abs(frames[lag:] - frames[:-lag]).astype(np.float64)
    return diff.mean(axis=(1, 2, 3)) / 255.0


def temporal_scores(clip: Any) -> dict[str, float]:
    """`motion`: the mean difference of consecutive frames. `max_jump`: the largest one over
    their median (a sudden change between two frames). `max_spike`: of each frame, its
    smaller difference to a neighbour over the difference of those two neighbours, the
    largest (a frame that leaves and comes back: flicker). Ratios divide by at least
    `FLOOR`. NaN for a clip of one frame."""
    steps = frame_differences(clip)
    if steps.size == 0:
        return dict(NO_CLIP)
    jump = float(steps.max() / max(float(np.median(steps)), FLOOR))
    spike = 0.0
    if steps.size >= 2:
        across = frame_differences(clip, lag=2)
        spikes = np.minimum(steps[:-1], steps[1:]) / np.maximum(across, FLOOR)
        spike = float(spikes.max())
    return {
        "motion": float(steps.mean()),
        "max_jump": min(jump, RATIO_MAX),
        "max_spike": min(spike, RATIO_MAX),
    }


class TemporalScorer(Scorer):
    """`motion` backs the `frozen_clip` check (a clip that does not move), `max_jump` and
    `max_spike` the `flicker` check (a sudden jump, a frame that flashes). Every frame of the
    clip counts, not only the frames the other scorers sample.

    Added to every video build's scorers; refused in an image build. An image (no frames to
    compare) scores NaN, which no check rejects.
    """

    name = "temporal"
    host_only = True
    clips_only = True

    @classmethod
    def from_recipe(cls, recipe: Recipe, base_dir: Path, options: Any) -> TemporalScorer:
        if not is_video(recipe):
            raise ValueError(
                f"scoring.scorers: scorer {cls.name!r} measures clips, and this recipe makes "
                "images (sampling.num_frames is not set)"
            )
        return cls()

    def columns(self) -> list[ScoreColumn]:
        return [
            ScoreColumn(
                name="motion",
                scorer=self.name,
                minimum=0.0,
                maximum=1.0,
                description="mean absolute difference of consecutive frames",
            ),
            ScoreColumn(
                name="max_jump",
                scorer=self.name,
                minimum=0.0,
                maximum=RATIO_MAX,
                description="largest consecutive-frame difference over the median one",
            ),
            ScoreColumn(
                name="max_spike",
                scorer=self.name,
                minimum=0.0,
                maximum=RATIO_MAX,
                description="largest difference of a frame from both neighbours over "
                "the neighbours' difference from each other",
            ),
        ]

    def identity(self) -> ScorerIdentity:
        return ScorerIdentity(self.name, self.version, None, None, "numpy")

    def score(self, batch: ScoreBatch, state: Any) -> list[dict[str, Score]]:
        return [dict(NO_CLIP) for _ in batch.images]

    def score_clip(self, sample: Sample, clip: Any, state: Any) -> dict[str, Score]:
        return dict(temporal_scores(clip))
