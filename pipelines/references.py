"""Reference and eval sets on the driver, before the pipeline: each opened and checked, then
embedded once with the scorers' own CLIP model into a cache file the workers read
(`validators.nearest`); the manifest's metrics against the reference."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from synthgen.schemas.recipe import Recipe, RecipeError
from synthgen.schemas.scores import IMAGE_EMBEDDING, ScoreColumn
from synthgen.validators.build_checks import uses_embeddings
from synthgen.validators.nearest import ReferenceSet, read_reference


def _source_sha256(location: str) -> str:
    import hashlib

    from synthgen.generators.sources.webdataset_source import expand_pattern
    from synthgen.storage.hashing import file_sha256, folder_sha256

    path = Path(location)
    if path.is_file():
        return file_sha256(path)
    if path.is_dir():  # an image folder: every file counts (not only model files)
        return folder_sha256(path, ("*",))
    h = hashlib.sha256()
    for url in expand_pattern(location):
        h.update(file_sha256(Path(url)).encode())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class ReferenceInput:
    """A reference or eval set as the driver opens it: checked, nothing read yet."""

    kind: str  # reference | eval_set
    location: str  # resolved path or shard pattern
    spec: Any  # the labelled-source block: format, label_column, image_column, label_type
    max_images: int


def reference_inputs(
    recipe: Recipe, base_dir: Path | None, columns: Sequence[ScoreColumn]
) -> list[ReferenceInput]:
    """The build's reference (its own, else its balance source when the scorers' `columns`
    hold image embeddings) and eval set, each opened once to check it exists and is readable
    (SourceError naming it); nothing is written."""
    from synthgen.generators.sources.open import SourceOptions, open_source
    from synthgen.pipelines.remote import source_location

    embeds = uses_embeddings(columns)
    if (recipe.reference is not None or recipe.eval_set is not None) and not embeds:
        raise RecipeError(
            "reference / eval_set: comparing with real images needs stored embeddings; add "
            "`{name: clip_embedding}` to scoring.scorers"
        )
    base = base_dir or Path.cwd()
    out = []
    for kind in ("reference", "eval_set"):
        found = _set_spec(recipe, kind, embeds)
        if found is None:
            continue
        spec, max_images = found
        location = source_location(base, spec.source)
        open_source(location, SourceOptions.of(spec))
        out.append(ReferenceInput(kind, location, spec, max_images))
    return out


def _set_spec(recipe: Recipe, kind: str, embeds: bool) -> tuple[Any, int] | None:
    """The labelled-source block and image limit of the build's `kind` set (the recipe's
    `reference` / `eval_set`, else for `reference` its balance source when it stores
    embeddings)."""
    spec = getattr(recipe, kind)
    if spec is None:
        if kind == "reference" and recipe.balance is not None and embeds:
            return recipe.balance, 10_000_000
        return None
    return spec, spec.max_images


def prepare_reference(
    recipe: Recipe,
    ref: ReferenceInput,
    clip: Any,
    cache_dir: Path,
    device: str = "cpu",
    models: Any = None,
) -> Path:
    """The embedded set's cache file under `cache_dir` (made once per source content, CLIP
    weights and class mapping; later builds and rounds read it). `models`: the caller's
    WorkerModels, where it keeps the CLIP model loaded for more work (else one for this)."""
    import itertools

    from synthgen.generators.sources.base import PixelLimit
    from synthgen.generators.sources.open import SourceOptions, label_resolver, open_source
    from synthgen.validators.nearest import (
        cache_key,
        cached_reference,
        clip_encoder,
        embed_reference,
    )

    resolve = label_resolver(recipe, ref.spec.label_type)
    mapping = {c.name: c.id for c in recipe.classes}
    key = cache_key(
        _source_sha256(ref.location),
        clip.sha256,
        {
            "classes": mapping,
            "label_type": ref.spec.label_type,
            "max": ref.max_images,
            # the embedding's batch shape and device change its float rounding
            "encoder": {"compute_batch": clip.compute_batch, "device": device},
        },
    )

    def make() -> ReferenceSet:
        s = recipe.sampling  # images declaring far more pixels are refused undecoded
        source = open_source(
            ref.location, SourceOptions.of(ref.spec), PixelLimit(s.width, s.height)
        )
        items = (
            (image.reference, cid, image.data)
            for image in source.iter_images()  # labels and bytes from one walk, each checked
            if (cid := resolve(image.label)) is not None
        )
        encode = clip_encoder(clip, device, recipe.model.cpu_threads, models)
        return embed_reference(itertools.islice(items, ref.max_images), encode)

    return cached_reference(cache_dir, ref.kind, key, make)


def prepare_references(
    resolved: Any, inputs: Sequence[ReferenceInput], out: Path, models: Any = None
) -> dict[str, str]:
    """kind -> the embedded set's cache file, under the build's `.synthgen/` (made once),
    embedded by the scorer that writes the image embeddings (its CLIP copy loaded into
    `models`, the session's WorkerModels, or one for these sets)."""
    from synthgen.schemas.manifest import STATE_DIR

    if not inputs:
        return {}
    from synthgen.validators.scorers.base import WorkerModels

    clip = embedding_encoder(resolved.scorers)
    m = resolved.recipe.model
    cache = out / STATE_DIR / "references"
    if models is None:
        models = WorkerModels(m.device, m.cpu_threads)  # one CLIP copy for every set made
    return {
        ref.kind: str(prepare_reference(resolved.recipe, ref, clip, cache, m.device, models))
        for ref in inputs
    }


def embedding_encoder(scorers: Sequence[Any]) -> Any:
    """The CLIP model (a ClipRef) of the scorer writing the image-embedding column: a
    reference set is embedded exactly as the samples are."""
    for scorer in scorers:
        if any(c.is_vector and c.role == IMAGE_EMBEDDING for c in scorer.columns()):
            clip = getattr(scorer, "clip", None)
            if clip is not None:
                return clip
    raise RecipeError("reference / eval_set: add the `clip_embedding` scorer to scoring.scorers")


def with_metrics(
    manifest: Any,
    out: Path,
    recipe: Recipe,
    inputs: Sequence[ReferenceInput],
    paths: dict[str, str],
) -> Any:
    """The manifest with its metrics block (accepted samples against the reference)."""
    from synthgen.validators.build_checks import embedding_column
    from synthgen.validators.metrics import metrics_info

    column = embedding_column(manifest.score_columns)
    path = paths.get("reference")
    if path is None or column is None:
        return manifest
    location = next(r.location for r in inputs if r.kind == "reference")
    info = metrics_info(
        out,
        manifest.shard_ids,
        column,
        read_reference(Path(path)),
        {c.id: c.name for c in recipe.classes},
        location,
        os.path.relpath(path, out),
    )
    return manifest.model_copy(update={"metrics": info})
