"""Shard writing: a shard's files through its shard writer plug-in, then stats; and reading
back what build-wide checks need of shards written earlier.

Inside a shard, samples are in a seeded order (`shard_order`): a pure function of the recipe
hash, the shard and the key, so the same recipe gives the same files, and any contiguous slice
of a shard mixes classes (an unshuffled loader's first batch is not one class).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pyarrow.parquet as pq

from synthgen.pipelines.shard_writers import shard_writer_class
from synthgen.schemas.manifest import ShardStats, shard_files, stats_name
from synthgen.schemas.records import (
    ACCEPTED,
    FAILED,
    REJECTED,
    BuildContext,
    Sample,
    SampleFeatures,
)
from synthgen.schemas.scores import ScoreColumn
from synthgen.storage.atomic import write_bytes_atomic
from synthgen.storage.c2pa_sign import sign_accepted

logger = logging.getLogger(__name__)


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


def write_shard(
    out_dir: Path,
    shard: int,
    samples: Iterable[Sample],
    ctx: BuildContext,
    columns: Sequence[ScoreColumn],
    presigned: Mapping[str, bytes] | None = None,
) -> ShardStats:
    """Write a shard's files with the build's shard writer (`ctx.shard_writer`: by default
    the WebDataset tar and the Parquet, see pipelines.shard_writers.webdataset), each under a
    temporary name and renamed when complete; the stats last. Samples go in `shard_order`.
    """
    ordered = shard_order(unique_by_key(samples), ctx.recipe_hash, shard)
    # C2PA credentials, when the recipe asks (most signed already, with their host work)
    ordered = sign_accepted(out_dir, ordered, ctx, presigned)
    with shard_writer_class(ctx.shard_writer)(out_dir, shard, ctx, columns) as writer:
        for s in ordered:
            writer.write(s)
    counts = Counter(s.status for s in ordered)
    stats = ShardStats(
        shard=shard,
        files=writer.close(),
        accepted=counts[ACCEPTED],
        rejected=counts[REJECTED],
        failed=counts[FAILED],
        recipe_hash=ctx.recipe_hash,
        keys=len(ordered),
    )
    write_bytes_atomic(out_dir / stats_name(shard), stats.to_json())
    logger.info(
        "shard %05d written: %d accepted, %d rejected, %d failed",
        shard,
        stats.accepted,
        stats.rejected,
        stats.failed,
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
            out / shard_files(shard).parquet,
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
