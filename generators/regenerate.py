"""Rebuild one sample from its provenance record alone (promise 5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synthgen.generators.handler import GenerationSettings, generate_batch
from synthgen.generators.model_folder import ModelFolderError, load_pipeline
from synthgen.generators.provenance_bounds import check_provenance_bounds
from synthgen.schemas.records import GenerationRequest
from synthgen.storage.hashing import folder_sha256


def _loads(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


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
    sched = dict(_loads(prov["scheduler_config"]))
    sched["_class_name"] = sched.pop("class")
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
    )
    return generate_batch(pipe, settings, [request])[0].image
