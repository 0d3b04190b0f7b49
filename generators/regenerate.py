"""Rebuild one sample from its provenance record alone (promise 5).

The record is a tar `.json` sidecar (full provenance), or a Parquet row merged with the build
constants its file carries (`find_provenance`): rows keep only what varies per sample.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any

from synthgen.generators.conditioning import conditioning_from_provenance
from synthgen.generators.handler import GenerationSettings, generate_batch
from synthgen.generators.model_folder import ModelFolderError, load_pipeline
from synthgen.generators.provenance_bounds import check_provenance_bounds
from synthgen.schemas.records import (
    REJECT_IMAGE_FIELD,
    GenerationRequest,
    canonical_json,
    provenance_from_row,
    read_build_constants,
)
from synthgen.storage.hashing import folder_sha256
from synthgen.storage.watermark import watermark_payload


def _loads(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _optional(kind: Any, value: Any) -> Any:
    return None if value is None else kind(value)


def _slots_json(value: Any) -> str | None:
    return None if value is None else canonical_json(_loads(value))


class ProvenanceNotFound(ValueError):
    """A build directory holds no single provenance record for a key."""


def find_provenance(build_dir: Path, key: str) -> dict[str, Any]:
    """The full provenance of `key` in a build directory: its Parquet row (rejected samples
    included) merged with the build constants in that file's `synthgen` metadata."""
    import pyarrow.parquet as pq

    # shard files only (`{shard:05d}.parquet`): not balanced.parquet, which also has keys
    files = sorted(p for p in build_dir.glob("*.parquet") if p.stem.isdigit())
    if not files:
        raise ProvenanceNotFound(f"{build_dir}: no Parquet shards")
    found: list[dict[str, Any]] = []
    for path in files:
        pf = pq.ParquetFile(path)
        names = [n for n in pf.schema_arrow.names if n != REJECT_IMAGE_FIELD.name]
        table = pq.read_table(path, columns=names, filters=[("key", "=", key)])
        if table.num_rows:
            constants = read_build_constants(pf.schema_arrow)
            for row in table.to_pylist():
                found.append(provenance_from_row(row, [], constants) | {"_file": path.name})
    if len(found) != 1:
        raise ProvenanceNotFound(f"{build_dir}: key {key!r} found {len(found)} times")
    prov = found[0]
    prov.pop("_file")
    return prov


def _restore_non_finite(cls: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Strict JSON records a non-finite float as null: where the scheduler's own default is
    non-finite (e.g. `lambda_min_clipped = -inf`) and the record says null, use the default."""
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return config
    out = dict(config)
    for name, value in config.items():
        default = params[name].default if name in params else None
        if value is None and isinstance(default, float) and not math.isfinite(default):
            out[name] = default
    return out


def settings_from_provenance(prov: dict[str, Any]) -> GenerationSettings:
    device, _, threads = str(prov["device"]).partition(":threads=")
    encoding = _loads(prov["image_encoding"])
    # Options beyond the classic ones; absent from older records (then: the defaults).
    options = _loads(prov.get("generation_options") or {}) or {}
    # A tampered record cannot ask for unbounded work: the recipe schema's own limits.
    check_provenance_bounds(prov)
    compute_batch, steps = int(prov["compute_batch"]), int(prov["steps"])
    return GenerationSettings(
        model_path=str(prov["model_path"]),
        pipeline_class=str(prov["pipeline_class"]),
        watermark=watermark_payload(str(prov["recipe_hash"])).hex(),
        scheduler=str(prov["scheduler"]),
        steps=steps,
        guidance_scale=float(prov["guidance_scale"]),
        height=int(prov["height"]),
        width=int(prov["width"]),
        dtype=str(prov["dtype"]),
        device=device,
        compute_batch=compute_batch,
        cpu_threads=int(threads) if threads else 1,
        image_format=str(encoding["format"]),
        png_compress_level=int(encoding["png_compress_level"]),
        quality=int(encoding["quality"]),
        variant=options.get("variant"),
        vae_slicing=bool(options.get("vae_slicing", False)),
        vae_tiling=bool(options.get("vae_tiling", False)),
        max_sequence_length=options.get("max_sequence_length"),
        adapters=canonical_json(_loads(prov.get("adapters") or {}) or {}),
        conditioning=conditioning_from_provenance(prov),
    )


def regenerate(prov: dict[str, Any]) -> bytes:
    """The encoded image the provenance describes. The model folder must be the same content.

    The sampler is rebuilt from the recorded effective scheduler config (class included),
    so `native` and named schedulers regenerate alike.
    """
    from synthgen.generators.model_folder import make_scheduler

    settings = settings_from_provenance(prov)
    model_path = Path(settings.model_path)
    if folder_sha256(model_path) != prov["model_sha256"]:
        raise ModelFolderError(
            f"{model_path}: the model folder's content differs from the one that made "
            f"{prov['key']} (sha256 {str(prov['model_sha256'])[:12]})"
        )
    pipe = load_pipeline(
        model_path,
        "native",
        settings.dtype,
        settings.device,
        settings.cpu_threads,
        variant=settings.variant,
        vae_slicing=settings.vae_slicing,
        vae_tiling=settings.vae_tiling,
    )
    from synthgen.generators.adapters import apply_adapters

    pipe = apply_adapters(pipe, settings.adapters)  # each file's sha256 checked first
    import diffusers

    sched = dict(_loads(prov["scheduler_config"]))
    sched["_class_name"] = sched.pop("class")
    cls = getattr(diffusers, str(sched["_class_name"]), None)
    if cls is not None:
        sched = _restore_non_finite(cls, sched)
    pipe.scheduler = make_scheduler("native", sched)
    request = GenerationRequest(
        key=str(prov["key"]),
        shard=int(prov["shard"]),
        index=int(prov["index"]),
        class_label=int(prov["class_label"]),
        class_name=str(prov["class_name"]),
        prompt=str(prov["prompt"]),
        negative_prompt=str(prov["negative_prompt"]),
        seed=int(prov["seed"]),
        # resolved per sample (templates, per-class settings); absent from older records
        prompt_template=prov.get("prompt_template"),
        prompt_slots=_slots_json(prov.get("prompt_slots")),
        sample_steps=_optional(int, prov.get("sample_steps")),
        sample_guidance_scale=_optional(float, prov.get("sample_guidance_scale")),
        # image conditioning: mode, source image (reference + sha256) and settings
        conditioning_mode=prov.get("conditioning_mode"),
        conditioning_source=prov.get("conditioning_source"),
        conditioning_source_sha256=prov.get("conditioning_source_sha256"),
        conditioning=_slots_json(prov.get("conditioning")),
    )
    return generate_batch(pipe, settings, [request])[0].image
