"""The sample record: one pyarrow schema for Parquet rows, tar `.json` provenance and readers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa

KEY_PATTERN = re.compile(r"^[a-z0-9_-]+$")

ACCEPTED = "accepted"
REJECTED = "rejected"

# Provenance is an allow-list: these fields and nothing else reach the `.json` sidecar.
PROVENANCE_FIELDS: tuple[str, ...] = (
    "key",
    "shard",
    "index",
    "class_label",
    "class_name",
    "prompt",
    "negative_prompt",
    "seed",
    "image_sha256",
    "phash",
    "image_format",
    "image_encoding",
    "width",
    "height",
    "recipe_name",
    "recipe_hash",
    "model_path",
    "model_sha256",
    "pipeline_class",
    "scheduler",
    "scheduler_config",
    "steps",
    "guidance_scale",
    "compute_batch",
    "dtype",
    "device",
    "scorers",
    "checks",
    "library_versions",
    "created_at",
)

_BASE_FIELDS: list[pa.Field] = [
    pa.field("key", pa.string(), nullable=False),
    pa.field("shard", pa.int32(), nullable=False),
    pa.field("index", pa.int32(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("reject_reason", pa.string()),
    pa.field("class_label", pa.int32(), nullable=False),
    pa.field("class_name", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("negative_prompt", pa.string(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("image_sha256", pa.string(), nullable=False),
    pa.field("phash", pa.string(), nullable=False),
    pa.field("image_format", pa.string(), nullable=False),
    pa.field("image_encoding", pa.string(), nullable=False),  # JSON
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("recipe_name", pa.string(), nullable=False),
    pa.field("recipe_hash", pa.string(), nullable=False),
    pa.field("model_path", pa.string(), nullable=False),
    pa.field("model_sha256", pa.string(), nullable=False),
    pa.field("pipeline_class", pa.string(), nullable=False),
    pa.field("scheduler", pa.string(), nullable=False),
    pa.field("scheduler_config", pa.string(), nullable=False),  # JSON
    pa.field("steps", pa.int32(), nullable=False),
    pa.field("guidance_scale", pa.float64(), nullable=False),
    pa.field("compute_batch", pa.int32(), nullable=False),
    pa.field("dtype", pa.string(), nullable=False),
    pa.field("device", pa.string(), nullable=False),
    pa.field("scorers", pa.string(), nullable=False),  # JSON: [{"name", "version", "column"}]
    pa.field("checks", pa.string(), nullable=False),  # JSON: {check_name: "pass" | reason}
    pa.field("library_versions", pa.string(), nullable=False),  # JSON
    pa.field("created_at", pa.string(), nullable=False),  # ISO-8601 UTC, the build's start
]

# Encoded image of a rejected sample (accepted images live in the tar; this is null for them).
REJECT_IMAGE_FIELD = pa.field("rejected_image", pa.binary())


def score_column(model_name: str) -> str:
    """Column name for a CLIP score: `clip_<model>_score`, model name made identifier-safe."""
    safe = re.sub(r"[^a-z0-9]+", "_", model_name.lower()).strip("_")
    return f"clip_{safe}_score"


def sample_schema(score_columns: list[str] | tuple[str, ...]) -> pa.Schema:
    """The Parquet schema of a build: base fields, one float column per score, reject image."""
    scores = [pa.field(c, pa.float32()) for c in sorted(score_columns)]
    return pa.schema([*_BASE_FIELDS, *scores, REJECT_IMAGE_FIELD])


@dataclass(frozen=True, slots=True)
class SampleFeatures:
    """What build-wide checks need of a sample: small, also read back from reused shards."""

    key: str
    class_label: int
    image_sha256: str
    phash: str
    scores: dict[str, float]


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One planned sample: everything generation needs, nothing heavy."""

    key: str
    shard: int
    index: int
    class_label: int
    class_name: str
    prompt: str
    negative_prompt: str
    seed: int


@dataclass(slots=True)
class Sample:
    """A generated, scored and checked sample as it crosses from scoring to writing."""

    request: GenerationRequest
    image: bytes
    image_sha256: str
    width: int
    height: int
    phash: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    checks: dict[str, str] = field(default_factory=dict)
    status: str = ACCEPTED
    reject_reason: str | None = None


JSON_FIELDS = ("scheduler_config", "scorers", "checks", "library_versions", "image_encoding")


def provenance_from_row(
    row: dict[str, object], score_columns: tuple[str, ...]
) -> dict[str, object]:
    """The `.json` sidecar of a sample: allow-listed fields, nested JSON decoded, plus scores."""
    import json

    out: dict[str, object] = {}
    for name in PROVENANCE_FIELDS:
        value = row[name]
        out[name] = json.loads(value) if name in JSON_FIELDS and isinstance(value, str) else value
    out["scores"] = {c: row.get(c) for c in score_columns}
    return out
