"""manifest.json and per-shard stats: the shapes a consumer and resume rely on."""

from __future__ import annotations

from typing import Any

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
STATE_DIR = ".synthgen"


def shard_stem(shard: int) -> str:
    return f"{shard:05d}"


def shard_files(shard: int) -> tuple[str, str]:
    """The data files of a shard: the tar and the Parquet."""
    stem = shard_stem(shard)
    return f"{stem}.tar", f"{stem}.parquet"


def stats_name(shard: int) -> str:
    return f"{shard_stem(shard)}_stats.json"


def shard_entry(
    shard: int, files: dict[str, dict[str, Any]], accepted: int, rejected: int
) -> dict[str, Any]:
    """One `shards[]` entry, also the content of `{shard:05d}_stats.json`."""
    return {"shard": shard, "files": files, "accepted": accepted, "rejected": rejected}
