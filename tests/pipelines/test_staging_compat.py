"""A shard staged by the version before media records (an interrupted build upgraded
mid-round) is read back, not generated again."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from synthgen.pipelines.staging import read_staged, staged_shards, staging_path, write_staged
from tests.validators.conftest import make_samples


def _as_older_version(out: Path, shard: int) -> None:
    path = staging_path(out, shard)
    table = pa.ipc.open_file(pa.BufferReader(path.read_bytes())).read_all()  # in memory
    table = table.drop_columns(["media_type", "extension", "frames"])
    older = path.with_suffix(".older")
    with pa.OSFile(str(older), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    older.replace(path)


def test_a_shard_staged_without_media_columns_is_reused(tmp_path: Path) -> None:
    samples = make_samples(4)  # PNG images
    write_staged(tmp_path, 0, samples)
    _as_older_version(tmp_path, 0)
    assert staged_shards(tmp_path, [0]) == {0}  # not generated again
    back = {s.request.key: s for s in read_staged(tmp_path, 0)}
    for s in samples:
        got = back[s.request.key]
        assert got.media.data == s.media.data and got.image_sha256 == s.image_sha256
        assert (got.media.media_type, got.media.extension) == ("image/png", "png")
        assert got.media.shape == s.media.shape and got.media.fingerprint == s.media.fingerprint
    light = read_staged(tmp_path, 0, images=False)  # the build-wide reading, no image bytes
    assert {s.media.extension for s in light} == {"png"}
