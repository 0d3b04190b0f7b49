"""CLIP image-prompt similarity and zero-shot label margin."""

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
from synthgen.validators.frames import is_video
from synthgen.validators.scorers.base import (
    ScoreBatch,
    Scorer,
    ScorerIdentity,
    WorkerModels,
    mean_score,
    min_score,
)


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

    A clip (`clips`: a video build) scores as the mean over its sampled frames, and also
    writes `clip_<model>_score_min`, its worst frame's score; its margin is the frames' mean.
    Each clip's prompt is encoded once, whatever its number of frames.
    """

    name = "clip"

    def __init__(self, clip: ClipRef, class_prompts: dict[int, str], clips: bool = False):
        self.clip = clip
        self.class_prompts = dict(sorted(class_prompts.items()))
        self.clips = clips

    @classmethod
    def from_recipe(cls, recipe: Recipe, base_dir: Path, options: Any) -> ClipScorer:
        prompts = {c.id: c.prompts[0] for c in recipe.classes}
        return cls(clip_ref(recipe, base_dir), prompts, clips=is_video(recipe))

    @property
    def score_column(self) -> str:
        return f"{self.clip.column_prefix}_score"

    @property
    def margin_column(self) -> str:
        return f"{self.clip.column_prefix}_label_margin"

    @property
    def min_column(self) -> str:
        return f"{self.clip.column_prefix}_score_min"

    def columns(self) -> list[ScoreColumn]:
        out = [
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
        if self.clips:
            out.append(
                ScoreColumn(
                    name=self.min_column,
                    scorer=self.name,
                    minimum=-1.0,
                    maximum=1.0,
                    description="the lowest similarity of a sampled frame and the prompt",
                )
            )
        return out

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
        txt = self._prompt_embeddings(batch, state)
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
            row: dict[str, Score] = {
                self.score_column: float(similarity[i]),
                self.margin_column: margin,
            }
            if self.clips:
                row[self.min_column] = row[self.score_column]
            out.append(row)
        return out

    def _prompt_embeddings(self, batch: ScoreBatch, state: _Loaded) -> Any:
        """Each image's prompt embedding; in a video build, one text pass per sample (a
        clip's frames share their sample)."""
        if not self.clips:
            prompts = [s.request.prompt for s in batch.samples]
            return encode_texts(state.bundle, prompts, self.clip.compute_batch)
        by_key = {s.request.key: s.request.prompt for s in batch.samples}
        unique = encode_texts(state.bundle, list(by_key.values()), self.clip.compute_batch)
        index = {k: i for i, k in enumerate(by_key)}
        return unique[[index[s.request.key] for s in batch.samples]]

    def aggregate(self, frames: Sequence[dict[str, Score]]) -> dict[str, Score]:
        """A clip: the frames' mean score and margin, and (video builds) the lowest score."""
        out: dict[str, Score] = {
            self.score_column: mean_score([f[self.score_column] for f in frames]),
            self.margin_column: mean_score([f[self.margin_column] for f in frames]),
        }
        if self.clips:
            out[self.min_column] = min_score([f[self.min_column] for f in frames])
        return out
