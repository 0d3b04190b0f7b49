"""Recipe -> checked inputs: model folders resolved and inspected, build-wide provenance.

Nothing here loads a model; every check that can fail does so before any output exists.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthgen.generators.adapters import adapter_table, table_identity
from synthgen.generators.conditioning import ConditioningSettings, resolve_conditioning
from synthgen.generators.families import check_recipe_options
from synthgen.generators.handler import GenerationSettings
from synthgen.generators.model_folder import ModelFolder, check_sampling, inspect_folder
from synthgen.pipelines.context import BuildContext, canonical_json, library_versions
from synthgen.pipelines.gcpolicy import loading
from synthgen.schemas.errors import ModelFolderError
from synthgen.schemas.recipe import Recipe, RecipeError, is_url, resolve_path
from synthgen.schemas.records import PATH_KEYS, public_path
from synthgen.schemas.scores import ScoreColumn
from synthgen.storage.c2pa_sign import signing_config
from synthgen.storage.hashing import folder_sha256
from synthgen.storage.images import encoder_identity
from synthgen.storage.model_card import license_info
from synthgen.storage.watermark import can_carry, survives_encoding, watermark_payload
from synthgen.validators.build_checks import recipe_checks
from synthgen.validators.scorers.base import Scorer
from synthgen.validators.scoring import build_scorers, score_columns, scorer_provenance

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedRecipe:
    """A recipe with its model folders resolved and checked (no model loaded yet)."""

    recipe: Recipe
    model_path: Path
    scorers: tuple[Scorer, ...]
    balance_source: str | None = None  # resolved path or shard pattern of a balance source
    model: ModelFolder | None = None  # the checked diffusers folder (family, components)
    scheduler_config: dict[str, Any] | None = None  # the effective one, dry-run checked
    base_dir: Path | None = None  # the folder the recipe's relative paths resolve against
    adapters: str = "{}"  # LoRAs / embeddings, checked and hashed (generators.adapters table)
    conditioning: ConditioningSettings | None = None  # image conditioning, checked and hashed

    @property
    def score_columns(self) -> tuple[ScoreColumn, ...]:
        """Every column the recipe's scorers write, as they declare them."""
        return tuple(score_columns(self.scorers))

    def identity(self) -> dict[str, str]:
        """What the recipe's paths point at: the model's content hash and each scorer's.

        A resumed build must find the same identity (the recipe hash covers paths only)."""
        out = {"model_sha256": folder_sha256(self.model_path)}
        out |= table_identity(self.adapters)
        if self.conditioning is not None:  # source images, mask, ControlNets: their content
            out["conditioning_sha256"] = self.conditioning.content_sha256()
        for p in scorer_provenance(self.scorers):
            if p.get("sha256"):
                out[f"scorer_{p['name']}_sha256"] = str(p["sha256"])
        return out

    def places(self) -> tuple[str | None, dict[str, str]]:
        """The recipe's folder and each local path the recipe names (resolved) -> as
        published files record it: kept in the build's private state, never published."""
        base = self.base_dir
        return (None if base is None else str(base)), recipe_paths(self.recipe, base)


def recipe_paths(recipe: Recipe, base_dir: Path | None) -> dict[str, str]:
    """{resolved local path: as published} for every local path the recipe names (model,
    CLIP, adapters, sources, conditioning inputs, signing files): as the recipe wrote it
    when relative to its folder, else its name (`public_path`). Published files record
    these names in place of the paths; a URL is not a local path and is left out."""
    base = str(base_dir) if base_dir is not None else None
    out: dict[str, str] = {}

    def add(raw: str) -> None:
        if raw.startswith("file://"):
            raw_path = raw.removeprefix("file://")
        elif is_url(raw):
            return
        else:
            raw_path = raw
        if any(c in raw_path for c in "{*?["):  # a shard pattern: as the readers see it
            p = Path(raw_path).expanduser()
            local = str(p if p.is_absolute() or base_dir is None else base_dir / p)
        else:
            local = str(resolve_path(base_dir or Path.cwd(), raw_path))
        out[local] = public_path(raw, base)

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k in PATH_KEYS and isinstance(v, str):
                    add(v)
                elif k not in ("prompts", "slots", "negative_prompt"):
                    walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(recipe.model_dump(mode="json"))
    return out


def check_model(recipe: Recipe, model_path: Path) -> tuple[ModelFolder, dict[str, Any]]:
    """The model folder checked against the recipe, before anything loads.

    Raises ModelFolderError (the folder: files, headers, shapes, task, scheduler config) or
    RecipeError (an option the model's family does not support, naming family and option).
    Returns the folder and the effective scheduler config.
    """
    m = recipe.model
    license_info(model_path, m.license, m.license_ack, recipe.usage)  # unacknowledged: refuse
    folder = inspect_folder(model_path, m.variant, safety_checker=m.safety_checker)
    family = folder.family
    check_recipe_options(recipe, folder.class_name, family)
    s = recipe.sampling
    multiple = _size_multiple(folder)
    if s.height % multiple or s.width % multiple:
        raise RecipeError(
            f"sampling.height/width: {folder.class_name} ({family.name}) makes images whose "
            f"sides are multiples of {multiple}; got {s.height}x{s.width}"
        )
    if m.offload != "none" and not m.device.startswith("cuda"):
        raise RecipeError(f"model.offload: {m.offload!r} offloads to a GPU; device is {m.device}")
    for steps in sorted({c.steps for c in recipe.classes if c.steps not in (None, s.steps)}):
        check_sampling(folder, s.scheduler, steps, s)  # a class's own steps, dry-run too
    return folder, check_sampling(folder, s.scheduler, s.steps, s)


def _size_multiple(folder: ModelFolder) -> int:
    """The VAE's downsampling times the denoiser's patch (and Flux's 2x2 latent packing)."""

    def config(name: str) -> dict[str, Any]:
        path = folder.path / name / "config.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelFolderError(f"{path}: unreadable config: {exc}") from None
        return data if isinstance(data, dict) else {}

    names = {c.name for c in folder.components}
    vae = config("vae") if "vae" in names else {}
    # AutoencoderKL: block_out_channels; SANA's deep-compression AutoencoderDC: its encoder's
    # (2 ** (blocks - 1) either way); no VAE config: assume SD's 8
    blocks = vae.get("block_out_channels") or vae.get("encoder_block_out_channels") or [0] * 4
    factor = 2 ** (len(blocks) - 1)
    patch = 1
    if folder.family.denoiser == "transformer" and "transformer" in names:
        p = config("transformer").get("patch_size") or 1  # Wan: (frames, height, width)
        patch = int(p[-1] if isinstance(p, list) else p)
    return factor * patch * folder.family.latent_pack


def resolve(recipe: Recipe, base_dir: Path) -> ResolvedRecipe:
    """Check the recipe's model folders; raises ModelFolderError naming the problem."""
    with loading():  # the checks import the model's classes and the scorers' libraries
        return _resolve(recipe, base_dir)


def _resolve(recipe: Recipe, base_dir: Path) -> ResolvedRecipe:
    model_path = resolve_path(base_dir, recipe.model.path)
    model, sched = check_model(recipe, model_path)
    adapters = adapter_table(recipe, base_dir, model_path, model.class_name)
    scorers = tuple(build_scorers(recipe, base_dir))
    recipe_checks(recipe, score_columns(scorers))  # every checks.* option, before any output
    _warn_about_padding(recipe)
    _check_output_plugins(recipe)
    _check_watermark_survives(recipe)
    signing_config(recipe.output.c2pa, base_dir)  # C2PA credentials readable and accepted
    source = None
    if recipe.balance is not None:
        from synthgen.generators.sources.open import SourceOptions, open_source
        from synthgen.pipelines.remote import source_location

        source = source_location(base_dir, recipe.balance.source)
        # a missing or malformed source fails here
        open_source(source, SourceOptions.of(recipe.balance))
    # image conditioning: sources, masks, preprocessors, ControlNets checked before any output
    from synthgen.pipelines.remote import source_location

    conditioning = resolve_conditioning(
        recipe, base_dir, model_path, model.class_name, locate=source_location
    )
    return ResolvedRecipe(
        recipe=recipe,
        model_path=model_path,
        scorers=scorers,
        balance_source=source,
        model=model,
        scheduler_config=sched,
        base_dir=base_dir,
        adapters=adapters,
        conditioning=conditioning,
    )


def _check_output_plugins(recipe: Recipe) -> None:
    """The image codec and the shard writer the recipe names are registered (a codec or
    writer plug-in is found by its name), before any work."""
    from synthgen.pipelines.shard_writers import shard_writer_class
    from synthgen.storage.codecs import codec_class

    out = recipe.output
    for field, find, name in (
        ("image_format", codec_class, out.image_format),
        ("writer", shard_writer_class, out.writer),
    ):
        try:
            find(name)
        except (KeyError, ValueError) as exc:
            raise RecipeError(f"output.{field}: {exc}") from None


def _check_watermark_survives(recipe: Recipe) -> None:
    """Images large enough carry the invisible watermark: it must survive the encoding."""
    out, w, h = recipe.output, recipe.sampling.width, recipe.sampling.height
    if can_carry(w, h) and not survives_encoding(out.image_format, out.quality, w, h):
        raise RecipeError(
            f"output.image_format {out.image_format} (quality {out.quality}): the invisible "
            f"watermark of {w}x{h} images does not survive this encoding, so the `watermark` "
            "check would reject every image; use `output.image_format: png`"
        )


def _warn_about_padding(recipe: Recipe) -> None:
    """Say so when most model work would go to padding (shards smaller than a model call)."""
    batch, shard = recipe.model.compute_batch, recipe.output.shard_size
    if shard < batch:
        wasted = 1 - shard / batch
        logger.warning(
            "output.shard_size %d is smaller than model.compute_batch %d: every shard is "
            "generated in fixed-shape calls of %d images, so about %.0f%% of the model work "
            "goes to padding; raise output.shard_size or lower model.compute_batch",
            shard,
            batch,
            batch,
            100 * wasted,
        )


def make_context(resolved: ResolvedRecipe, created_at: str) -> BuildContext:
    r = resolved.recipe
    index = json.loads((resolved.model_path / "model_index.json").read_text())
    device = r.model.device
    if device == "cpu":
        device = f"cpu:threads={r.model.cpu_threads}"
    # diffusers' private `_` keys are its bookkeeping, not settings: `_use_default_values` is
    # a list made from a set (its order follows PYTHONHASHSEED, and so would every shard's
    # bytes). Every setting is explicit in the public keys, which is what regenerating reads.
    scheduler = resolved.scheduler_config or check_model(r, resolved.model_path)[1]
    scheduler = {k: v for k, v in scheduler.items() if not k.startswith("_")}
    base = None if resolved.base_dir is None else str(resolved.base_dir)
    return BuildContext(
        recipe_name=r.name,
        recipe_hash=r.hash,
        # as the recipe wrote it (relative to its folder), else the folder's name: published
        model_path=public_path(r.model.path, base),
        model_sha256=folder_sha256(resolved.model_path),
        pipeline_class=str(index["_class_name"]),
        scheduler=r.sampling.scheduler,
        scheduler_config=canonical_json(scheduler),
        steps=r.sampling.steps,
        guidance_scale=r.sampling.guidance_scale,
        compute_batch=r.model.compute_batch,
        dtype=r.model.dtype,
        device=device,
        image_format=r.output.image_format,
        shard_writer=r.output.writer,
        image_encoding=canonical_json(
            {
                "format": r.output.image_format,
                "png_compress_level": r.output.png_compress_level,
                "quality": r.output.quality,
                "encoder": encoder_identity(r.output.image_format, r.output.png_compress_level),
            }
        ),
        scorers=canonical_json(scorer_provenance(resolved.scorers)),
        library_versions=canonical_json(library_versions()),
        generation_options=canonical_json(generation_settings(resolved).generation_options()),
        created_at=created_at,
        class_names=canonical_json({str(c.id): c.name for c in r.classes}),
        adapters=resolved.adapters,
        path_names=canonical_json(recipe_paths(r, resolved.base_dir)),
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
        variant=r.model.variant,
        offload=r.model.offload,
        vae_slicing=r.model.vae_slicing,
        vae_tiling=r.model.vae_tiling,
        max_sequence_length=r.sampling.max_sequence_length,
        timestep_spacing=r.sampling.timestep_spacing,
        timesteps=tuple(r.sampling.timesteps) if r.sampling.timesteps else None,
        eta=r.sampling.eta,
        pipeline_class=resolved.model.class_name if resolved.model else None,
        watermark=watermark_payload(r.hash).hex(),
        adapters=resolved.adapters,
        conditioning=resolved.conditioning,
        image_format=r.output.image_format,
        png_compress_level=r.output.png_compress_level,
        quality=r.output.quality,
        num_frames=r.sampling.num_frames,
        fps=r.sampling.fps,
        video_format=r.output.video_format,
    )
