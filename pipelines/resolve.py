"""Recipe -> checked inputs: model folders resolved and inspected, build-wide provenance.

Nothing here loads a model; every check that can fail does so before any output exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from synthgen.generators.handler import GenerationSettings
from synthgen.generators.model_folder import check_diffusers_folder, scheduler_config
from synthgen.pipelines.context import BuildContext, canonical_json, library_versions
from synthgen.schemas.recipe import Recipe, resolve_path
from synthgen.schemas.records import score_column
from synthgen.storage.hashing import folder_sha256
from synthgen.validators.clip_folder import ClipFolder, check_clip_folder, clip_sha256
from synthgen.validators.clip_scorer import margin_column
from synthgen.validators.measure import MEASURE_COLUMNS


@dataclass(frozen=True)
class ResolvedRecipe:
    """A recipe with its model folders resolved and checked (no model loaded yet)."""

    recipe: Recipe
    model_path: Path
    clip: ClipFolder
    balance_source: str | None = None  # resolved path or shard pattern of a balance source

    @property
    def clip_column(self) -> str:
        return score_column(self.clip.name)

    @property
    def margin_column(self) -> str:
        return margin_column(self.clip.name)

    @property
    def score_columns(self) -> tuple[str, ...]:
        return (self.clip_column, self.margin_column, *MEASURE_COLUMNS)


def resolve(recipe: Recipe, base_dir: Path) -> ResolvedRecipe:
    """Check the recipe's model folders; raises ModelFolderError naming the problem."""
    model_path = resolve_path(base_dir, recipe.model.path)
    check_diffusers_folder(model_path)
    clip = check_clip_folder(resolve_path(base_dir, recipe.scoring.clip_model))
    source = None
    if recipe.balance is not None:
        from synthgen.generators.sources.open import open_source

        raw = recipe.balance.source
        if any(c in raw for c in "{*?["):  # a shard pattern, not a single path
            source = raw if Path(raw).is_absolute() else str(base_dir / raw)
        else:
            source = str(resolve_path(base_dir, raw))
        open_source(recipe.balance, source)  # a missing or malformed source fails here
    return ResolvedRecipe(recipe=recipe, model_path=model_path, clip=clip, balance_source=source)


def make_context(resolved: ResolvedRecipe, created_at: str) -> BuildContext:
    r = resolved.recipe
    index = json.loads((resolved.model_path / "model_index.json").read_text())
    device = r.model.device
    if device == "cpu":
        device = f"cpu:threads={r.model.cpu_threads}"
    scorers = [
        {
            "name": resolved.clip.name,
            "column": resolved.score_columns[0],
            "sha256": clip_sha256(resolved.clip),
            "library": "open_clip_torch",
        }
    ]
    return BuildContext(
        recipe_name=r.name,
        recipe_hash=r.hash,
        model_path=str(resolved.model_path),
        model_sha256=folder_sha256(resolved.model_path),
        pipeline_class=str(index["_class_name"]),
        scheduler=r.sampling.scheduler,
        scheduler_config=canonical_json(
            scheduler_config(resolved.model_path, r.sampling.scheduler)
        ),
        steps=r.sampling.steps,
        guidance_scale=r.sampling.guidance_scale,
        compute_batch=r.model.compute_batch,
        dtype=r.model.dtype,
        device=device,
        image_format=r.output.image_format,
        image_encoding=canonical_json(
            {
                "format": r.output.image_format,
                "png_compress_level": r.output.png_compress_level,
                "quality": r.output.quality,
            }
        ),
        scorers=canonical_json(scorers),
        library_versions=canonical_json(library_versions()),
        created_at=created_at,
    )


def generation_settings(resolved: ResolvedRecipe) -> GenerationSettings:
    r = resolved.recipe
    return GenerationSettings(
        model_path=str(resolved.model_path),
        scheduler=r.sampling.scheduler,
        steps=r.sampling.steps,
        guidance_scale=r.sampling.guidance_scale,
        height=r.sampling.height,
        width=r.sampling.width,
        dtype=r.model.dtype,
        device=r.model.device,
        compute_batch=r.model.compute_batch,
        cpu_threads=r.model.cpu_threads,
        channels_last=r.model.channels_last,
        compile=r.model.compile,
        copies=r.model.copies,
        image_format=r.output.image_format,
        png_compress_level=r.output.png_compress_level,
        quality=r.output.quality,
    )
