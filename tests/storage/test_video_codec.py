"""The clip codecs (`mp4`, `mp4-lossless`): reproducible bytes, faithful decoding, the
fingerprint and frame strips, and sizes refused by name."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from pydantic import ValidationError

from synthgen.schemas.media import VIDEO_FORMATS, Shape, sampled_frames, video_media
from synthgen.schemas.recipe.output import OutputSpec, output_media_problem
from synthgen.storage.codecs import (
    UnknownFormat,
    codec_class,
    codec_for_extension,
    image_codec,
    preview_image,
    video_codec,
)
from synthgen.storage.codecs.mp4 import (
    Mp4Codec,
    Mp4LosslessCodec,
    VideoEncoding,
    decode_frames,
    rgb_to_yuv420,
    yuv420_to_rgb,
)
from synthgen.validators.dedup import hamming
from tests.storage.clips import blob, clip

ROOT = Path(__file__).resolve().parents[2]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def _digest_in_subprocess(fmt: str) -> str:
    """The sha256 of the clip's bytes as a fresh Python process encodes it."""
    script = (
        "import hashlib\n"
        "from synthgen.storage.codecs import video_codec\n"
        "from tests.storage.clips import clip\n"
        f"data = video_codec({fmt!r}, 8).encode(clip(8, 32, 32))\n"
        "print(hashlib.sha256(data).hexdigest())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=ROOT,
    )
    return done.stdout.strip()


@pytest.mark.parametrize("fmt", sorted(VIDEO_FORMATS))
def test_the_same_frames_give_the_same_bytes_in_one_process_and_across_processes(
    fmt: str,
) -> None:
    frames = clip(8, 32, 32)
    codec = video_codec(fmt, 8)
    first, second = codec.encode(frames), codec.encode(frames.copy())
    assert first == second
    here = hashlib.sha256(first).hexdigest()
    assert [_digest_in_subprocess(fmt), _digest_in_subprocess(fmt)] == [here, here]
    changed = frames.copy()
    changed[3, 5, 5] ^= 0xFF
    assert codec.encode(changed) != first, "the bytes follow the frames"
    assert codec.encode(frames, fps=12) != first, "and the frame rate"


def test_no_encoder_version_or_clock_is_in_the_bytes() -> None:
    data = video_codec("mp4", 8).encode(clip(4, 16, 16))
    assert data[4:8] == b"ftyp"
    for text in (b"x264", b"Lavf", b"core ", b"options:"):
        assert text not in data, text
    with av.open(io.BytesIO(data), "r") as container:
        assert "creation_time" not in container.metadata
        assert "encoder" not in container.metadata
        assert "creation_time" not in container.streams.video[0].metadata


@pytest.mark.parametrize(("height", "width"), [(15, 17), (16, 16), (32, 32)])
def test_the_lossless_codec_decodes_to_exactly_the_frames(height: int, width: int) -> None:
    rng = np.random.default_rng(height)
    frames = rng.integers(0, 256, (5, height, width, 3), dtype=np.uint8)
    codec = video_codec("mp4-lossless", 8)
    assert codec.lossless and codec.kind == "video"
    decoded = codec.decode(codec.encode(frames))
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, frames)


@pytest.mark.parametrize(("frames", "size"), [(8, 16), (9, 32)])
def test_the_lossy_codec_keeps_count_size_and_is_close(frames: int, size: int) -> None:
    source = clip(frames, size, size)
    codec = video_codec("mp4", 8)
    decoded = codec.decode(codec.encode(source))
    assert decoded.shape == source.shape and decoded.dtype == np.uint8
    assert psnr(decoded, source) > 30


def test_rgb_to_yuv_is_the_codecs_own_exact_arithmetic() -> None:
    """At crf 0 H.264 4:2:0 is lossless: what decodes is exactly the numpy round trip, so
    no other conversion (libswscale) touched the frames on the way in or out."""
    source = clip(3, 16, 32)
    exact = Mp4Codec(VideoEncoding(crf=0))
    decoded = exact.decode(exact.encode(source))
    expected = np.stack([yuv420_to_rgb(rgb_to_yuv420(f)) for f in source])
    assert np.array_equal(decoded, expected)
    grey = np.full((2, 2, 3), 128, np.uint8)
    assert np.array_equal(yuv420_to_rgb(rgb_to_yuv420(grey)), grey)


@pytest.mark.parametrize("fmt", sorted(VIDEO_FORMATS))
def test_pyav_reads_frame_count_size_and_rate(fmt: str) -> None:
    source = clip(12, 16, 32)
    data = video_codec(fmt, 6).encode(source)
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 32, 16)
        assert stream.average_rate == 6 and stream.frames == 12
        assert container.duration == 2_000_000  # microseconds: 12 frames at 6 fps
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    ours = video_codec(fmt, 6).decode(data)
    assert len(decoded) == 12 and decoded[0].shape == (16, 32, 3)
    assert np.abs(np.stack(decoded).astype(int) - ours).max() <= (0 if fmt != "mp4" else 8)


@pytest.mark.parametrize("size", [16, 32])
def test_the_fingerprint_finds_the_same_clip_and_tells_others_apart(size: int) -> None:
    codec = video_codec("mp4", 8)
    source = blob(8, size)
    data = codec.encode(source)
    decoded = codec.decode(data)
    fingerprint = codec.fingerprint(decoded)
    assert len(fingerprint) == 16 * 4 and int(fingerprint, 16) >= 0
    again = codec.encode(source.copy())
    assert again == data, "the same clip, the same bytes"
    decoded_again = codec.decode(again)
    assert np.array_equal(decoded_again, decoded), "the same bytes, the same frames"
    assert codec.fingerprint(decoded_again) == fingerprint, "the same frames, the same hash"
    assert hamming(codec.fingerprint(source), fingerprint) <= 16, "lossy coding moves few bits"
    moved = codec.decode(codec.encode(blob(8, size, shift=size / 3)))
    assert hamming(codec.fingerprint(moved), fingerprint) > 64
    noise = np.random.default_rng(1).integers(0, 256, source.shape, dtype=np.uint8)
    assert hamming(codec.fingerprint(noise), fingerprint) > 64
    # the per-frame hashes are the image codecs' phash of the sampled frames
    png = image_codec("png")
    first = png.fingerprint(png.decode(png.encode(decoded[0])))
    assert fingerprint[:16] == first
    assert sampled_frames(8, 4) == [0, 2, 5, 7] and sampled_frames(3, 4) == [0, 1, 2]


def test_thumbnail_and_preview_are_strips_of_evenly_spaced_frames() -> None:
    codec = video_codec("mp4-lossless", 8)
    source = clip(8, 16, 24)
    data = codec.encode(source)
    strip = codec.preview(codec.decode(data))
    assert strip.mode == "RGB" and strip.size == (4 * 24 + 3, 16)
    strip_pixels = np.asarray(strip)
    for i, frame in enumerate(sampled_frames(8, 4)):
        assert np.array_equal(strip_pixels[:, i * 25 : i * 25 + 24], source[frame])
    assert codec.thumbnail(codec.decode(data), 12).size == (4 * 12 + 3, 8)
    shown = preview_image(data)  # what the report shows, from the bytes alone
    assert np.array_equal(np.asarray(shown), strip_pixels)
    png = image_codec("png").encode(source[0])
    assert np.array_equal(np.asarray(preview_image(png)), source[0])


def test_decoding_bytes_from_elsewhere_is_bounded() -> None:
    data = video_codec("mp4", 8).encode(clip(6, 16, 32))
    assert decode_frames(data, Shape(6, 16, 32)).shape == (6, 16, 32, 3)
    with pytest.raises(ValueError, match="more than the 5 frames of 32x16"):
        video_codec("mp4", 8).decode(data, Shape(5, 16, 32))
    with pytest.raises(ValueError, match="frame 1 of 32x16: more than the 6 frames of 16x16"):
        decode_frames(data, Shape(6, 16, 16))
    with pytest.raises(av.error.InvalidDataError):
        decode_frames(b"\x00\x00\x00\x18ftypisom" + bytes(40))


def test_codecs_by_name_and_extension() -> None:
    assert codec_class("mp4") is Mp4Codec and codec_class("mp4-lossless") is Mp4LosslessCodec
    assert codec_for_extension(".MP4") is Mp4Codec
    assert video_codec("mp4", 12).options.fps == 12
    with pytest.raises(UnknownFormat, match="'png' is an image format"):
        video_codec("png")
    with pytest.raises(UnknownFormat, match=r"'avi'.*png.*video codecs: mp4, mp4-lossless"):
        codec_class("avi")
    media = video_media(b"x", "mp4-lossless", 8, 16, 16)
    assert media.is_video and not media.is_image and media.frames == 8
    assert (media.extension, media.media_type) == ("mp4", "video/mp4")
    provenance = video_codec("mp4", 8).provenance()
    assert provenance["format"] == "mp4" and provenance["fps"] == 8 and provenance["crf"] == 18
    assert "x264 core" in provenance["encoder"] and "threads=1" in provenance["encoder"]


def test_odd_sizes_and_misplaced_formats_are_refused_by_name() -> None:
    codec = video_codec("mp4", 8)
    with pytest.raises(ValueError, match=r"mp4 \(H.264 4:2:0\) needs an even width and height"):
        codec.encode(clip(2, 16, 15))
    with pytest.raises(ValueError, match=r"uint8 \(frames, height, width, 3\)"):
        codec.encode(clip(2, 16, 16)[0])
    out = OutputSpec()
    problem = output_media_problem(out, 8, 15, 16)
    assert problem is not None and "15x16" in problem and "mp4-lossless" in problem
    assert output_media_problem(out, 8, 16, 16) is None
    assert output_media_problem(OutputSpec(video_format="mp4-lossless"), 8, 15, 17) is None
    misplaced = output_media_problem(OutputSpec(video_format="mp4-lossless"), None, 16, 16)
    assert misplaced is not None and "video builds only" in misplaced
    assert output_media_problem(out, None, 15, 15) is None, "an image build: any size"
    with pytest.raises(ValidationError, match="mp4 is a video format"):
        OutputSpec(image_format="mp4")
    with pytest.raises(ValidationError, match="video_format"):
        OutputSpec(video_format="avi")  # type: ignore[arg-type]


def test_the_video_format_enters_the_recipe_hash_only_when_not_the_default() -> None:
    from synthgen.schemas.recipe import RecipeError, read_recipe_dict, recipe_from_dict

    data = read_recipe_dict(ROOT / "recipes" / "digits.yaml")
    data["sampling"] = {**data["sampling"], "num_frames": 8}
    plain = recipe_from_dict(data).hash
    data["output"] = {**data.get("output", {}), "video_format": "mp4"}
    assert recipe_from_dict(data).hash == plain
    data["output"]["video_format"] = "mp4-lossless"
    assert recipe_from_dict(data).hash != plain
    del data["sampling"]["num_frames"]  # an image build: a video format is refused by name
    with pytest.raises(RecipeError, match="video_format mp4-lossless applies to video builds"):
        recipe_from_dict(data)
