"""Shard writing: one tar (accepted samples), one Parquet (every attempt), then stats; and
reading back what build-wide checks need of shards written earlier.

Inside a shard, samples are in a seeded order (`shard_order`): a pure function of the recipe
hash, the shard and the key, so the same recipe gives the same files, and any contiguous slice
of a shard mixes classes (an unshuffled loader's first batch is not one class).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from synthgen.schemas.manifest import (
    STATE_DIR,
    STATE_NAME,
    FileInfo,
    ShardStats,
    shard_files,
    stats_name,
)
from synthgen.schemas.records import (
    ACCEPTED,
    FAILED,
    REJECTED,
    BuildContext,
    Sample,
    SampleFeatures,
    build_constants,
    ctx_class_names,
    provenance_from_row,
    sample_row,
    sample_schema,
    strict_json,
    withheld,
)
from synthgen.schemas.scores import ScoreColumn
from synthgen.storage.atomic import atomic_write, write_bytes_atomic
from synthgen.storage.c2pa_sign import sign_accepted
from synthgen.storage.hashing import file_sha256
from synthgen.storage.images import EXTENSIONS

logger = logging.getLogger(__name__)

TAR_MTIME = 0  # fixed, so equal content gives equal tar bytes


def unique_by_key(samples: Iterable[Sample]) -> list[Sample]:
    """Sort by key; a key seen twice (a retried bundle) must carry identical image bytes.

    A failure that did not repeat (one attempt failed, the other made the image) loses to
    the image: failures such as running out of memory are not a function of the sample."""
    by_key: dict[str, Sample] = {}
    for s in samples:
        seen = by_key.get(s.request.key)
        if seen is None or (seen.status == FAILED and s.status != FAILED):
            by_key[s.request.key] = s
        elif s.status == FAILED:
            continue
        elif seen.image_sha256 != s.image_sha256:
            raise RuntimeError(
                f"sample {s.request.key} was produced twice with different images; "
                "generation is not deterministic on this worker setup"
            )
    return [by_key[k] for k in sorted(by_key)]


def shard_order(samples: Sequence[Sample], recipe_hash: str, shard: int) -> list[Sample]:
    """A seeded permutation of a shard's samples: sorted by sha256(recipe hash, shard, key).

    Pure (no RNG state, no library version involved), so the order, like the bytes, is a
    function of the recipe; unrelated to class, so contiguous slices mix classes.
    """

    return sorted(samples, key=lambda s: shard_rank(recipe_hash, shard, s.request.key))


def shard_rank(recipe_hash: str, shard: int, key: str) -> str:
    """A sample's place in its shard (`shard_order` sorts by it)."""
    return hashlib.sha256(f"{recipe_hash}/{shard}/{key}".encode()).hexdigest()


def _class_names(out_dir: Path, ctx: BuildContext) -> dict[int, str]:
    """{class id: name} for the Parquet's ClassLabel: from the context, else from the recipe
    in the output directory's state (written before any shard)."""
    names = ctx_class_names(ctx)
    if names:
        return names
    try:
        state = json.loads((out_dir / STATE_DIR / STATE_NAME).read_text(encoding="utf-8"))
        return {int(c["id"]): str(c["name"]) for c in state["recipe"]["classes"]}
    except (OSError, ValueError, KeyError, TypeError):
        logger.debug("no class names for %s: class_label stays a plain integer", out_dir)
        return {}


def write_shard(
    out_dir: Path,
    shard: int,
    samples: Iterable[Sample],
    ctx: BuildContext,
    columns: Sequence[ScoreColumn],
    presigned: Mapping[str, bytes] | None = None,
) -> ShardStats:
    """Write a shard's files under temporary names, rename each after close, stats last.

    The tar holds accepted samples (`key.<image>`, `key.json` full provenance with scalar
    scores, `key.txt` prompt, `key.cls` class id); the Parquet holds every attempt with every
    score column, vectors included, and the image of each rejected sample; build constants
    live in its file metadata. Both list samples in `shard_order`.
    """
    ordered = shard_order(unique_by_key(samples), ctx.recipe_hash, shard)
    # C2PA credentials, when the recipe asks (most signed already, with their host work)
    ordered = sign_accepted(out_dir, ordered, ctx, presigned)
    rows = [sample_row(s, ctx, columns) for s in ordered]
    constants = build_constants(ctx)
    ext = EXTENSIONS[ctx.image_format]
    tar_name, parquet_name = shard_files(shard)

    with atomic_write(out_dir / tar_name) as f:
        writer = wds.TarWriter(f, encoder=False, mtime=TAR_MTIME, user="synthgen", group="synthgen")
        for s, row in zip(ordered, rows, strict=True):
            if s.status != ACCEPTED or withheld(s):
                continue
            prov = provenance_from_row({**row, "created_at": ctx.created_at}, columns, constants)
            writer.write(
                {
                    "__key__": s.request.key,
                    ext: s.image,
                    "json": strict_json(prov, sort_keys=True, ensure_ascii=False).encode(),
                    "txt": s.request.prompt.encode(),
                    "cls": str(s.request.class_label).encode("ascii"),
                }
            )
        writer.close()

    schema = sample_schema(columns, ctx, _class_names(out_dir, ctx))
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_write(out_dir / parquet_name) as f:
        pq.write_table(table, f, compression="zstd")

    accepted = sum(1 for s in ordered if s.status == ACCEPTED)
    failed = sum(1 for s in ordered if s.status == FAILED)
    files = {
        name: FileInfo(sha256=file_sha256(out_dir / name), bytes=(out_dir / name).stat().st_size)
        for name in (tar_name, parquet_name)
    }
    stats = ShardStats(
        shard=shard,
        files=files,
        accepted=accepted,
        rejected=sum(1 for s in ordered if s.status == REJECTED),
        failed=failed,
        recipe_hash=ctx.recipe_hash,
        keys=len(ordered),
    )
    write_bytes_atomic(out_dir / stats_name(shard), stats.to_json())
    logger.info(
        "shard %05d written: %d accepted, %d rejected, %d failed",
        shard,
        accepted,
        stats.rejected,
        failed,
    )
    return stats


def reused_features(
    out: Path, shards: Iterable[int], columns: Sequence[ScoreColumn]
) -> list[SampleFeatures]:
    """What build-wide checks need of the samples in finished shards, read from their Parquet.

    Scalar score columns only; a null score reads as NaN (no threshold applies to it).
    Failed samples have no image: nothing to compare.
    """
    scalars = [c.name for c in columns if not c.is_vector]
    feats: list[SampleFeatures] = []
    for shard in shards:
        table = pq.read_table(
            out / shard_files(shard)[1],
            columns=["key", "class_label", "image_sha256", "phash", "status", *scalars],
        )
        for row in table.to_pylist():
            if row["status"] == FAILED:
                continue
            feats.append(
                SampleFeatures(
                    key=row["key"],
                    class_label=row["class_label"],
                    image_sha256=row["image_sha256"],
                    phash=row["phash"],
                    scores={c: float("nan") if row[c] is None else row[c] for c in scalars},
                )
            )
    return feats
