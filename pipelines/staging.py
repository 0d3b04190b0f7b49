"""Staged samples: generated and scored once, written per shard, read by the deciding step.

A build runs two Beam pipelines per round. The first generates and scores each planned sample
and writes one staging file per shard as soon as that shard is done
(`.synthgen/staging/{shard:05d}.arrow`, Arrow IPC: no pickles; pipelines.generate); it has a
single consumer chain, so no runner recomputes the model steps for another consumer (Beam's
DaskRunner recomputes a collection once per consumer: a branching graph generated every
image many times over). The second reads the staging files without their image bytes, runs
the per-sample and build-wide checks on those compact samples, and the shard writers read
the images back from staging, one shard at a time: no step holds a round's images.

A staging file is also a resume point: a crash after generation redoes no model work for
the shards already staged, unless a sample of the shard failed: a shard not finished yet
gets its failed samples tried again (the whole shard is generated again; a finished shard's
failed rows are final).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa

from synthgen.schemas.failures import is_failed
from synthgen.schemas.manifest import STATE_DIR
from synthgen.schemas.media import Media, Shape
from synthgen.schemas.records import ACCEPTED, FAILED, GenerationRequest, Sample
from synthgen.storage.atomic import atomic_write

STAGING_DIR = "staging"
NAMESPACE = "synthgen"

SCHEMA = pa.schema(
    [
        pa.field("request", pa.string(), nullable=False),  # JSON of the GenerationRequest
        pa.field("image", pa.binary(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("phash", pa.string(), nullable=False),
        pa.field("media_type", pa.string(), nullable=False),
        pa.field("extension", pa.string(), nullable=False),
        pa.field("frames", pa.int32(), nullable=False),
        pa.field("scalars", pa.map_(pa.string(), pa.float64()), nullable=False),
        pa.field("vectors", pa.map_(pa.string(), pa.list_(pa.float64())), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reject_reason", pa.string()),
        pa.field("error_message", pa.string()),
        # outcomes decided with the image's host work (pixel checks: the watermark)
        pa.field("checks", pa.map_(pa.string(), pa.string())),
        # the image with its C2PA credentials, signed with its host work (signing builds)
        pa.field("signed_image", pa.binary()),
    ]
)


def staging_dir(out: Path) -> Path:
    return out / STATE_DIR / STAGING_DIR


def staging_path(out: Path, shard: int) -> Path:
    return staging_dir(out) / f"{shard:05d}.arrow"


def _row(s: Sample, signed: bytes | None = None) -> dict[str, object]:
    scalars = {k: float(v) for k, v in s.scores.items() if not isinstance(v, tuple)}
    vectors = {k: [float(x) for x in v] for k, v in s.scores.items() if isinstance(v, tuple)}
    return {
        "request": json.dumps(dataclasses.asdict(s.request), sort_keys=True),
        "image": s.media.data,
        "image_sha256": s.image_sha256,
        "width": s.media.shape.width,
        "height": s.media.shape.height,
        "phash": s.media.fingerprint,
        "media_type": s.media.media_type,
        "extension": s.media.extension,
        "frames": s.media.shape.frames,
        "scalars": list(scalars.items()),
        "vectors": list(vectors.items()),
        "status": s.status,
        "reject_reason": s.reject_reason,
        "error_message": s.error_message,
        "checks": list(s.checks.items()),
        "signed_image": signed,
    }


SIGNER_KEY = b"synthgen.signer"  # the staging file's metadata: who signed its images


def write_staged(
    out: Path,
    shard: int,
    samples: Iterable[Sample],
    signed: Mapping[str, bytes] | None = None,
    signer: str | None = None,
) -> int:
    """Write a shard's scored samples (sorted by key, one per key) atomically, with the
    signed image of each key in `signed` and `signer` (`c2pa_sign.signer_id`: the
    certificate they were signed with); returns the count."""
    by_key: dict[str, Sample] = {}
    for s in samples:  # a retried bundle repeats identical samples
        seen = by_key.get(s.request.key)
        if seen is None or (is_failed(seen) and not is_failed(s)):
            by_key[s.request.key] = s  # a failure that did not repeat loses to the success
    signed = signed or {}
    rows = [_row(by_key[k], signed.get(k)) for k in sorted(by_key)]
    path = staging_path(out, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = SCHEMA if signer is None else SCHEMA.with_metadata({SIGNER_KEY: signer.encode()})
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_write(path) as f, pa.ipc.new_file(f, schema) as writer:
        writer.write_table(table)
    return len(rows)


def read_staged(out: Path, shard: int, *, images: bool = True) -> list[Sample]:
    """The scored samples of a staged shard, exactly as they were written; without `images`
    their image bytes stay on disk (`image` is empty): what build-wide decisions read."""
    with pa.memory_map(str(staging_path(out, shard))) as source:
        table = _with_media_columns(pa.ipc.open_file(source).read_all())
    heavy = ("image", "signed_image") if not images else ("signed_image",)  # read_signed
    table = table.drop_columns([c for c in heavy if c in table.column_names])
    samples = []
    for row in table.to_pylist():
        scores: dict[str, float | tuple[float, ...]] = dict(row["scalars"])
        scores.update({k: tuple(v) for k, v in row["vectors"]})
        samples.append(
            Sample(
                request=GenerationRequest(**json.loads(row["request"])),
                image_sha256=row["image_sha256"],
                media=_media(row),
                scores=scores,
                status=row.get("status") or ACCEPTED,
                reject_reason=row.get("reject_reason"),
                error_message=row.get("error_message"),
                checks=dict(row.get("checks") or []),
            )
        )
    return samples


# an image's format by its first bytes (staging files of older versions name none)
_SIGNATURES = ((b"\x89PNG", "png"), (b"RIFF", "webp"), (b"\xff\xd8", "jpg"))


def _with_media_columns(table: pa.Table) -> pa.Table:
    """A staging table as this version writes it: one staged by an older version (no media
    columns) gets its media type and extension from its images' own bytes (a build writes
    one format) and one frame each, so its shards are not generated again."""
    if "media_type" in table.column_names:
        return table
    from synthgen.schemas.media import media_type_of

    data = next((d for d in table.column("image").to_pylist() if d), b"")
    ext = next((e for magic, e in _SIGNATURES if data.startswith(magic)), "png")
    n = table.num_rows
    table = table.append_column("media_type", pa.array([media_type_of(ext)] * n, pa.string()))
    table = table.append_column("extension", pa.array([ext] * n, pa.string()))
    return table.append_column("frames", pa.array([1] * n, pa.int32()))


def _media(row: Mapping[str, Any]) -> Media:
    shape = Shape(row["frames"], row["height"], row["width"])
    data = row.get("image", b"")
    return Media(data, row["media_type"], row["extension"], shape, row["phash"])


def read_signed(out: Path, shard: int, signer: str | None) -> dict[str, bytes]:
    """The images a staged shard holds signed by `signer` (key -> bytes): none in a file
    made without, or signed with other credentials (the certificate was rotated between a
    build's runs: the writer signs those again, so that one build has one signer)."""
    with pa.memory_map(str(staging_path(out, shard))) as source:
        table = pa.ipc.open_file(source).read_all()
    if "signed_image" not in table.column_names:
        return {}
    staged_by = (table.schema.metadata or {}).get(SIGNER_KEY)
    if signer is None or staged_by != signer.encode():
        return {}
    requests = table.column("request").to_pylist()
    images = table.column("signed_image").to_pylist()
    return {
        json.loads(request)["key"]: data
        for request, data in zip(requests, images, strict=True)
        if data is not None
    }


def staged_shards(out: Path, shards: Iterable[int]) -> set[int]:
    """The shards whose staging file is complete (atomic writes: present means complete) and
    holds no failed sample: a shard with one is generated again, so its failed samples get
    another try (their success does not depend on the rest of the shard)."""
    return {s for s in shards if staging_path(out, s).is_file() and not _has_failed(out, s)}


def _has_failed(out: Path, shard: int) -> bool:
    try:
        with pa.memory_map(str(staging_path(out, shard))) as source:
            table = pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowException):
        return True  # unreadable: generate the shard again
    if "checks" not in table.column_names:
        return True  # staged by a much older version (no pixel checks): generate again
    return FAILED in table.column("status").to_pylist()


def clear_staged(out: Path, shards: Iterable[int]) -> None:
    for s in shards:
        staging_path(out, s).unlink(missing_ok=True)


class ReadStaged(beam.PTransform):
    """Shard ids -> the staged samples of each shard; without `images`, compact ones (no
    image bytes: the decisions travel without them, the writer reads them from staging)."""

    def __init__(self, out: str, *, images: bool = True):
        super().__init__()
        self._out = out
        self._images = images

    def expand(self, shard_ids: beam.PCollection) -> beam.PCollection:
        out, images = self._out, self._images
        return (
            shard_ids
            | "Spread" >> beam.Reshuffle()
            | "ReadStaged"
            >> beam.FlatMap(lambda shard: read_staged(Path(out), shard, images=images))
        )
