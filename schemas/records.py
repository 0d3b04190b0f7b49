"""The sample record: one pyarrow schema for Parquet rows, tar `.json` provenance and readers.

Every column is declared exactly once, as a field of the record it comes from, with its
Arrow type in the field's metadata: the planned request (`GenerationRequest`), the generated
and checked sample (`Sample`), or the build-wide provenance every sample shares
(`BuildContext`). The Parquet schema, the provenance allow-list and the row builder are all
derived from those declarations; score columns come from the scorers' `ScoreColumn`s.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

from synthgen.schemas.scores import ScoreColumn

KEY_PATTERN = re.compile(r"^[a-z0-9_-]+$")

ACCEPTED = "accepted"
REJECTED = "rejected"

Score = float | tuple[float, ...]


def _column(
    arrow: pa.DataType, *, nullable: bool = False, provenance: bool = True, json_text: bool = False
) -> dict[str, Any]:
    """Field metadata making a dataclass field a Parquet column (with `provenance`, a `.json`
    sidecar field too; with `json_text`, canonical JSON text)."""
    return {"arrow": arrow, "nullable": nullable, "provenance": provenance, "json": json_text}


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces: equal values give equal text (and equal hashes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One planned sample: everything generation needs, nothing heavy."""

    key: str = field(metadata=_column(pa.string()))
    shard: int = field(metadata=_column(pa.int32()))
    index: int = field(metadata=_column(pa.int32()))
    class_label: int = field(metadata=_column(pa.int32()))
    class_name: str = field(metadata=_column(pa.string()))
    prompt: str = field(metadata=_column(pa.string()))
    negative_prompt: str = field(metadata=_column(pa.string()))
    seed: int = field(metadata=_column(pa.int64()))


@dataclass(frozen=True, slots=True)
class Sample:
    """A generated, scored and checked sample as it crosses from scoring to writing.

    Immutable: every step returns a changed copy (`dataclasses.replace`), never edits its
    input, because a PCollection may feed several consumers. `scores` maps a score column
    to a float, or to a tuple of floats for a fixed-size vector column.
    """

    request: GenerationRequest
    image: bytes  # encoded; Parquet keeps it (as `rejected_image`) for rejected samples only
    image_sha256: str = field(metadata=_column(pa.string()))
    width: int = field(metadata=_column(pa.int32()))
    height: int = field(metadata=_column(pa.int32()))
    phash: str = field(default="", metadata=_column(pa.string()))
    scores: dict[str, Score] = field(default_factory=dict)
    checks: dict[str, str] = field(
        default_factory=dict, metadata=_column(pa.string(), json_text=True)
    )
    status: str = field(default=ACCEPTED, metadata=_column(pa.string(), provenance=False))
    reject_reason: str | None = field(
        default=None, metadata=_column(pa.string(), nullable=True, provenance=False)
    )


@dataclass(frozen=True)
class BuildContext:
    """Provenance shared by every sample of a build (allow-listed fields only).

    Computed once by the driver and shipped small to every writer; the JSON fields hold
    canonical JSON text.
    """

    recipe_name: str = field(metadata=_column(pa.string()))
    recipe_hash: str = field(metadata=_column(pa.string()))
    model_path: str = field(metadata=_column(pa.string()))
    model_sha256: str = field(metadata=_column(pa.string()))
    pipeline_class: str = field(metadata=_column(pa.string()))
    scheduler: str = field(metadata=_column(pa.string()))
    scheduler_config: str = field(metadata=_column(pa.string(), json_text=True))
    steps: int = field(metadata=_column(pa.int32()))
    guidance_scale: float = field(metadata=_column(pa.float64()))
    compute_batch: int = field(metadata=_column(pa.int32()))
    dtype: str = field(metadata=_column(pa.string()))
    device: str = field(metadata=_column(pa.string()))
    image_format: str = field(metadata=_column(pa.string()))
    # {"format", "png_compress_level", "quality"}
    image_encoding: str = field(metadata=_column(pa.string(), json_text=True))
    # [{"name", "version", "model", "sha256", "library", "columns"}]: one per scorer
    scorers: str = field(metadata=_column(pa.string(), json_text=True))
    library_versions: str = field(metadata=_column(pa.string(), json_text=True))
    # generation options beyond the classic ones (variant, VAE slicing/tiling, sequence length)
    generation_options: str = field(metadata=_column(pa.string(), json_text=True))
    created_at: str = field(metadata=_column(pa.string()))  # ISO-8601 UTC: the start of the build


Origin = Literal["request", "sample", "build"]


@dataclass(frozen=True)
class RecordField:
    """One base column of the sample record, derived from the declarations above."""

    name: str
    arrow: pa.DataType
    origin: Origin
    nullable: bool
    provenance: bool
    json_text: bool

    def arrow_field(self) -> pa.Field:
        return pa.field(self.name, self.arrow, nullable=self.nullable)


def _record_fields() -> tuple[RecordField, ...]:
    sources: tuple[tuple[Origin, type], ...] = (
        ("request", GenerationRequest),
        ("sample", Sample),
        ("build", BuildContext),
    )
    out = []
    for origin, cls in sources:
        for f in dataclasses.fields(cls):
            if "arrow" in f.metadata:
                m = f.metadata
                out.append(
                    RecordField(
                        f.name, m["arrow"], origin, m["nullable"], m["provenance"], m["json"]
                    )
                )
    return tuple(out)


RECORD_FIELDS: tuple[RecordField, ...] = _record_fields()

# Provenance is an allow-list: these fields and nothing else reach the `.json` sidecar.
PROVENANCE_FIELDS: tuple[str, ...] = tuple(f.name for f in RECORD_FIELDS if f.provenance)
JSON_FIELDS: tuple[str, ...] = tuple(f.name for f in RECORD_FIELDS if f.json_text)
BUILD_FIELDS: tuple[str, ...] = tuple(f.name for f in RECORD_FIELDS if f.origin == "build")

# Encoded image of a rejected sample (accepted images live in the tar; this is null for them).
REJECT_IMAGE_FIELD = pa.field("rejected_image", pa.binary())


def score_field(column: ScoreColumn) -> pa.Field:
    """A scalar column is float32; a vector column is a fixed-size list of float32."""
    if column.dim is None:
        return pa.field(column.name, pa.float32())
    return pa.field(column.name, pa.list_(pa.float32(), column.dim))


def sample_schema(columns: Sequence[ScoreColumn]) -> pa.Schema:
    """The Parquet schema of a build: base fields, score columns by name, rejected image last."""
    scores = [score_field(c) for c in sorted(columns, key=lambda c: c.name)]
    return pa.schema([*(f.arrow_field() for f in RECORD_FIELDS), *scores, REJECT_IMAGE_FIELD])


def sample_row(sample: Sample, ctx: BuildContext, columns: Sequence[ScoreColumn]) -> dict[str, Any]:
    """The Parquet row of a sample (see `sample_schema`); a missing score is null."""
    sources: dict[Origin, Any] = {"request": sample.request, "sample": sample, "build": ctx}
    row: dict[str, Any] = {}
    for f in RECORD_FIELDS:
        value = getattr(sources[f.origin], f.name)
        row[f.name] = canonical_json(value) if f.json_text and not isinstance(value, str) else value
    for c in columns:
        value = sample.scores.get(c.name)
        row[c.name] = list(value) if isinstance(value, tuple) else value
    row[REJECT_IMAGE_FIELD.name] = None if sample.status == ACCEPTED else sample.image
    return row


def provenance_from_row(
    row: Mapping[str, object], columns: Sequence[ScoreColumn]
) -> dict[str, object]:
    """The `.json` sidecar of a sample: allow-listed fields (nested JSON decoded) and scores.

    Only scalar scores are included: vector columns (embeddings) stay in the Parquet, so a
    sidecar stays small and readable.
    """
    out: dict[str, object] = {}
    for name in PROVENANCE_FIELDS:
        value = row[name]
        out[name] = json.loads(value) if name in JSON_FIELDS and isinstance(value, str) else value
    out["scores"] = {c.name: row.get(c.name) for c in columns if not c.is_vector}
    return out


@dataclass(frozen=True, slots=True)
class SampleFeatures:
    """What build-wide checks need of a sample: small, also read back from reused shards.

    `scores` holds the scalar score columns only.
    """

    key: str
    class_label: int
    image_sha256: str
    phash: str
    scores: dict[str, float]


def sample_features(sample: Sample) -> SampleFeatures:
    return SampleFeatures(
        key=sample.request.key,
        class_label=sample.request.class_label,
        image_sha256=sample.image_sha256,
        phash=sample.phash,
        scores={k: v for k, v in sample.scores.items() if not isinstance(v, tuple)},
    )
