"""Rebuild one sample from its provenance record alone (promise 5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synthgen.generators.handler import GenerationSettings, generate_batch
from synthgen.generators.model_folder import ModelFolderError, load_pipeline
from synthgen.schemas.records import GenerationRequest
from synthgen.storage.hashing import folder_sha256


def _loads(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def settings_from_provenance(prov: dict[str, Any]) -> GenerationSettings:
    device, _, threads = str(prov["device"]).partition(":threads=")
    encoding = _loads(prov["image_encoding"])
    return GenerationSettings(
        model_path=str(prov["model_path"]),
        scheduler=str(prov["scheduler"]),
        steps=int(prov["steps"]),
        guidance_scale=float(prov["guidance_scale"]),
        height=int(prov["height"]),
        width=int(prov["width"]),
        dtype=str(prov["dtype"]),
        device=device,
        compute_batch=int(prov["compute_batch"]),
        cpu_threads=int(threads) if threads else 1,
        image_format=str(encoding["format"]),
        png_compress_level=int(encoding["png_compress_level"]),
        quality=int(encoding["quality"]),
    )


def regenerate(prov: dict[str, Any]) -> bytes:
    """The encoded image the provenance describes. The model folder must be the same content."""
    import diffusers

    settings = settings_from_provenance(prov)
    model_path = Path(settings.model_path)
    if folder_sha256(model_path) != prov["model_sha256"]:
        raise ModelFolderError(
            f"{model_path}: the model folder's content differs from the one that made "
            f"{prov['key']} (sha256 {str(prov['model_sha256'])[:12]})"
        )
    pipe = load_pipeline(
        model_path, settings.scheduler, settings.dtype, settings.device, settings.cpu_threads
    )
    sched = dict(_loads(prov["scheduler_config"]))
    pipe.scheduler = getattr(diffusers, sched.pop("class")).from_config(sched)
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
