"""A new codec and a new shard writer, each defined here and nowhere else, used by name.

The codec writes BMP (lossless, through Pillow); the writer lays a shard out as today's
WebDataset tar and Parquet plus a `{shard:05d}.jsonl` of every attempt's metadata. Both are
found by name through their registries (`output.image_format` and the build context's
shard writer); what they write is read back with `webdataset` and pyarrow.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from synthgen.pipelines.output import discard_shard, finished_shard
from synthgen.pipelines.shard_writers import UnknownWriter, shard_writer_class
from synthgen.pipelines.shard_writers.webdataset import WebDatasetWriter
from synthgen.pipelines.writer import write_shard
from synthgen.schemas.manifest import shard_files, stats_name
from synthgen.schemas.media import Shape
from synthgen.schemas.recipe import RecipeError
from synthgen.schemas.records import (
    BUILD_FIELDS,
    JSON_FIELDS,
    REJECTED,
    BuildContext,
    GenerationRequest,
    Sample,
    canonical_json,
)
from synthgen.schemas.scores import ScoreColumn
from synthgen.storage.codecs import (
    UnknownFormat,
    codec_class,
    codec_for_extension,
    image_codec,
    readable_extensions,
)
from synthgen.storage.codecs.image import ImageCodec
from synthgen.storage.images import encode_image
from synthgen.validators.corpus import check_tar, read_rows
from tests.conftest import tiny_recipe_dict, write_recipe

COLUMNS = (ScoreColumn(name="s", scorer="t", minimum=0, maximum=1),)
META = ("key", "status", "class_label", "image_sha256", "width", "height", "phash")


class BmpCodec(ImageCodec):
    """BMP: uncompressed, lossless (a format no built-in codec writes)."""

    name = "bmp"
    media_type = "image/bmp"
    extension = "bmp"
    lossless = True
    pillow_format = "BMP"
    encoded: ClassVar[int] = 0

    def encode(self, pixels: Any) -> bytes:
        type(self).encoded += 1
        return self.save_with_pillow(pixels)


class JsonlWriter(WebDatasetWriter):
    """Today's tar and Parquet, and a JSON line of metadata per attempted sample."""

    name = "webdataset-jsonl"
    written: ClassVar[Counter[str]] = Counter()

    def write(self, sample: Sample) -> None:
        type(self).written[sample.request.key] += 1
        super().write(sample)

    def finish(self) -> None:
        super().finish()
        name = self.file_name("jsonl")
        f = self.open_file(name)
        for row in self.rows:
            line = {k: row[k] for k in META}
            f.write((json.dumps(line, sort_keys=True) + "\n").encode())
        self.close_file(name)


def context(**changes: object) -> BuildContext:
    values: dict[str, object] = {n: "{}" if n in JSON_FIELDS else "x" for n in BUILD_FIELDS}
    values.update(steps=2, guidance_scale=1.5, compute_batch=4, image_format="bmp")
    values.update(created_at="2024-01-01T00:00:00Z", class_names=canonical_json({"0": "a"}))
    values.update(shard_writer="webdataset-jsonl", scorers=canonical_json([{"name": "t"}]))
    values.update(changes)
    return BuildContext(**values)  # type: ignore[arg-type]


def bmp_samples(n: int, size: int = 8) -> list[Sample]:
    """`n` samples whose images the registry's `bmp` codec encoded (one rejected)."""
    rng = np.random.default_rng(0)
    codec = image_codec("bmp")
    out = []
    for i in range(n):
        pixels = rng.integers(0, 256, (size, size + 2, 3), dtype=np.uint8)
        data = codec.encode(pixels)
        media = codec.media(data, Shape(1, size, size + 2), codec.fingerprint(codec.decode(data)))
        request = GenerationRequest(f"k-{i}", 0, i, 0, "a", f"prompt {i}", "", i)
        status = REJECTED if i == 1 else "accepted"
        sample = Sample(request, hashlib.sha256(data).hexdigest(), media, status=status)
        out.append(sample if i != 1 else _rejected(sample))
    return out


def _rejected(sample: Sample) -> Sample:
    import dataclasses

    return dataclasses.replace(sample, reject_reason="s", scores={"s": 0.1})


def test_the_codec_is_found_by_name_and_extension_and_encodes_through_the_registry() -> None:
    assert codec_class("bmp") is BmpCodec and codec_for_extension(".BMP") is BmpCodec
    assert "bmp" in readable_extensions()
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    before = BmpCodec.encoded
    data = encode_image(pixels, "bmp")  # the format-name entry point: no if-chain to extend
    assert BmpCodec.encoded == before + 1
    assert data[:2] == b"BM"
    assert np.array_equal(np.asarray(BmpCodec().decode(data)), pixels)
    assert BmpCodec().thumbnail(BmpCodec().decode(data), 3).size == (3, 2)
    with pytest.raises(UnknownFormat, match=r"'tga'.*bmp, jpeg, png, webp"):
        codec_class("tga")
    with pytest.raises(TypeError, match="codec name 'png' is taken"):
        type("OtherPng", (ImageCodec,), {"name": "png", "encode": lambda self, p: b""})


def test_a_codec_registered_again_under_its_name_is_the_one_used() -> None:
    from synthgen.storage.codecs.base import CODECS, image_codec

    def tga(marker: bytes) -> type[ImageCodec]:
        body = {"name": "tga-test", "media_type": "image/x-tga", "extension": "tga"}
        return type("Tga", (ImageCodec,), {**body, "encode": lambda self, p: marker})

    first = tga(b"one")
    try:
        assert image_codec("tga-test").encode(None) == b"one"  # cached per setting
        CODECS.remove("tga-test")  # a test's plug-in gone, and another under its name
        second = tga(b"two")
        assert isinstance(image_codec("tga-test"), second) and second is not first
        assert image_codec("tga-test").encode(None) == b"two"
    finally:
        CODECS.remove("tga-test")
    with pytest.raises(UnknownFormat, match="'tga-test'"):
        image_codec("tga-test")


def test_a_shard_from_the_plugin_writer_and_codec_reads_back(tmp_path: Path) -> None:
    samples = bmp_samples(4)
    JsonlWriter.written.clear()
    stats = write_shard(tmp_path, 0, reversed(samples), context(), COLUMNS)
    assert JsonlWriter.written == Counter({s.request.key: 1 for s in samples})
    files = shard_files(0)
    assert list(stats.files) == [files.tar, files.parquet, "00000.jsonl"]
    for name, info in stats.files.items():
        data = (tmp_path / name).read_bytes()
        assert (info.bytes, info.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert not list(tmp_path.glob(".*tmp-*")), "no temporary file is left"

    by_key = {s.request.key: s for s in samples}
    dataset = wds.WebDataset(str(tmp_path / files.tar), shardshuffle=False)
    raw = dict(dataset.to_tuple("__key__", "bmp"))
    assert sorted(raw) == sorted(k for k in by_key if k != "k-1"), "the rejected one: Parquet"
    assert all(raw[k] == by_key[k].media.data for k in raw)
    decoded = dataset.decode("pil").to_tuple("__key__", "bmp", "cls", "json")
    for key, image, cls, prov in decoded:
        assert isinstance(image, PIL.Image.Image) and image.size == (10, 8)
        assert np.array_equal(np.asarray(image), np.asarray(BmpCodec().decode(raw[key])))
        assert cls == 0 and prov["key"] == key and prov["phash"] == by_key[key].media.fingerprint

    rows = pq.read_table(tmp_path / files.parquet).to_pylist()
    rejected = next(r for r in rows if r["status"] == REJECTED)
    assert rejected["rejected_image"] == {"bytes": by_key["k-1"].media.data, "path": "k-1.bmp"}
    lines = [json.loads(x) for x in (tmp_path / "00000.jsonl").read_text().splitlines()]
    assert lines == [{k: r[k] for k in META} for r in rows]
    assert check_tar(tmp_path, 0, read_rows(tmp_path, [0]), 10, 8) == []


def test_resume_and_discard_know_the_writers_extra_file(tmp_path: Path) -> None:
    write_shard(tmp_path, 0, bmp_samples(3), context(), COLUMNS)
    assert finished_shard(tmp_path, 0, "x") is not None
    (tmp_path / "00000.jsonl").write_bytes(b"changed\n")
    assert finished_shard(tmp_path, 0, "x") is None, "every file it wrote must match"
    discard_shard(tmp_path, 0)
    assert not [p.name for p in tmp_path.iterdir()], "stats, tar, Parquet and jsonl removed"


def test_a_failing_write_publishes_no_file(tmp_path: Path) -> None:
    samples = bmp_samples(3)
    writer = JsonlWriter(tmp_path, 0, context(), COLUMNS)
    with pytest.raises(ZeroDivisionError), writer:
        writer.write(samples[0])
        raise ZeroDivisionError
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UnknownWriter, match=r"'nope'.*webdataset"):
        shard_writer_class("nope")


def test_a_tiny_build_uses_the_codec_and_writer_the_recipe_names(
    tmp_path: Path, model_dir: Path
) -> None:
    from synthgen.pipelines.build import run_build

    data = tiny_recipe_dict(model_dir)
    data["output"] = {"shard_size": 6, "image_format": "bmp", "writer": "webdataset-jsonl"}
    JsonlWriter.written.clear()
    result = run_build(
        write_recipe(tmp_path / "recipe.yaml", data), tmp_path / "out", show_progress=False
    )
    out = result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(JsonlWriter.written.values()) == manifest["counts"]["attempted"] == 12
    assert set(JsonlWriter.written.values()) == {1}
    for entry in manifest["shards"]:
        assert set(entry["files"]) == {*shard_files(entry["shard"]), f"{entry['shard']:05d}.jsonl"}
        assert (out / stats_name(entry["shard"])).is_file()
    tars = sorted(str(p) for p in out.glob("0*.tar"))
    members = list(wds.WebDataset(tars, shardshuffle=False).to_tuple("bmp", "cls"))
    assert len(members) == manifest["counts"]["accepted"] > 0
    for data, cls in members:
        with PIL.Image.open(io.BytesIO(data)) as image:
            assert (image.format, image.size) == ("BMP", (32, 32))
        assert int(cls) in (0, 1, 2)
    table = pq.read_table(out / shard_files(0).parquet)
    assert set(table.column("width").to_pylist()) == {32}


@pytest.mark.parametrize(("field", "value"), [("image_format", "tga"), ("writer", "lance")])
def test_an_unknown_codec_or_writer_fails_before_any_output(
    tmp_path: Path, model_dir: Path, field: str, value: str
) -> None:
    from synthgen.pipelines.build import run_build

    data = tiny_recipe_dict(model_dir)
    data["output"] = {"shard_size": 6, field: value}
    with pytest.raises(RecipeError, match=rf"output\.{field}: unknown .*{value!r}"):
        run_build(write_recipe(tmp_path / "recipe.yaml", data), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_plugins_from_a_test_file_reach_worker_processes(tmp_path: Path, model_dir: Path) -> None:
    """Two worker processes know nothing of this file: the codec class travels with the
    generating work and registers there, so it is found by name as the driver found it. (The
    writer runs where the shards are written: threads of this process on the DirectRunner;
    the next test carries it to a process that cannot import this file.)"""
    from synthgen.pipelines.build import run_build

    data = tiny_recipe_dict(model_dir, count_per_class=2)
    data["output"] = {"shard_size": 3, "image_format": "bmp", "writer": "webdataset-jsonl"}
    data["checks"] = {"clip_score": None}  # every sample accepted: each is in a tar
    result = run_build(
        write_recipe(tmp_path / "recipe.yaml", data),
        tmp_path / "out",
        show_progress=False,
        beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    )
    out = result.output
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["00000.jsonl", "00001.jsonl"]
    members = []
    for tar in sorted(out.glob("0*.tar")):
        with tarfile.open(tar) as tf:
            members += tf.getnames()
    assert members and all(n.split(".")[-1] in ("bmp", "cls", "json", "txt") for n in members)
    assert sum(n.endswith(".bmp") for n in members) == 6


def test_the_writing_work_carries_the_writer_to_a_process_that_cannot_import_it(
    tmp_path: Path, model_dir: Path
) -> None:
    """On a runner whose writing runs in worker processes (Dask, Dataflow), the shard-writing
    DoFn, pickled as Beam pickles it during a build, registers this file's writer in a fresh
    interpreter that cannot import this file, so the build finds it there by name."""
    import os
    import subprocess
    import sys

    from apache_beam.internal import pickler

    from synthgen.pipelines.runner import carried_plugins
    from synthgen.pipelines.transforms import WriteShardFn
    from synthgen.schemas.recipe import load_recipe

    data = tiny_recipe_dict(model_dir)
    data["output"] = {"writer": "webdataset-jsonl"}
    recipe, _ = load_recipe(write_recipe(tmp_path / "recipe.yaml", data))
    with carried_plugins(recipe) as plugins:
        assert JsonlWriter in plugins
        blob = pickler.dumps(WriteShardFn(str(tmp_path), None, (), plugins))  # type: ignore[arg-type]
    code = (
        "import sys; from apache_beam.internal import pickler\n"
        "from synthgen.pipelines.shard_writers import shard_writer_class\n"
        "fn = pickler.loads(sys.stdin.buffer.read()); fn.setup()\n"
        "cls = shard_writer_class('webdataset-jsonl')\n"
        "print(cls.__name__, cls.__module__, 'tests' in sys.modules)"
    )
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, "-c", code], input=blob, capture_output=True, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["JsonlWriter", __name__, "False"]
