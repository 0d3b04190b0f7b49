"""The normalised CLIP image embedding of each sample, as a fixed-size vector column."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from synthgen.schemas.recipe import Recipe
from synthgen.schemas.records import Score
from synthgen.schemas.scores import IMAGE_EMBEDDING, ScoreColumn
from synthgen.validators.clip_folder import ClipBundle
from synthgen.validators.clip_model import ClipRef, clip_ref
from synthgen.validators.scorers.base import (
    ScoreBatch,
    Scorer,
    ScorerIdentity,
    WorkerModels,
    mean_score,
)


class ClipEmbeddingScorer(Scorer):
    """`clip_<model>_embedding`: the unit-length image embedding (float32, `embed_dim` long)
    of the recipe's `scoring.clip_model`, for corpus metrics and embedding dedup.

    It shares the worker's CLIP model and the batch's image embeddings with the `clip`
    scorer: listing both costs one model load and one image pass. A clip's embedding is the
    mean of its sampled frames' embeddings, normalised to unit length.
    """

    name = "clip_embedding"

    def __init__(self, clip: ClipRef):
        self.clip = clip

    @classmethod
    def from_recipe(cls, recipe: Recipe, base_dir: Path, options: Any) -> ClipEmbeddingScorer:
        return cls(clip_ref(recipe, base_dir))

    @property
    def column(self) -> str:
        return f"{self.clip.column_prefix}_embedding"

    def columns(self) -> list[ScoreColumn]:
        return [
            ScoreColumn(
                name=self.column,
                scorer=self.name,
                minimum=-1.0,
                maximum=1.0,
                dim=self.clip.embed_dim,
                description="normalised CLIP image embedding",
                role=IMAGE_EMBEDDING,
            )
        ]

    def identity(self) -> ScorerIdentity:
        return ScorerIdentity(
            self.name, self.version, self.clip.name, self.clip.sha256, "open_clip_torch"
        )

    def load(self, models: WorkerModels) -> ClipBundle:
        return self.clip.load(models)

    def prepare(self, image: Any, state: ClipBundle, inputs: dict[Any, Any]) -> None:
        self.clip.prepare(image, state, inputs)

    def score(self, batch: ScoreBatch, state: ClipBundle) -> list[dict[str, Score]]:
        img = self.clip.image_embeddings(batch, state)
        return [{self.column: tuple(float(x) for x in row)} for row in img.tolist()]

    def aggregate(self, frames: Sequence[dict[str, Score]]) -> dict[str, Score]:
        mean = mean_score([f[self.column] for f in frames])
        vector = mean if isinstance(mean, tuple) else (mean,)
        norm = math.sqrt(sum(x * x for x in vector))
        return {self.column: tuple(x / norm if norm > 0 else 0.0 for x in vector)}
