"""CLIP image-prompt similarity and zero-shot label margin."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthgen.schemas.recipe import Recipe
from synthgen.schemas.records import Score
from synthgen.schemas.scores import ScoreColumn
from synthgen.validators.clip_folder import ClipBundle
from synthgen.validators.clip_model import ClipRef, clip_ref, encode_texts
from synthgen.validators.scorers.base import ScoreBatch, Scorer, ScorerIdentity, WorkerModels


@dataclass(frozen=True)
class _Loaded:
    bundle: ClipBundle
    class_embeddings: Any  # (classes, dim) tensor, or None with a single class


class ClipScorer(Scorer):
    """`clip_<model>_score`: cosine similarity of each image with its own prompt, in [-1, 1]
    (backs the `clip_score` check). `clip_<model>_label_margin`: zero-shot similarity to the
    sample's class's first prompt minus the best other class's, in [-2, 2] (backs
    `label_margin`; NaN with a single class).

    Images and prompts go through the model in fixed-shape padded batches of
    `scoring.batch_size`, so a score does not depend on how Beam batched the work.
    """

    name = "clip"

    def __init__(self, clip: ClipRef, class_prompts: dict[int, str]):
        self.clip = clip
        self.class_prompts = dict(sorted(class_prompts.items()))

    @classmethod
    def from_recipe(cls, recipe: Recipe, base_dir: Path, options: Any) -> ClipScorer:
        return cls(clip_ref(recipe, base_dir), {c.id: c.prompts[0] for c in recipe.classes})

    @property
    def score_column(self) -> str:
        return f"{self.clip.column_prefix}_score"

    @property
    def margin_column(self) -> str:
        return f"{self.clip.column_prefix}_label_margin"

    def columns(self) -> list[ScoreColumn]:
        return [
            ScoreColumn(
                name=self.score_column,
                scorer=self.name,
                minimum=-1.0,
                maximum=1.0,
                checks={"clip_score": "above"},
                description="cosine similarity of the image and its prompt",
            ),
            ScoreColumn(
                name=self.margin_column,
                scorer=self.name,
                minimum=-2.0,
                maximum=2.0,
                checks={"label_margin": "above"},
                description="similarity to its own class minus the best other class",
            ),
        ]

    def identity(self) -> ScorerIdentity:
        return ScorerIdentity(
            self.name, self.version, self.clip.name, self.clip.sha256, "open_clip_torch"
        )

    def load(self, models: WorkerModels) -> _Loaded:
        bundle = self.clip.load(models)
        texts = list(self.class_prompts.values())
        classes = encode_texts(bundle, texts, len(texts)) if len(texts) > 1 else None
        return _Loaded(bundle, classes)

    def prepare(self, image: Any, state: _Loaded, inputs: dict[Any, Any]) -> None:
        self.clip.prepare(image, state.bundle, inputs)

    def score(self, batch: ScoreBatch, state: _Loaded) -> list[dict[str, Score]]:
        import torch

        img = self.clip.image_embeddings(batch, state.bundle)
        prompts = [s.request.prompt for s in batch.samples]
        txt = encode_texts(state.bundle, prompts, self.clip.compute_batch)
        similarity = (img * txt).sum(dim=-1).tolist()
        class_ids = list(self.class_prompts)
        class_sims = img @ state.class_embeddings.T if state.class_embeddings is not None else None
        out: list[dict[str, Score]] = []
        for i, sample in enumerate(batch.samples):
            margin = float("nan")
            if class_sims is not None and sample.request.class_label in class_ids:
                own = class_ids.index(sample.request.class_label)
                others = torch.cat([class_sims[i, :own], class_sims[i, own + 1 :]])
                margin = float(class_sims[i, own] - others.max())
            out.append({self.score_column: float(similarity[i]), self.margin_column: margin})
        return out
