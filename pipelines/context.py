"""Build-wide provenance: computed once by the driver, shipped small to every writer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from synthgen.schemas.records import Sample

TRACKED_LIBRARIES = (
    "synthgen",
    "torch",
    "diffusers",
    "transformers",
    "open_clip_torch",
    "apache-beam",
    "pyarrow",
    "webdataset",
    "numpy",
    "pillow",
)


def library_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in TRACKED_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass(frozen=True)
class BuildContext:
    """Provenance shared by every sample of a build (allow-listed fields only)."""

    recipe_name: str
    recipe_hash: str
    model_path: str
    model_sha256: str
    pipeline_class: str
    scheduler: str
    scheduler_config: str  # canonical JSON
    steps: int
    guidance_scale: float
    compute_batch: int
    dtype: str
    device: str
    image_format: str
    image_encoding: str  # canonical JSON: {"format", "png_compress_level", "quality"}
    scorers: str  # canonical JSON list of {"name", "column", "sha256", "version"}
    library_versions: str  # canonical JSON
    created_at: str  # ISO-8601 UTC: the start of the build that made the sample

    def row(self, sample: Sample, score_columns: tuple[str, ...]) -> dict[str, Any]:
        """The Parquet row (and, minus status fields, the provenance JSON) of a sample."""
        r = sample.request
        row: dict[str, Any] = {
            "key": r.key,
            "shard": r.shard,
            "index": r.index,
            "status": sample.status,
            "reject_reason": sample.reject_reason,
            "class_label": r.class_label,
            "class_name": r.class_name,
            "prompt": r.prompt,
            "negative_prompt": r.negative_prompt,
            "seed": r.seed,
            "image_sha256": sample.image_sha256,
            "phash": sample.phash,
            "image_format": self.image_format,
            "image_encoding": self.image_encoding,
            "width": sample.width,
            "height": sample.height,
            "recipe_name": self.recipe_name,
            "recipe_hash": self.recipe_hash,
            "model_path": self.model_path,
            "model_sha256": self.model_sha256,
            "pipeline_class": self.pipeline_class,
            "scheduler": self.scheduler,
            "scheduler_config": self.scheduler_config,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "compute_batch": self.compute_batch,
            "dtype": self.dtype,
            "device": self.device,
            "scorers": self.scorers,
            "checks": canonical_json(sample.checks),
            "library_versions": self.library_versions,
            "created_at": self.created_at,
        }
        for column in score_columns:
            row[column] = sample.scores.get(column)
        return row


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
