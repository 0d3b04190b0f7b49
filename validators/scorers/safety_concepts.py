"""Concept-based safety screening on the recipe's CLIP model, for any model family."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthgen.schemas.recipe import Recipe
from synthgen.schemas.records import Score
from synthgen.schemas.scores import ScoreColumn
from synthgen.validators.clip_folder import ClipBundle
from synthgen.validators.clip_model import ClipRef, clip_ref, encode_texts
from synthgen.validators.scorers.base import (
    ScoreBatch,
    Scorer,
    ScorerIdentity,
    WorkerModels,
    max_score,
)


@dataclass(frozen=True)
class _Loaded:
    bundle: ClipBundle
    concepts: Any  # (concepts, dim) normalised text embeddings


class SafetyConcepts(Scorer):
    """The method of Stable Diffusion's own checker, on the recipe's CLIP model: the cosine
    similarity of each image with each concept prompt of `safety.concepts`, minus that
    concept's threshold. A positive value means the image shows the concept.

    `clip_<model>_unsafe_<family>`: the largest such margin among a family's concepts, in
    [-2, 2]. `clip_<model>_unsafe`: the largest over all families, backing the `unsafe`
    check (rejects above 0 by default); an image failing `unsafe` is withheld: never written
    to a tar, nor kept as rejected image bytes. A clip scores the largest margin of its
    sampled frames, column by column.
    """

    name = "safety_concepts"

    def __init__(
        self,
        clip: ClipRef,
        prompts: tuple[str, ...],
        families: tuple[str, ...],
        thresholds: tuple[float, ...],
    ):
        self.clip = clip
        self.prompts = prompts
        self.families = families
        self.thresholds = thresholds

    @classmethod
    def from_recipe(cls, recipe: Recipe, base_dir: Path, options: Any) -> SafetyConcepts:
        spec = recipe.safety
        if not spec.concepts:
            raise ValueError("safety.concepts: the safety_concepts scorer needs at least one")
        return cls(
            clip_ref(recipe, base_dir),
            tuple(c.prompt for c in spec.concepts),
            tuple(c.family for c in spec.concepts),
            tuple(spec.concept_threshold(c) for c in spec.concepts),
        )

    @property
    def unsafe_column(self) -> str:
        return f"{self.clip.column_prefix}_unsafe"

    def family_column(self, family: str) -> str:
        return f"{self.clip.column_prefix}_unsafe_{family.replace('-', '_')}"

    def columns(self) -> list[ScoreColumn]:
        out = [
            ScoreColumn(
                name=self.unsafe_column,
                scorer=self.name,
                minimum=-2.0,
                maximum=2.0,
                checks={"unsafe": "below"},
                description="largest concept similarity minus its threshold (> 0: unsafe)",
            )
        ]
        for family in dict.fromkeys(self.families):
            out.append(
                ScoreColumn(
                    name=self.family_column(family),
                    scorer=self.name,
                    minimum=-2.0,
                    maximum=2.0,
                    description=f"largest {family} concept similarity minus its threshold",
                )
            )
        return out

    def identity(self) -> ScorerIdentity:
        return ScorerIdentity(
            self.name, self.version, self.clip.name, self.clip.sha256, "open_clip_torch"
        )

    def load(self, models: WorkerModels) -> _Loaded:
        bundle = self.clip.load(models)
        return _Loaded(bundle, encode_texts(bundle, list(self.prompts), len(self.prompts)))

    def prepare(self, image: Any, state: _Loaded, inputs: dict[Any, Any]) -> None:
        self.clip.prepare(image, state.bundle, inputs)

    def score(self, batch: ScoreBatch, state: _Loaded) -> list[dict[str, Score]]:
        import torch

        img = self.clip.image_embeddings(batch, state.bundle)
        margins = img @ state.concepts.T - torch.tensor(self.thresholds, dtype=img.dtype)
        families = list(dict.fromkeys(self.families))
        index = {f: [i for i, g in enumerate(self.families) if g == f] for f in families}
        out: list[dict[str, Score]] = []
        for row in margins:
            scores: dict[str, Score] = {
                self.family_column(f): float(row[index[f]].max()) for f in families
            }
            scores[self.unsafe_column] = float(row.max())
            out.append(scores)
        return out

    def aggregate(self, frames: Sequence[dict[str, Score]]) -> dict[str, Score]:
        """A clip: each column's largest margin over its sampled frames."""
        return {name: max_score([f[name] for f in frames]) for name in frames[0]}
