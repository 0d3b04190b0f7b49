"""The sample record: one pyarrow schema for Parquet rows, tar `.json` provenance and readers.

Every field is declared exactly once, as a field of the record it comes from, with its
Arrow type in the field's metadata: the planned request (`GenerationRequest`), the generated
and checked sample (`Sample`), or the build-wide provenance every sample shares
(`BuildContext`). The Parquet schema, the provenance allow-list and the row builder are all
derived from those declarations; score columns come from the scorers' `ScoreColumn`s.

Parquet rows keep what varies from sample to sample (`row=True`); build-wide constants
(model, scheduler config, versions, ...) are written once, in the Parquet file's key-value
metadata under `synthgen` (and in the manifest), never repeated per row. The tar `.json`
sidecar keeps the full provenance of its sample, so a sample can be regenerated from it alone.
The Parquet schema also carries Hugging Face `datasets` features (`huggingface` metadata):
`class_label` is a `ClassLabel` with the build's class names.
A video build's rows (and sidecars) have four columns more, after the base ones: `frames`,
`fps`, `duration_s` and `codec` (`VIDEO_COLUMNS`); an image build's schema is as it was.
JSON written anywhere is strict: a non-finite float (NaN, +-Infinity) is written as null.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import posixpath
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import pyarrow as pa

from synthgen.schemas.media import Media, extension_of, is_video_format
from synthgen.schemas.scores import ScoreColumn

KEY_PATTERN = re.compile(r"^[a-z0-9_-]+$")

ACCEPTED = "accepted"
REJECTED = "rejected"
# An exception while generating, scoring or encoding the sample: no image, a final decision.
FAILED = "failed"

Score = float | tuple[float, ...]

# The Parquet layout of a shard: its name and version sit in every file's `synthgen` metadata.
# Version 3: build-wide constants moved from the rows into file metadata, `checks` a list of
# {name, outcome} structs, `created_at` a UTC timestamp, Hugging Face feature metadata.
# Version 4: `status` may be `failed` (reason `error:<ExceptionType>`), `error_message` column.
SCHEMA_NAME = "synthgen.sample"
SCHEMA_VERSION = 4
SYNTHGEN_METADATA_KEY = b"synthgen"
HF_METADATA_KEY = b"huggingface"

CHECKS_TYPE = pa.list_(pa.struct([("name", pa.string()), ("outcome", pa.string())]))
TIMESTAMP_TYPE = pa.timestamp("ms", tz="UTC")


def _column(
    arrow: pa.DataType,
    *,
    nullable: bool = False,
    provenance: bool = True,
    json_text: bool = False,
    row: bool = True,
) -> dict[str, Any]:
    """Field metadata declaring a record field: with `row`, a Parquet column (else a build-wide
    constant kept in file metadata); with `provenance`, a `.json` sidecar field; with
    `json_text`, canonical JSON text."""
    return {
        "arrow": arrow,
        "nullable": nullable,
        "provenance": provenance,
        "json": json_text,
        "row": row,
    }


def finite(value: Any) -> Any:
    """`value` with every non-finite float (NaN, +-Infinity) replaced by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def strict_json(value: Any, **kwargs: Any) -> str:
    """JSON any strict parser accepts: non-finite floats become null (`finite`)."""
    return json.dumps(finite(value), allow_nan=False, default=str, **kwargs)


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, strict (non-finite floats as null): equal values give equal
    text (and equal hashes)."""
    return strict_json(value, sort_keys=True, separators=(",", ":"))


# -- paths in published files ----------------------------------------------------------------
# Published files (tar sidecars, Parquet, manifest, report, dataset card) never carry a path of
# the machine that made the build: a home directory and a user name would travel with every
# corpus. A path the recipe wrote relative to its folder is recorded as written; an absolute
# one (or a `--set` path, made absolute from the current directory) by its last segment, the
# folder's or file's name. The sha256 recorded beside it says which content it was.
# Private files (`.synthgen/` state, staging, caches, logs) keep local paths.

# Recipe fields (by their last key) that name a local file, folder or source.
PATH_KEYS = frozenset(
    {"path", "source", "clip_model", "mask", "mask_folder", "image", "cert_chain", "key"}
)


def _is_local_absolute(value: str) -> bool:
    return value.startswith(("/", "~", "file://"))


def public_path(value: str, base_dir: str | None = None) -> str:
    """How a published file records the path `value` (as written or resolved).

    A URL other than `file://` is kept (a store location names no machine); an absolute
    path, `~/...` or `file://...` becomes its last segment; a relative one is kept as
    written, unless it climbs up to the root from `base_dir` (the folder it is relative
    to), which would spell out the folders from the root down: then its last segment too."""
    if "://" in value and not value.startswith("file://"):
        return value
    text = value.removeprefix("file://")
    parts = [p for p in posixpath.normpath(text).split("/") if p not in ("", ".")]
    name = parts[-1] if parts else "."
    if _is_local_absolute(value):
        return "." if name in ("~", "..") else name
    if base_dir is not None:
        ups = next((i for i, p in enumerate(parts) if p != ".."), len(parts))
        if ups and ups >= len([p for p in base_dir.split("/") if p]):
            return name
    return value


def public_reference(ref: str) -> str:
    """A source image's reference as published: `shard.tar#key` (a WebDataset shard by its
    name), `file.parquet#row=N` and folder-relative paths as they are."""
    head, sep, tail = ref.partition("#")
    if sep and _is_local_absolute(head):
        return f"{public_path(head)}#{tail}"
    return public_path(ref) if _is_local_absolute(ref) else ref


def public_json(value: Any, names: Mapping[str, str] | None = None) -> Any:
    """`value` (decoded JSON: conditioning settings, an adapter table) with every local path
    as published: one `names` knows (resolved path -> as the recipe wrote it) by that name,
    any other absolute one by its last segment (`public_path`, `public_reference`)."""
    if isinstance(value, str):
        if names and value in names:
            return names[value]
        return public_reference(value) if _is_local_absolute(value) else value
    if isinstance(value, Mapping):
        return {k: public_json(v, names) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [public_json(v, names) for v in value]
    return value


def public_json_text(text: str | None, names: Mapping[str, str] | None = None) -> str | None:
    """`public_json` of canonical JSON text; None stays None."""
    if text is None or ("/" not in text and "~" not in text):
        return text
    return canonical_json(public_json(json.loads(text), names))


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One planned sample: everything generation needs, nothing heavy."""

    key: str = field(metadata=_column(pa.string()))
    shard: int = field(metadata=_column(pa.int32()))
    index: int = field(metadata=_column(pa.int32()))
    # int64, nullable: the storage of a `datasets` ClassLabel (its feature applies only then)
    class_label: int = field(metadata=_column(pa.int64(), nullable=True))
    class_name: str = field(metadata=_column(pa.string()))
    prompt: str = field(metadata=_column(pa.string()))
    negative_prompt: str = field(metadata=_column(pa.string()))
    seed: int = field(metadata=_column(pa.int64()))
    # What the prompt template and per-class settings resolved to for this sample (planning:
    # synthgen.generators.templates). `prompt_slots` is {slot: value} JSON; null steps or
    # guidance mean the build's (`steps`, `guidance_scale`).
    prompt_template: str | None = field(default=None, metadata=_column(pa.string(), nullable=True))
    prompt_slots: str | None = field(
        default=None, metadata=_column(pa.string(), nullable=True, json_text=True)
    )
    sample_steps: int | None = field(default=None, metadata=_column(pa.int32(), nullable=True))
    sample_guidance_scale: float | None = field(
        default=None, metadata=_column(pa.float64(), nullable=True)
    )
    # Image conditioning (synthgen.generators.conditioning): the mode, the source image the
    # sample started from (`file.parquet#row=N`, `shard.tar#key` or a folder-relative path)
    # and its sha256, and the mode's settings as JSON (strength, resize, source location,
    # mask, ControlNets with their scales, preprocessor and its parameters). Null: text only.
    conditioning_mode: str | None = field(
        default=None, metadata=_column(pa.string(), nullable=True)
    )
    conditioning_source: str | None = field(
        default=None, metadata=_column(pa.string(), nullable=True)
    )
    conditioning_source_sha256: str | None = field(
        default=None, metadata=_column(pa.string(), nullable=True)
    )
    conditioning: str | None = field(
        default=None, metadata=_column(pa.string(), nullable=True, json_text=True)
    )


# The Parquet columns a sample's media fills: (column, `Media` attribute, Arrow type). The
# columns' names and order are the record's since schema version 1 (`width`, `height`, and
# `phash`, an image's perceptual hash, after `image_sha256`).
MEDIA_COLUMNS: tuple[tuple[str, str, pa.DataType], ...] = (
    ("width", "width", pa.int32()),
    ("height", "height", pa.int32()),
    ("phash", "fingerprint", pa.string()),
)


@dataclass(frozen=True, slots=True)
class Sample:
    """A generated, scored and checked sample as it crosses from scoring to writing.

    Immutable: every step returns a changed copy (`dataclasses.replace`), never edits its
    input, because a PCollection may feed several consumers. `scores` maps a score column
    to a float, or to a tuple of floats for a fixed-size vector column.
    """

    request: GenerationRequest
    image_sha256: str = field(metadata=_column(pa.string()))
    # The encoded media (schemas.media): Parquet keeps its bytes (as `rejected_image`) for
    # rejected samples only; its width, height and fingerprint (`phash`) are columns.
    media: Media = field(metadata={"columns": MEDIA_COLUMNS})
    scores: dict[str, Score] = field(default_factory=dict)
    # A Parquet list of {name, outcome} structs; a {name: outcome} object in the sidecar.
    checks: dict[str, str] = field(default_factory=dict, metadata=_column(CHECKS_TYPE))
    status: str = field(default=ACCEPTED, metadata=_column(pa.string(), provenance=False))
    reject_reason: str | None = field(
        default=None, metadata=_column(pa.string(), nullable=True, provenance=False)
    )
    # the nearest reference / eval-set image (validators.nearest), when the recipe has one
    nearest_ref: str | None = field(
        default=None, metadata=_column(pa.string(), nullable=True, provenance=False)
    )
    nearest_eval: str | None = field(
        default=None, metadata=_column(pa.string(), nullable=True, provenance=False)
    )
    # A failed sample's error, short, with no traceback and no paths (schemas.failures)
    error_message: str | None = field(
        default=None, metadata=_column(pa.string(), nullable=True, provenance=False)
    )

    # Read-only views of `media`, for code that reads an image sample's fields by name.
    @property
    def image(self) -> bytes:
        """The encoded bytes (empty for a failed sample, or a compact one without them)."""
        return self.media.data

    @property
    def width(self) -> int:
        return self.media.shape.width

    @property
    def height(self) -> int:
        return self.media.shape.height

    @property
    def phash(self) -> str:
        return self.media.fingerprint


@dataclass(frozen=True)
class BuildContext:
    """Provenance shared by every sample of a build (allow-listed fields only).

    Computed once by the driver and shipped small to every writer; the JSON fields hold
    canonical JSON text. Only `recipe_hash` and `created_at` are Parquet columns (they vary
    across an extended build's lineage); the rest are written once per file (`build_constants`).
    `class_names` ({id: name} JSON) names the `ClassLabel` of the Parquet features.
    A video build is one whose `generation_options` give `num_frames` (with `fps` and
    `video_format`): its rows gain `VIDEO_COLUMNS` (`ctx_video`).
    """

    recipe_name: str = field(metadata=_column(pa.string(), row=False))
    recipe_hash: str = field(metadata=_column(pa.string()))
    model_path: str = field(metadata=_column(pa.string(), row=False))
    model_sha256: str = field(metadata=_column(pa.string(), row=False))
    pipeline_class: str = field(metadata=_column(pa.string(), row=False))
    scheduler: str = field(metadata=_column(pa.string(), row=False))
    scheduler_config: str = field(metadata=_column(pa.string(), json_text=True, row=False))
    steps: int = field(metadata=_column(pa.int32(), row=False))
    guidance_scale: float = field(metadata=_column(pa.float64(), row=False))
    compute_batch: int = field(metadata=_column(pa.int32(), row=False))
    dtype: str = field(metadata=_column(pa.string(), row=False))
    device: str = field(metadata=_column(pa.string(), row=False))
    image_format: str = field(metadata=_column(pa.string(), row=False))
    # {"format", "png_compress_level", "quality"}
    image_encoding: str = field(metadata=_column(pa.string(), json_text=True, row=False))
    # [{"name", "version", "model", "sha256", "library", "columns"}]: one per scorer
    scorers: str = field(metadata=_column(pa.string(), json_text=True, row=False))
    library_versions: str = field(metadata=_column(pa.string(), json_text=True, row=False))
    # generation options beyond the classic ones (variant, VAE slicing/tiling, sequence length)
    generation_options: str = field(metadata=_column(pa.string(), json_text=True, row=False))
    # ISO-8601 UTC text here and in the sidecar: the start of the build; a timestamp in Parquet
    created_at: str = field(metadata=_column(TIMESTAMP_TYPE))
    # LoRAs and textual-inversion embeddings (synthgen.generators.adapters): {"all": [...],
    # "classes": {name: [...]}}, each {kind, name, path, sha256, scale, token}; "{}": none
    adapters: str = field(default="{}", metadata=_column(pa.string(), json_text=True, row=False))
    class_names: str = ""  # {"<id>": "<name>"} JSON; empty: read from the output's state
    # {resolved local path: as published} JSON for the paths the recipe names (public_path):
    # what the writer records in their place; never written itself
    path_names: str = ""
    # the shard writer plug-in that lays out each shard's files (pipelines.shard_writers);
    # never written itself (the files it writes are in the manifest)
    shard_writer: str = "webdataset"


Origin = Literal["request", "sample", "media", "build"]


@dataclass(frozen=True)
class RecordField:
    """One base column of the sample record, derived from the declarations above."""

    name: str
    arrow: pa.DataType
    origin: Origin
    nullable: bool
    provenance: bool
    json_text: bool
    row: bool
    attribute: str = ""  # the attribute of its origin that holds it; empty: `name`

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
            for name, attribute, arrow in f.metadata.get("columns", ()):
                out.append(RecordField(name, arrow, "media", False, True, False, True, attribute))
            if "arrow" in f.metadata:
                m = f.metadata
                out.append(
                    RecordField(
                        f.name,
                        m["arrow"],
                        origin,
                        m["nullable"],
                        m["provenance"],
                        m["json"],
                        m["row"],
                    )
                )
    return tuple(out)


RECORD_FIELDS: tuple[RecordField, ...] = _record_fields()

# Provenance is an allow-list: these fields and nothing else reach the `.json` sidecar.
PROVENANCE_FIELDS: tuple[str, ...] = tuple(f.name for f in RECORD_FIELDS if f.provenance)
JSON_FIELDS: tuple[str, ...] = tuple(f.name for f in RECORD_FIELDS if f.json_text)
BUILD_FIELDS: tuple[str, ...] = tuple(f.name for f in RECORD_FIELDS if f.origin == "build")
# Parquet columns: what varies per sample. Build constants: once per file (and manifest).
ROW_FIELDS: tuple[RecordField, ...] = tuple(f for f in RECORD_FIELDS if f.row)
ROW_PROVENANCE_FIELDS: tuple[str, ...] = tuple(f.name for f in ROW_FIELDS if f.provenance)
BUILD_CONSTANTS: tuple[str, ...] = tuple(f.name for f in RECORD_FIELDS if not f.row)

# Encoded image of a rejected sample (accepted images live in the tar; this is null for them),
# in the storage of a Hugging Face `datasets` Image: {bytes, path}, path = `<key>.<ext>`.
IMAGE_STORAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
REJECT_IMAGE_FIELD = pa.field("rejected_image", IMAGE_STORAGE)

# The columns a video build's rows add after the base ones (and its sidecars carry):
# (column, Arrow type). `frames` the clip's frame count (0: a failed sample's, no clip),
# `fps` its frame rate, `duration_s` frames / fps, `codec` its `output.video_format`.
VIDEO_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("frames", pa.int32()),
    ("fps", pa.int32()),
    ("duration_s", pa.float64()),
    ("codec", pa.string()),
)
VIDEO_FIELDS: tuple[pa.Field, ...] = tuple(
    pa.field(name, arrow, nullable=False) for name, arrow in VIDEO_COLUMNS
)


@dataclass(frozen=True)
class VideoBuild:
    """What makes a build a video build: its clip codec and frame rate."""

    video_format: str  # `output.video_format`: `mp4`, `mp4-lossless`
    fps: int


def ctx_video(ctx: BuildContext | None) -> VideoBuild | None:
    """The video settings of a build (None: an image build), as its generation options
    record them (`num_frames`, `fps`, `video_format`: set only in a video build)."""
    return None if ctx is None else _video_of(ctx.generation_options)


@functools.lru_cache(maxsize=8)
def _video_of(generation_options: str) -> VideoBuild | None:
    try:
        options = json.loads(generation_options) if generation_options else {}
    except ValueError:
        return None
    if not isinstance(options, dict) or options.get("num_frames") is None:
        return None
    fmt = str(options.get("video_format") or "mp4")
    if not is_video_format(fmt):
        raise ValueError(f"generation options name an unknown video format {fmt!r}")
    return VideoBuild(fmt, int(options.get("fps") or 8))


def video_row(sample: Sample, video: VideoBuild) -> dict[str, Any]:
    """The video columns of a sample's row (`VIDEO_COLUMNS`)."""
    frames = sample.media.shape.frames
    return {
        "frames": frames,
        "fps": video.fps,
        "duration_s": frames / video.fps,
        "codec": video.video_format,
    }


# Checks whose failure withholds an image everywhere: never in a tar, never as
# `rejected_image` bytes (only its sha256 and the reason are kept).
WITHHELD_CHECKS = frozenset({"unsafe", "nsfw"})


def withheld(sample: Sample) -> bool:
    """Whether a sample's image must not be written anywhere (a withholding check failed)."""
    return any(sample.checks.get(name, "pass") != "pass" for name in WITHHELD_CHECKS)


def missing_vector(value: Any) -> bool:
    """Whether a vector cell read from Parquet holds no vector: null, or (as synthgen writes
    a row without one) every element null (NaN once pandas has read it)."""
    return value is None or all(v is None or v != v for v in value)  # pandas reads NaN


def score_field(column: ScoreColumn) -> pa.Field:
    """A scalar column is float32; a vector column is a fixed-size list of float32."""
    if column.dim is None:
        return pa.field(column.name, pa.float32())
    return pa.field(column.name, pa.list_(pa.float32(), column.dim))


def sample_schema(
    columns: Sequence[ScoreColumn],
    ctx: BuildContext | None = None,
    class_names: Mapping[int, str] | None = None,
) -> pa.Schema:
    """The Parquet schema of a build: row fields (a video build's `VIDEO_COLUMNS` after them),
    score columns by name, rejected image last.

    With `ctx`, the schema carries its file metadata: `synthgen` (schema name and version,
    the build constants) and `huggingface` (`datasets` features, `class_names` as ClassLabel;
    a video build's `rejected_image` is a `Video`).
    """
    scores = [score_field(c) for c in sorted(columns, key=lambda c: c.name)]
    video = ctx_video(ctx)
    base = [f.arrow_field() for f in ROW_FIELDS]
    schema = pa.schema([*base, *(VIDEO_FIELDS if video else ()), *scores, REJECT_IMAGE_FIELD])
    if ctx is None:
        return schema
    names = dict(class_names) if class_names is not None else ctx_class_names(ctx)
    meta = {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "build": build_constants(ctx),
    }
    return schema.with_metadata(
        {
            SYNTHGEN_METADATA_KEY: strict_json(meta, sort_keys=True).encode(),
            HF_METADATA_KEY: strict_json(
                {"info": {"features": hf_features(schema, names, video=video is not None)}}
            ).encode(),
        }
    )


def ctx_class_names(ctx: BuildContext) -> dict[int, str]:
    """{class id: name} from `ctx.class_names` (empty when the context does not carry them)."""
    if not ctx.class_names:
        return {}
    return {int(k): str(v) for k, v in json.loads(ctx.class_names).items()}


def class_label_names(class_names: Mapping[int, str]) -> list[str]:
    """`ClassLabel` names: index = class id; an id no class uses is named `unused_<id>`."""
    if not class_names:
        return []
    return [class_names.get(i, f"unused_{i}") for i in range(max(class_names) + 1)]


def _hf_type(t: pa.DataType) -> dict[str, Any]:
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t):
        out: dict[str, Any] = {"feature": _hf_type(t.value_type), "_type": "List"}
        if pa.types.is_fixed_size_list(t):
            out = {"feature": out["feature"], "length": t.list_size, "_type": "List"}
        return out
    if pa.types.is_struct(t):
        return {t.field(i).name: _hf_type(t.field(i).type) for i in range(t.num_fields)}
    dtype = {pa.float32(): "float32", pa.float64(): "float64", pa.binary(): "binary"}.get(t)
    return {"dtype": dtype or str(t), "_type": "Value"}


def hf_features(
    schema: pa.Schema, class_names: Mapping[int, str], *, video: bool = False
) -> dict[str, Any]:
    """Hugging Face `datasets` features (their `to_dict` form) for a shard's Parquet schema:
    `class_label` a ClassLabel (when class names are known), `rejected_image` an Image (a
    video build's: a Video, same storage). `datasets` takes a feature from this metadata only
    where the file's field equals the feature's own Arrow field."""
    out: dict[str, Any] = {}
    for f in schema:
        if f.name == "class_label" and class_names:
            out[f.name] = {"names": class_label_names(class_names), "_type": "ClassLabel"}
        elif f.name == REJECT_IMAGE_FIELD.name and f.type == IMAGE_STORAGE:
            # `datasets` applies Image (and Video) only to this storage
            out[f.name] = {"_type": "Video" if video else "Image"}
        else:
            out[f.name] = _hf_type(f.type)
    return out


def ctx_path_names(ctx: BuildContext) -> Mapping[str, str]:
    """{resolved local path: as published} for the paths the build's recipe names."""
    return _path_names(ctx.path_names)


@functools.lru_cache(maxsize=8)
def _path_names(text: str) -> Mapping[str, str]:
    return types.MappingProxyType(dict(json.loads(text))) if text else types.MappingProxyType({})


# Build constants that may hold local paths (`public_json` applies to them when written).
_PATH_CONSTANTS = ("model_path", "adapters")


def build_constants(ctx: BuildContext) -> dict[str, Any]:
    """The provenance every sample of a build shares and rows leave out (JSON fields decoded),
    every local path in it as published (`public_path`)."""
    names = ctx_path_names(ctx)
    out: dict[str, Any] = {}
    for name in BUILD_CONSTANTS:
        value = getattr(ctx, name)
        value = json.loads(value) if name in JSON_FIELDS and isinstance(value, str) else value
        out[name] = public_json(value, names) if name in _PATH_CONSTANTS else value
    return out


def read_build_constants(schema: pa.Schema) -> dict[str, Any]:
    """The build constants a shard's Parquet file carries in its `synthgen` metadata."""
    raw = (schema.metadata or {}).get(SYNTHGEN_METADATA_KEY)
    if raw is None:
        raise ValueError("Parquet file has no synthgen metadata (not a synthgen shard?)")
    meta = json.loads(raw)
    if meta.get("schema") != SCHEMA_NAME or meta.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"Parquet schema {meta.get('schema')} v{meta.get('schema_version')}: "
            f"this synthgen reads {SCHEMA_NAME} v{SCHEMA_VERSION}"
        )
    return dict(meta["build"])


def _timestamp(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def sample_row(sample: Sample, ctx: BuildContext, columns: Sequence[ScoreColumn]) -> dict[str, Any]:
    """The Parquet row of a sample (see `sample_schema`); a missing score is null."""
    sources: dict[Origin, Any] = {
        "request": sample.request,
        "sample": sample,
        "media": sample.media,
        "build": ctx,
    }
    row: dict[str, Any] = {}
    for f in ROW_FIELDS:
        value = getattr(sources[f.origin], f.attribute or f.name)
        if f.arrow == CHECKS_TYPE:
            value = [{"name": k, "outcome": v} for k, v in sorted(value.items())]
        elif f.arrow == TIMESTAMP_TYPE:
            value = _timestamp(value)
        elif f.json_text and not isinstance(value, str):
            value = canonical_json(value)
        if f.name in _PATH_ROW_FIELDS and value is not None:
            value = _public_row_value(f.name, value, ctx)
        row[f.name] = value
    for c in columns:
        value = sample.scores.get(c.name)
        if c.is_vector and value is None:
            # a row without the vector (a failed sample) holds nulls, not a null list:
            # pyarrow's Parquet reader cannot read a null fixed-size list back
            value = (None,) * (c.dim or 0)
        row[c.name] = list(value) if isinstance(value, tuple) else value
    video = ctx_video(ctx)
    if video is not None:
        row.update(video_row(sample, video))
    keep = sample.status == REJECTED and not withheld(sample)
    fmt = ctx.image_format if video is None else video.video_format
    ext = sample.media.extension or extension_of(fmt)
    row[REJECT_IMAGE_FIELD.name] = (
        {"bytes": sample.media.data, "path": f"{sample.request.key}.{ext}"} if keep else None
    )
    return row


# Row fields that may hold local paths: the mode's settings (source location, mask, ControlNet
# and IP-Adapter folders, fixed images) and references into a source (a WebDataset shard's).
_PATH_ROW_FIELDS = ("conditioning", "conditioning_source", "nearest_ref", "nearest_eval")


def _public_row_value(name: str, value: str, ctx: BuildContext) -> str:
    if name == "conditioning":
        return public_json_text(value, ctx_path_names(ctx)) or value
    return public_reference(value)


def rejected_image_bytes(value: Mapping[str, Any] | None) -> bytes | None:
    """The encoded bytes of a `rejected_image` cell (None when the row keeps no image)."""
    return None if value is None else value.get("bytes")


def provenance_from_row(
    row: Mapping[str, object],
    columns: Sequence[ScoreColumn],
    constants: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The full provenance of a sample: allow-listed fields (nested JSON decoded) and scores.

    `row` is a Parquet row (or a dict with every provenance field); `constants` the build
    constants (`build_constants` / `read_build_constants`) that rows leave out. Only scalar
    scores are included: vector columns (embeddings) stay in the Parquet, so a sidecar stays
    small and readable. Values are JSON-ready: `checks` an object, `created_at` ISO-8601 text.
    """
    merged: dict[str, object] = {**(constants or {}), **row}
    out: dict[str, object] = {}
    for name in PROVENANCE_FIELDS:
        value = merged[name]
        if name in JSON_FIELDS and isinstance(value, str):
            value = json.loads(value)
        elif isinstance(value, list) and name == "checks":
            value = {c["name"]: c["outcome"] for c in value}  # type: ignore[index]
        elif isinstance(value, datetime):
            value = value.isoformat().replace("+00:00", "Z")
        out[name] = value
    for name, _ in VIDEO_COLUMNS:  # a video build's rows have them
        if name in merged:
            out[name] = merged[name]
    out["scores"] = {c.name: merged.get(c.name) for c in columns if not c.is_vector}
    return finite(out)  # type: ignore[no-any-return]


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
        phash=sample.media.fingerprint,
        scores={k: v for k, v in sample.scores.items() if not isinstance(v, tuple)},
    )
