"""Text-to-video families, tiny with random weights: each saved as a model folder, loaded by
synthgen's loader and called through synthgen's generation call (`call_model`, then
`to_frames`), with the frame count and size the recipe asks for, the same clip for the same
seed; recipes that ask a family for what it cannot make are refused by name."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthgen.generators.families import FAMILIES, VIDEO_FAMILIES, check_recipe_options
from synthgen.generators.handler import (
    GenerationSettings,
    call_model,
    check_media_kind,
    finish_image,
    plan_calls,
    run_call,
)
from synthgen.generators.model_folder import check_clip_length, inspect_folder, load_pipeline
from synthgen.generators.random_pipelines import save_snapshot
from synthgen.generators.video import clip_watermarked, to_frames
from synthgen.pipelines.build import run_build
from synthgen.schemas.media import Shape
from synthgen.schemas.recipe import RecipeError, recipe_from_dict
from synthgen.schemas.records import GenerationRequest
from synthgen.storage.codecs import video_codec
from synthgen.storage.watermark import read_watermark, watermark_payload
from tests.conftest import tiny_recipe_dict, write_recipe
from tests.video import clip_recipe, clips_and_sidecars
from tests.video import pyav_frames as _pyav

# family -> (pipeline class, height, width, frames): the smallest clip each tiny model makes
CLIPS = {
    "wan": ("WanPipeline", 16, 16, 5),
    "ltx": ("LTXPipeline", 32, 32, 9),
    "cogvideox": ("CogVideoXPipeline", 16, 16, 9),
    "animatediff": ("AnimateDiffPipeline", 16, 16, 6),
}


@pytest.fixture(scope="module")
def video_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("video-models")


_LOADED: dict[str, tuple[Path, Any]] = {}


def _model(root: Path, family: str) -> tuple[Path, Any]:
    """The family's tiny folder (built once per module) and its pipeline, loaded by synthgen."""
    if family not in _LOADED:
        folder = save_snapshot(family, root / family, seed=0)
        _LOADED[family] = (folder, load_pipeline(folder, "native", "float32", "cpu", 1))
    return _LOADED[family]


def _settings(folder: Path, family: str, **extra: Any) -> GenerationSettings:
    pipeline_class, height, width, frames = CLIPS[family]
    base: dict[str, Any] = dict(
        model_path=str(folder),
        scheduler="native",
        steps=2,
        guidance_scale=2.0,
        height=height,
        width=width,
        dtype="float32",
        device="cpu",
        compute_batch=2,
        cpu_threads=1,
        image_format="png",
        png_compress_level=1,
        quality=95,
        pipeline_class=pipeline_class,
        num_frames=frames,
        fps=8,
    )
    return GenerationSettings(**(base | extra))


def _requests(*seeds: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            key=f"clip-{seed}",
            shard=0,
            index=seed,
            class_label=0,
            class_name="zero",
            prompt="a handwritten digit 0 moving",
            negative_prompt="blurry",
            seed=seed,
        )
        for seed in seeds
    ]


@pytest.mark.parametrize("family", list(CLIPS))
def test_video_family_makes_clips_of_the_recipe_length_and_size(
    family: str, video_root: Path
) -> None:
    folder, pipe = _model(video_root, family)
    pipeline_class, height, width, frames = CLIPS[family]
    assert inspect_folder(folder).class_name == pipeline_class
    assert type(pipe).__name__ == pipeline_class
    settings = _settings(folder, family)
    (call,) = plan_calls(settings, _requests(1, 2, 1))[:1]  # seeds 1, 2 in one call
    assert [r.seed for r in call.requests] == [1, 2]
    raw = call_model(pipe, settings, call)
    assert tuple(raw.shape) == (2, frames, 3, height, width)  # (N, F, C, H, W) on the device
    out = to_frames(raw)
    assert out.pixels.dtype == np.uint8
    assert out.pixels.shape == (2, frames, height, width, 3)
    assert out.finite == [True, True]
    # quantised as images are: clip to [0, 1], times 255, round half to even
    expected = np.rint(np.clip(raw.float().numpy(), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out.pixels, expected.transpose(0, 1, 3, 4, 2))
    again = run_call(pipe, settings, call)  # the same seeds: the same clips, bit for bit
    np.testing.assert_array_equal(again.pixels, out.pixels)
    assert not np.array_equal(out.pixels[0], out.pixels[1]), "two seeds, one clip"
    assert out.pixels[0].std(axis=0).max() > 0, "the frames of a clip differ"


def test_ltx_is_called_with_the_recipe_frame_rate(video_root: Path) -> None:
    """LTX conditions on the frame rate: the recipe's fps reaches the call (and changes it)."""
    folder, pipe = _model(video_root, "ltx")
    seen: list[dict[str, Any]] = []
    original = type(pipe).__call__

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return original(self, *args, **kwargs)

    call = plan_calls(_settings(folder, "ltx"), _requests(3))[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(pipe), "__call__", spy)
        at8 = run_call(pipe, _settings(folder, "ltx", fps=8), call).pixels
        at24 = run_call(pipe, _settings(folder, "ltx", fps=24), call).pixels
    assert [(k["num_frames"], k["frame_rate"]) for k in seen] == [(9, 8), (9, 24)]
    assert not np.array_equal(at8, at24)


def test_a_bare_image_call_is_unchanged_by_video_settings() -> None:
    """Image settings record no clip options: an image build's provenance is as it was."""
    s = _settings(Path("m"), "wan")
    image = dataclasses.replace(s, num_frames=None, pipeline_class="StableDiffusionPipeline")
    assert not image.video
    assert {"num_frames", "fps", "video_format"}.isdisjoint(image.generation_options())
    assert s.generation_options()["num_frames"] == 5
    assert s.generation_options()["fps"] == 8


def test_a_worker_refuses_settings_of_the_other_media_kind() -> None:
    s = _settings(Path("m"), "wan")
    check_media_kind("WanPipeline", s)
    with pytest.raises(ValueError, match=r"WanPipeline \(wan\) makes clips; .*num_frames None"):
        check_media_kind("WanPipeline", dataclasses.replace(s, num_frames=None))
    with pytest.raises(ValueError, match=r"StableDiffusionPipeline \(sd\) makes images"):
        check_media_kind("StableDiffusionPipeline", s)


# -- refusals -------------------------------------------------------------------------------


def _recipe(model_dir: Path, **sampling: Any) -> Any:
    data = tiny_recipe_dict(model_dir)
    data["sampling"] |= sampling
    return recipe_from_dict(data)


@pytest.mark.parametrize(
    ("class_name", "sampling", "message"),
    [
        ("WanPipeline", {"num_frames": 6}, r"num_frames: WanPipeline \(wan, flow\).*4k\+1.*got 6"),
        ("LTXPipeline", {"num_frames": 5}, r"num_frames: LTXPipeline \(ltx, flow\).*8k\+1"),
        ("CogVideoXPipeline", {"num_frames": 13}, r"CogVideoXPipeline \(cogvideox.*8k\+1"),
        ("WanPipeline", {}, r"num_frames: WanPipeline \(wan.*text-to-video model"),
        ("AnimateDiffPipeline", {}, r"num_frames: AnimateDiffPipeline.*text-to-video"),
        ("StableDiffusionPipeline", {"num_frames": 9}, r"num_frames: .*\(sd,.*image model"),
        ("FluxPipeline", {"num_frames": 9}, r"num_frames: FluxPipeline .*image model"),
        ("LTXPipeline", {"num_frames": 9, "height": 48}, r"height/width: LTXPipeline.*of 32"),
        ("WanPipeline", {"num_frames": 9, "width": 24}, r"height/width: WanPipeline.*of 16"),
    ],
)
def test_a_family_refuses_what_it_cannot_make_by_name(
    class_name: str, sampling: dict[str, Any], message: str, model_dir: Path
) -> None:
    sampling = {"scheduler": "native", "height": 32, "width": 32} | sampling
    recipe = _recipe(model_dir, **sampling)
    with pytest.raises(RecipeError, match=message):
        check_recipe_options(recipe, class_name, FAMILIES[class_name])


def test_each_video_family_accepts_its_own_frame_counts(model_dir: Path) -> None:
    accepted = {"WanPipeline": 9, "LTXPipeline": 17, "CogVideoXPipeline": 17}
    accepted |= {"AnimateDiffPipeline": 7}
    for class_name, frames in accepted.items():
        recipe = _recipe(model_dir, scheduler="native", num_frames=frames, height=32, width=32)
        check_recipe_options(recipe, class_name, VIDEO_FAMILIES[class_name])


def test_fps_without_num_frames_is_refused(model_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"fps: the frame rate of clips; set num_frames"):
        _recipe(model_dir, fps=24)


def test_animatediff_clip_longer_than_its_motion_module_is_refused(video_root: Path) -> None:
    folder, _ = _model(video_root, "animatediff")
    checked = inspect_folder(folder)
    check_clip_length(checked, 32)
    with pytest.raises(RecipeError, match=r"num_frames: AnimateDiffPipeline.*at most 32 frames"):
        check_clip_length(checked, 33)


def test_a_video_recipe_with_an_image_model_is_refused_before_any_output(
    model_dir: Path, tmp_path: Path
) -> None:
    data = tiny_recipe_dict(model_dir)
    data["sampling"] |= {"num_frames": 9}
    recipe = write_recipe(tmp_path / "recipe.yaml", data)
    with pytest.raises(RecipeError, match=r"num_frames: StableDiffusionPipeline \(sd,"):
        run_build(recipe, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


# -- a clip's host work ---------------------------------------------------------------------


def _clip(frames: int = 3, side: int = 256, block: int = 16) -> Any:
    """A clip of `block`-pixel coloured squares moving 2 pixels a frame (block 1: noise)."""
    rng = np.random.default_rng(0)
    squares = rng.integers(40, 200, (side // block, side // block, 3))
    base = np.kron(squares, np.ones((block, block, 1), dtype=np.int64))
    return np.stack([np.roll(base, 2 * i, axis=1) for i in range(frames)]).astype(np.uint8)


def test_a_lossless_clip_carries_the_watermark_in_every_frame(video_root: Path) -> None:
    payload = watermark_payload("ab" * 32)
    settings = dataclasses.replace(
        _settings(video_root, "wan"), video_format="mp4-lossless", watermark=payload.hex(), fps=12
    )
    frames = _clip(block=1)  # the watermark needs texture to hide in
    (request,) = _requests(5)
    sample, stored = finish_image(request, frames, True, settings)
    assert sample.media.shape == Shape(3, 256, 256)
    assert (sample.media.media_type, sample.media.extension) == ("video/mp4", "mp4")
    assert sample.image_sha256 == hashlib.sha256(sample.media.data).hexdigest()
    decoded, rate = _pyav(sample.media.data)
    np.testing.assert_array_equal(decoded, stored)  # lossless: the file is the frames
    assert rate == 12
    assert sample.media.fingerprint == video_codec("mp4-lossless").fingerprint(stored)
    assert not np.array_equal(stored, frames)  # watermarked
    assert all(read_watermark(frame, len(payload)) == payload for frame in stored)


def test_a_lossy_clip_is_not_watermarked_and_scored_as_stored(video_root: Path) -> None:
    settings = dataclasses.replace(
        _settings(video_root, "wan"), video_format="mp4", watermark="ab" * 8
    )
    assert not clip_watermarked(settings, 256, 256)
    frames = _clip()
    (request,) = _requests(6)
    sample, stored = finish_image(request, frames, True, settings)
    np.testing.assert_array_equal(stored, video_codec("mp4").decode(sample.media.data))
    assert not np.array_equal(stored, frames)  # H.264 4:2:0: what is stored, not generated
    assert np.abs(stored.astype(int) - frames).mean() < 4
    assert sample.media.shape == Shape(3, 256, 256)
    again, _ = finish_image(request, frames, True, settings)
    assert again.media.data == sample.media.data  # deterministic bytes


def test_a_non_finite_clip_fails(video_root: Path) -> None:
    (request,) = _requests(7)
    settings = _settings(video_root, "wan")
    with pytest.raises(FloatingPointError, match="clip"):
        finish_image(request, _clip(2, 16), False, settings)


# -- a video build, end to end ----------------------------------------------------------------


def test_a_tiny_video_build_writes_clips_pyav_reads_as_the_parquet_states(
    video_root: Path, model_dir: Path, tmp_path: Path
) -> None:
    from synthgen.generators.regenerate import Inputs, regenerate
    from tests.conftest import read_rows

    folder, _ = _model(video_root, "animatediff")
    data = clip_recipe(folder, "animatediff", model_dir, fps=12)
    data["output"] = tiny_recipe_dict(model_dir)["output"]
    out = tmp_path / "out"
    run_build(write_recipe(tmp_path / "recipe.yaml", data), out, show_progress=False)
    rows = read_rows(out).to_pylist()
    assert len(rows) == 4
    stated = {r["key"]: r for r in rows}
    clips, sidecars = clips_and_sidecars(out)
    accepted = {k for k, r in stated.items() if r["status"] == "accepted"}
    assert accepted and set(clips) == accepted
    for key, data_ in clips.items():
        frames, rate = _pyav(data_)
        row = stated[key]
        assert (row["frames"], row["fps"], row["codec"]) == (6, 12, "mp4")
        assert row["duration_s"] == pytest.approx(0.5)
        assert frames.shape == (row["frames"], row["height"], row["width"], 3) == (6, 16, 16, 3)
        assert rate == row["fps"]
        assert row["image_sha256"] == hashlib.sha256(data_).hexdigest()
    key = sorted(clips)[0]  # regenerated from its sidecar's provenance, byte for byte
    assert regenerate(sidecars[key], Inputs.for_build(out)) == clips[key]
    # the build's own corpus checks decode the clips; the report shows them as frame strips
    from synthgen.validators.corpus import validate_dir

    assert validate_dir(out).failures == []
    assert "data:image/png;base64," in (out / "report.html").read_text()
