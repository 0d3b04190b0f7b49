"""The bodies of `synthgen validate DIR --reference SRC` and `synthgen report DIR
--reference SRC`: a finished build compared with a set of real images, nothing rebuilt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthgen.pipelines.references import (
    ReferenceInput,
    prepare_reference,
    reference_inputs,
    with_metrics,
)
from synthgen.validators.build_checks import embedding_column
from synthgen.validators.expectations import metric_gate_results
from synthgen.validators.nearest import read_reference


def reference_for_build(out: Path, manifest: Any, source: str, clip_model: str | None) -> Path:
    """`--reference SRC` on a finished build: SRC embedded with the build's own CLIP model
    (its folder from `clip_model`, else the recipe's path from the current directory; its
    weights must match the build's) and cached under the build's `.synthgen/references/`."""
    from synthgen.schemas.manifest import STATE_DIR
    from synthgen.schemas.recipe import recipe_from_dict
    from synthgen.validators.clip_model import clip_ref

    recipe = recipe_from_dict(manifest.recipe, "manifest.json")
    if clip_model is not None:
        scoring = recipe.scoring.model_copy(update={"clip_model": str(Path(clip_model).resolve())})
        recipe = recipe.model_copy(update={"scoring": scoring})
    clip = clip_ref(recipe, Path.cwd())
    built = _embedding_weights(manifest)
    if not built:
        raise ValueError(f"{out}: the build stored no image embeddings (no clip_embedding scorer)")
    if clip.sha256 not in built:
        raise ValueError(
            f"{clip.path}: CLIP weights differ from the build's (sha256 {clip.sha256[:12]}); "
            "pass the build's model with --clip-model"
        )
    only = {
        "reference": _reference_spec(source, recipe.reference),
        "balance": None,
        "eval_set": None,
    }
    inputs = reference_inputs(recipe.model_copy(update=only), None, manifest.score_columns)
    return Path(prepare_reference(recipe, inputs[0], clip, out / STATE_DIR / "references"))


def _embedding_weights(manifest: Any) -> set[str]:
    """The weights sha256 of the scorer that wrote the build's image-embedding column."""
    columns = manifest.score_columns
    scorer = next((c.scorer for c in columns if c.name == embedding_column(columns)), None)
    return {
        str(s["sha256"]) for s in manifest.scorers if s.get("name") == scorer and s.get("sha256")
    }


def _reference_spec(source: str, spec: Any) -> Any:
    """A `reference:` block for `source`, keeping the recipe's label settings if it has some."""
    from synthgen.schemas.recipe import ReferenceSpec

    if spec is None:
        return ReferenceSpec(source=str(Path(source).resolve()))
    return spec.model_copy(update={"source": str(Path(source).resolve())})


def check_against_reference(
    out: Path, source: str, clip_model: str | None = None
) -> tuple[list[str], list[Any]]:
    """`synthgen validate DIR --reference SRC`: (failures, expectation results).

    Every accepted sample whose nearest SRC image is a near copy by the recipe's
    `checks.near_copy` rule (default: cosine similarity >= 0.95) is a failure naming both;
    the recipe's metric gates are evaluated against SRC. Nothing in the build is rewritten."""
    from synthgen.schemas.recipe import NearCopySpec, recipe_from_dict
    from synthgen.validators.corpus import read_manifest
    from synthgen.validators.nearest import build_nearest, near_copies

    manifest = read_manifest(out)
    recipe = recipe_from_dict(manifest.recipe, "manifest.json")
    path = reference_for_build(out, manifest, source, clip_model)
    column = embedding_column(manifest.score_columns)
    assert column is not None  # reference_for_build checked the scorer
    ref = read_reference(path)
    spec = recipe.checks.near_copy or NearCopySpec()
    failures = [
        f"near_copy: {r['key']} ({r['class_name']}) is a near copy of {r['nearest_ref']} "
        f"(similarity {r['similarity']:.4f}, phash distance {r['phash_distance']})"
        for r in near_copies(build_nearest(out, manifest.shard_ids, column, ref), spec)
    ]
    inputs = [ReferenceInput("reference", str(Path(source).resolve()), None, 0)]
    measured = with_metrics(manifest, out, recipe, inputs, {"reference": str(path)})
    return failures, metric_gate_results(measured, recipe)
