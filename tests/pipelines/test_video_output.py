"""A video build's output: shards laid out as video2dataset writes them (`key.mp4`,
`key.json`, `key.cls`, `key.txt`), Parquet rows with `frames`, `fps`, `duration_s` and
`codec`, a dataset card with a `video` feature and `synthgen.load` yielding clips; an image
build's shards keep their layout.

The clips are made here with the codecs (a video build's generation is not needed to test
what is written): samples as the generation step hands them to the shard writer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

import synthgen
from synthgen.pipelines.card import card_metadata, card_text, write_card
from synthgen.pipelines.writer import write_shard
from synthgen.schemas.manifest import (
    MANIFEST_NAME,
    Counts,
    Manifest,
    ModelInfo,
    ShardEntry,
    shard_files,
)
from synthgen.schemas.media import NO_MEDIA, Shape
from synthgen.schemas.records import (
    BUILD_FIELDS,
    FAILED,
    HF_METADATA_KEY,
    JSON_FIELDS,
    REJECTED,
    ROW_FIELDS,
    BuildContext,
    GenerationRequest,
    Sample,
    canonical_json,
    sample_schema,
)
from synthgen.schemas.scores import ScoreColumn
from synthgen.storage.codecs import image_codec, video_codec
from synthgen.storage.tars import iter_tar_samples, sample_member_limit
from tests.storage.clips import blob

COLUMNS = (ScoreColumn(name="s", scorer="t", minimum=0, maximum=1),)
FRAMES, SIZE, FPS = 8, 16, 8
CLASSES = {0: "zero", 1: "one"}
VIDEO_COLUMNS = ["frames", "fps", "duration_s", "codec"]


def context(fmt: str | None = "mp4", **changes: object) -> BuildContext:
    """A build context; `fmt` None: an image build (png)."""
    values: dict[str, object] = {n: "{}" if n in JSON_FIELDS else "x" for n in BUILD_FIELDS}
    values.update(steps=2, guidance_scale=1.5, compute_batch=4, image_format="png")
    values.update(created_at="2024-01-01T00:00:00Z", scorers=canonical_json([{"name": "t"}]))
    values.update(class_names=canonical_json({str(k): v for k, v in CLASSES.items()}))
    options: dict[str, object] = {"variant": None}
    if fmt is not None:
        options |= {"num_frames": FRAMES, "fps": FPS, "video_format": fmt}
    values["generation_options"] = canonical_json(options)
    values.update(changes)
    return BuildContext(**values)  # type: ignore[arg-type]


def _request(i: int) -> GenerationRequest:
    return GenerationRequest(f"k-{i}", 0, i, i % 2, CLASSES[i % 2], f"a moving {i}", "", i)


def clip_samples(fmt: str) -> list[Sample]:
    """Three clips as the generation step finishes them (k-1 rejected), and a failed one."""
    codec = video_codec(fmt, FPS)
    out = []
    for i in range(3):
        frames = blob(FRAMES, SIZE, shift=2 * i)
        data = codec.encode(frames)
        stored = frames if codec.lossless else codec.decode(data)
        media = codec.media(data, Shape(FRAMES, SIZE, SIZE), codec.fingerprint(stored))
        sample = Sample(_request(i), hashlib.sha256(data).hexdigest(), media, scores={"s": 0.9})
        if i == 1:
            sample = dataclasses.replace(sample, status=REJECTED, reject_reason="s")
        out.append(sample)
    failed = Sample(_request(3), "", NO_MEDIA, status=FAILED, reject_reason="error:ValueError")
    return [*out, dataclasses.replace(failed, error_message="boom")]


@pytest.mark.parametrize("fmt", ["mp4", "mp4-lossless"])
def test_a_video_shard_holds_video2dataset_members_and_video_columns(
    tmp_path: Path, fmt: str
) -> None:
    samples = clip_samples(fmt)
    by_key = {s.request.key: s for s in samples}
    stats = write_shard(tmp_path, 0, samples, context(fmt), COLUMNS)
    files = shard_files(0)
    assert (stats.accepted, stats.rejected, stats.failed) == (2, 1, 1)

    with tarfile.open(tmp_path / files.tar) as tf:
        names = tf.getnames()
    for key in ("k-0", "k-2"):
        at = names.index(f"{key}.cls")
        assert names[at : at + 4] == [f"{key}.{e}" for e in ("cls", "json", "mp4", "txt")]
    assert len(names) == 8, "accepted clips only: the rejected and failed are in the Parquet"
    for sample in wds.WebDataset(str(tmp_path / files.tar), shardshuffle=False):
        want = by_key[sample["__key__"]]
        assert {k for k in sample if not k.startswith("__")} == {"mp4", "json", "cls", "txt"}
        assert sample["mp4"] == want.media.data
        assert sample["txt"].decode() == want.request.prompt
        assert int(sample["cls"]) == want.request.class_label
        prov = json.loads(sample["json"])
        assert prov["key"] == want.request.key and prov["phash"] == want.media.fingerprint
        assert {k: prov[k] for k in VIDEO_COLUMNS} == {
            "frames": FRAMES,
            "fps": FPS,
            "duration_s": 1.0,
            "codec": fmt,
        }

    table = pq.read_table(tmp_path / files.parquet)
    base = [f.name for f in ROW_FIELDS]
    assert table.column_names == [*base, *VIDEO_COLUMNS, "s", "rejected_image"]
    rows = {r["key"]: r for r in table.to_pylist()}
    assert [rows[k]["frames"] for k in sorted(rows)] == [FRAMES, FRAMES, FRAMES, 0]
    assert {(r["fps"], r["codec"]) for r in rows.values()} == {(FPS, fmt)}
    assert rows["k-0"]["duration_s"] == 1.0 and rows["k-3"]["duration_s"] == 0.0
    assert rows["k-1"]["rejected_image"] == {"bytes": by_key["k-1"].media.data, "path": "k-1.mp4"}
    features = json.loads(table.schema.metadata[HF_METADATA_KEY])["info"]["features"]
    assert features["rejected_image"] == {"_type": "Video"}
    assert features["frames"] == {"dtype": "int32", "_type": "Value"}


def test_pyav_decodes_every_clip_as_the_parquet_states(tmp_path: Path) -> None:
    write_shard(tmp_path, 0, clip_samples("mp4"), context("mp4"), COLUMNS)
    files = shard_files(0)
    rows = {r["key"]: r for r in pq.read_table(tmp_path / files.parquet).to_pylist()}
    limit = sample_member_limit(SIZE, SIZE, FRAMES)
    seen = 0
    for sample in iter_tar_samples(tmp_path / files.tar, max_member_bytes=limit):
        media = sample.media_member()
        assert media is not None and media[0] == "mp4"
        row = rows[sample.key]
        assert hashlib.sha256(media[1]).hexdigest() == row["image_sha256"]
        with av.open(io.BytesIO(media[1]), "r") as container:
            stream = container.streams.video[0]
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            assert stream.average_rate == row["fps"]
        assert len(decoded) == row["frames"]
        assert decoded[0].shape == (row["height"], row["width"], 3)
        seen += 1
    assert seen == 2


def test_an_image_shard_keeps_its_layout(tmp_path: Path) -> None:
    codec = image_codec("png")
    pixels = np.arange(SIZE * SIZE * 3, dtype=np.uint8).reshape(SIZE, SIZE, 3)
    data = codec.encode(pixels)
    media = codec.media(data, Shape(1, SIZE, SIZE), codec.fingerprint(codec.decode(data)))
    sample = Sample(_request(0), hashlib.sha256(data).hexdigest(), media, scores={"s": 0.5})
    ctx = context(None)
    write_shard(tmp_path, 0, [sample], ctx, COLUMNS)
    files = shard_files(0)
    table = pq.read_table(tmp_path / files.parquet)
    assert table.column_names == [*(f.name for f in ROW_FIELDS), "s", "rejected_image"]
    assert table.schema == sample_schema(COLUMNS, ctx, CLASSES)
    features = json.loads(table.schema.metadata[HF_METADATA_KEY])["info"]["features"]
    assert features["rejected_image"] == {"_type": "Image"}
    with tarfile.open(tmp_path / files.tar) as tf:
        assert tf.getnames() == ["k-0.cls", "k-0.json", "k-0.png", "k-0.txt"]
        prov = json.loads(tf.extractfile("k-0.json").read())  # type: ignore[union-attr]
    assert not set(VIDEO_COLUMNS) & set(prov)


def _manifest(tmp_path: Path, fmt: str, stats: ShardEntry) -> Manifest:
    recipe = {
        "name": "moving",
        "classes": [{"id": k, "name": v} for k, v in CLASSES.items()],
        "sampling": {"num_frames": FRAMES, "fps": FPS, "width": SIZE, "height": SIZE},
        "output": {"video_format": fmt},
        "model": {},
    }
    return Manifest(
        status="complete",
        recipe_name="moving",
        recipe_hash="ab" * 32,
        recipe=recipe,
        created_at="2024-01-01T00:00:00Z",
        finished_at="2024-01-01T00:01:00Z",
        versions={},
        model=ModelInfo.model_validate(
            {"path": "m", "sha256": "0" * 64, "class": "AnimateDiffPipeline"}
        ),
        scorers=[],
        score_columns=list(COLUMNS),
        counts=Counts(
            planned=4,
            attempted=4,
            accepted=2,
            rejected=1,
            failed=1,
            planned_per_class={"zero": 2, "one": 2},
        ),
        shards=[stats],
    )


def test_the_card_declares_a_video_feature_and_load_yields_clips(tmp_path: Path) -> None:
    import datasets

    samples = clip_samples("mp4-lossless")
    stats = write_shard(tmp_path, 0, samples, context("mp4-lossless"), COLUMNS)
    entry = ShardEntry(shard=0, files=stats.files, accepted=2, rejected=1, failed=1)
    manifest = _manifest(tmp_path, "mp4-lossless", entry)
    (tmp_path / MANIFEST_NAME).write_text(manifest.model_dump_json(by_alias=True))

    meta = card_metadata(manifest)
    features = meta["dataset_info"][0]["features"]
    assert features[0] == {"name": "mp4", "dtype": "video"}
    assert meta["task_categories"] == ["video-classification"] and "video" in meta["tags"]
    parsed = datasets.Features._from_yaml_list(features)
    assert isinstance(parsed["mp4"], datasets.Video)
    text = card_text(tmp_path, manifest)
    assert "`KEY.mp4` (the clip: 8 frames at 8 fps" in text and "2 accepted clips" in text

    write_card(tmp_path, manifest)
    ds = datasets.load_dataset(str(tmp_path), split="train", cache_dir=str(tmp_path / "hf"))
    assert isinstance(ds.features["mp4"], datasets.Video)
    assert ds.features["cls"].names == ["zero", "one"]
    raw = ds.cast_column("mp4", datasets.Video(decode=False))
    by_key = {s.request.key: s for s in samples}
    assert {r["__key__"]: r["mp4"]["bytes"] for r in raw} == {
        k: by_key[k].media.data for k in ("k-0", "k-2")
    }

    corpus = synthgen.load(tmp_path)
    assert corpus.is_video
    clips = list(corpus.clips())
    assert sorted(c.key for c in clips) == ["k-0", "k-2"]
    for c in clips:
        assert c.frames.shape == (FRAMES, SIZE, SIZE, 3) and c.frames.dtype == np.uint8
        assert np.array_equal(c.frames, blob(FRAMES, SIZE, shift=2 * int(c.key[-1])))
        assert (c.label, c.class_name, c.fps, c.duration_s) == (0, "zero", FPS, 1.0)
        assert c.prompt == by_key[c.key].request.prompt and c.data == by_key[c.key].media.data


def test_the_manifest_says_why_lossy_clips_carry_no_watermark(model_dir: Path) -> None:
    from synthgen.pipelines.session import _lossy_clips
    from synthgen.schemas.recipe import recipe_from_dict
    from synthgen.storage.watermark import watermark_info
    from tests.conftest import tiny_recipe_dict

    def recipe(**output: str) -> object:
        data = tiny_recipe_dict(model_dir)
        data["sampling"] = {**data["sampling"], "height": 256, "width": 256, "num_frames": 6}
        data["output"] = {**data["output"], **output}
        return recipe_from_dict(data)

    lossy, lossless = recipe(), recipe(video_format="mp4-lossless")
    assert _lossy_clips(lossy) == "mp4" and _lossy_clips(lossless) is None
    assert _lossy_clips(recipe_from_dict(tiny_recipe_dict(model_dir))) is None  # images
    said = watermark_info("ab" * 32, 256, 256, _lossy_clips(lossy))["skipped"]
    assert said is not None and "clips encoded as mp4, a lossy codec" in said
    assert "mp4-lossless carries it" in said
    assert watermark_info("ab" * 32, 256, 256, _lossy_clips(lossless))["skipped"] is None
    small = watermark_info("ab" * 32, 16, 16, "mp4")["skipped"]  # too small says so first
    assert small is not None and "smaller than" in small


def test_plan_counts_clips_and_says_how_long_and_how_stored(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from synthgen.pipelines import cli

    recipe = Path(__file__).parents[2] / "recipes" / "moving-digits.yaml"
    assert cli.main(["plan", str(recipe)]) == 0
    said = capsys.readouterr().out
    assert "200 clips in 2 shard(s) of up to 100; 16x16, 8 frames at 8 fps (mp4)" in said
