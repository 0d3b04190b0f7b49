"""Scoring and checking clips: CLIP on sampled frames, temporal checks, near-duplicate clips.

Clips are made here with numpy: an 8x8 sklearn digit shifted across a 16x16 frame, and
scored with the bundled digits CLIP (models/digits-clip)."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from synthgen.schemas.media import Media, Shape, image_media
from synthgen.schemas.recipe import Recipe, RecipeError, recipe_from_dict
from synthgen.schemas.records import GenerationRequest, Sample, sample_features
from synthgen.validators.apply import apply_checks
from synthgen.validators.base import BuildCheck, BuildFeatures, Check
from synthgen.validators.build_checks import recipe_checks
from synthgen.validators.checks.near_duplicate_clip import clip_bands
from synthgen.validators.frames import frame_indices
from synthgen.validators.scorers.temporal import FLOOR, temporal_scores
from synthgen.validators.scoring import (
    LoadedScorers,
    ScoreSamples,
    build_scorers,
    prepare_sample,
    score_columns,
    score_prepared,
    score_samples,
)
from tests.validators.conftest import png

ROOT = Path(__file__).resolve().parents[2]
FRAMES = 8
SIZE = 16
BATCH = 5
SCORERS = ("clip", "clip_embedding", "image_stats", "safety_concepts")
PREFIX = "clip_digits_clip"


# -- clips ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """sklearn's digits as uint8 8x8 images (their labels: `label_of`)."""
    from sklearn.datasets import load_digits

    images = load_digits().images  # (n, 8, 8) in 0..16
    return np.asarray((images * (255 / 16)).round(), dtype=np.uint8)


def label_of(index: int) -> int:
    from sklearn.datasets import load_digits

    return int(load_digits().target[index])


def frame(digit: np.ndarray, x: int, y: int = 4) -> np.ndarray:
    """One RGB frame: `digit` (8x8) with its top-left corner at (x, y) on black."""
    out = np.zeros((SIZE, SIZE), dtype=np.uint8)
    out[y : y + 8, x : x + 8] = digit
    return np.repeat(out[:, :, None], 3, axis=2)


def moving(digit: np.ndarray) -> np.ndarray:
    """The digit moving one pixel to the right each frame: (F, 16, 16, 3)."""
    return np.stack([frame(digit, t) for t in range(FRAMES)])


def frozen(digit: np.ndarray) -> np.ndarray:
    return np.stack([frame(digit, 3)] * FRAMES)


def alternating(digit: np.ndarray) -> np.ndarray:
    """Frames alternating between the digit on the left and on the right."""
    return np.stack([frame(digit, 0 if t % 2 == 0 else 8) for t in range(FRAMES)])


def cut(digit: np.ndarray) -> np.ndarray:
    """The moving digit with every frame from the fifth on inverted: one sudden jump."""
    clip = moving(digit)
    clip[4:] = 255 - clip[4:]
    return clip


def clip_sample(key: str, clip: np.ndarray, label: int) -> Sample:
    request = GenerationRequest(key, 0, 0, label, str(label), f"a handwritten digit {label}", "", 0)
    media = Media(b"", "video/mp4", "mp4", Shape(*clip.shape[:3]))
    return Sample(request, hashlib.sha256(clip.tobytes()).hexdigest(), media)


# -- recipes -------------------------------------------------------------------------------
def digits_recipe(num_frames: int | None, *scorers: str, **checks: Any) -> Recipe:
    """recipes/digits.yaml at 16x16, made a video build by `num_frames`, with `scorers`
    and `checks` (clip_score and unsafe off unless given: the digits CLIP has no
    calibrated safety thresholds)."""
    data = yaml.safe_load((ROOT / "recipes" / "digits.yaml").read_text(encoding="utf-8"))
    data["model"]["path"] = str(ROOT / "models" / "digits-ldm")
    data["scoring"] = {
        "clip_model": str(ROOT / "models" / "digits-clip"),
        "batch_size": BATCH,
        "scorers": [{"name": n} for n in scorers or SCORERS],
    }
    for block in ("reference", "validation"):
        data.pop(block)
    data["checks"] = {"clip_score": None, "unsafe": None, **checks}
    if num_frames is not None:
        data["sampling"]["num_frames"] = num_frames
    return recipe_from_dict(data)


def loaded_for(recipe: Recipe) -> LoadedScorers:
    return ScoreSamples(build_scorers(recipe, ROOT), "cpu").load_model()


@pytest.fixture(scope="module")
def video_recipe() -> Recipe:
    return digits_recipe(FRAMES)


@pytest.fixture(scope="module")
def loaded(video_recipe: Recipe) -> LoadedScorers:
    return loaded_for(video_recipe)


def scored_clips(
    loaded: LoadedScorers, clips: Sequence[tuple[str, np.ndarray, int]]
) -> list[Sample]:
    prepared = [prepare_sample(loaded, clip_sample(k, c, label), c) for k, c, label in clips]
    return score_prepared(loaded, prepared)


def decided(recipe: Recipe, loaded: LoadedScorers, samples: Sequence[Sample]) -> list[Sample]:
    checks, _ = recipe_checks(recipe, score_columns(loaded.scorers))
    return [apply_checks(s, checks) for s in samples]


# -- temporal checks -----------------------------------------------------------------------
def test_frozen_and_flickering_clips_are_rejected_and_a_moving_one_is_kept(
    digits: np.ndarray, video_recipe: Recipe, loaded: LoadedScorers
) -> None:
    clips = [
        ("moving", moving(digits[3]), 3),
        ("frozen", frozen(digits[3]), 3),
        ("alternating", alternating(digits[3]), 3),
        ("cut", cut(digits[3]), 3),
    ]
    by_key = {s.request.key: s for s in decided(video_recipe, loaded, scored_clips(loaded, clips))}
    assert {k: s.reject_reason for k, s in by_key.items()} == {
        "moving": None,
        "frozen": "frozen_clip",
        "alternating": "flicker",
        "cut": "flicker",
    }
    assert by_key["moving"].status == "accepted"
    assert by_key["frozen"].checks["frozen_clip"] == "frozen_clip"
    assert by_key["moving"].checks["flicker"] == "pass"
    # the scores the checks read, each from the clip's frames
    assert by_key["frozen"].scores["motion"] == 0.0
    assert 0.01 < by_key["moving"].scores["motion"] < 0.2
    assert by_key["moving"].scores["max_jump"] == pytest.approx(1.0, abs=0.3)
    assert by_key["cut"].scores["max_jump"] > 5.0
    assert by_key["alternating"].scores["max_spike"] > 3.0
    assert by_key["moving"].scores["max_spike"] < 1.5


def test_temporal_scores_follow_their_definitions(digits: np.ndarray) -> None:
    clip = moving(digits[5])
    steps = [np.abs(clip[t + 1].astype(int) - clip[t]).mean() / 255 for t in range(FRAMES - 1)]
    got = temporal_scores(clip)
    assert got["motion"] == pytest.approx(np.mean(steps))
    assert got["max_jump"] == pytest.approx(max(steps) / np.median(steps))
    # a clip still but for one change: the jump is measured against the floor, not zero
    still = np.stack([frame(digits[5], 2)] * 4 + [frame(digits[5], 6)] * 4)
    jump = np.abs(still[4].astype(int) - still[3]).mean() / 255
    assert temporal_scores(still)["max_jump"] == pytest.approx(jump / FLOOR)
    one = temporal_scores(still[:1])
    assert all(math.isnan(v) for v in one.values())


def test_clip_check_thresholds_come_from_the_recipe(
    digits: np.ndarray, loaded: LoadedScorers
) -> None:
    # a looser frozen threshold catches the moving clip too; `null` turns a check (or one of
    # its comparisons) off
    strict = digits_recipe(FRAMES, frozen_clip={"absolute": 0.5}, flicker={"absolute": None})
    samples = scored_clips(loaded, [("moving", moving(digits[3]), 3), ("cut", cut(digits[3]), 3)])
    strict_moving, strict_cut = decided(strict, loaded, samples)
    assert strict_moving.reject_reason == strict_cut.reject_reason == "frozen_clip"
    assert strict_cut.checks["flicker"] == "pass"  # its jump is not compared any more
    off = digits_recipe(FRAMES, frozen_clip=None, flicker={"spike": None})
    frozen_and_alternating = scored_clips(
        loaded, [("frozen", frozen(digits[3]), 3), ("alternating", alternating(digits[3]), 3)]
    )
    assert [s.reject_reason for s in decided(off, loaded, frozen_and_alternating)] == [None, None]
    with pytest.raises(RecipeError, match=r"checks\.flicker: absolute"):
        checks_of(digits_recipe(FRAMES, flicker={"absolute": 0.5}))


def checks_of(recipe: Recipe) -> tuple[list[Check], list[BuildCheck]]:
    return recipe_checks(recipe, score_columns(build_scorers(recipe, ROOT)))


def test_clip_checks_and_scorer_are_refused_by_name_in_an_image_build() -> None:
    image_recipe = digits_recipe(None)
    checks, build = checks_of(image_recipe)
    names = {c.name for c in checks} | {b.name for b in build}
    assert not names & {"frozen_clip", "flicker", "near_duplicate_clip"}
    assert "temporal" not in {s.name for s in build_scorers(image_recipe, ROOT)}
    for name in ("frozen_clip", "flicker"):
        with pytest.raises(RecipeError, match=rf"checks\.{name}: checks clips.*num_frames"):
            checks_of(digits_recipe(None, **{name: {"absolute": 0.1}}))
    with pytest.raises(ValueError, match="scorer 'temporal' measures clips"):
        build_scorers(digits_recipe(None, "clip", "temporal"), ROOT)


def test_a_video_build_gets_the_temporal_scorer_and_clip_checks_by_default(
    video_recipe: Recipe,
) -> None:
    scorers = build_scorers(video_recipe, ROOT)
    assert [s.name for s in scorers] == [*SCORERS, "temporal"]
    columns = [c.name for c in score_columns(scorers)]
    assert {f"{PREFIX}_score_min", "motion", "max_jump", "max_spike"} <= set(columns)
    checks, build = checks_of(video_recipe)
    assert {"frozen_clip", "flicker"} <= {c.name for c in checks}
    assert "near_duplicate" not in {b.name for b in build}


# -- CLIP and the other scorers on sampled frames --------------------------------------------
def frame_samples(key: str, clip: np.ndarray, label: int) -> list[Sample]:
    """The clip's sampled frames (scoring.frames: 4) as image samples of the same prompt."""
    out = []
    for i in frame_indices(len(clip), 4):
        data = png(clip[i])
        request = GenerationRequest(
            f"{key}-{i}", 0, i, label, str(label), f"a handwritten digit {label}", "", 0
        )
        media = image_media(data, "png", SIZE, SIZE)
        out.append(Sample(request, hashlib.sha256(data).hexdigest(), media))
    return out


def test_a_clip_scores_the_mean_and_min_of_its_frames_scored_one_by_one(
    digits: np.ndarray, loaded: LoadedScorers
) -> None:
    clips = [(f"c{i}", moving(digits[i]), label_of(i)) for i in (0, 7, 12)]
    scored = scored_clips(loaded, clips)
    for (key, clip, label), sample in zip(clips, scored, strict=True):
        frames = [score_samples(loaded, [s])[0].scores for s in frame_samples(key, clip, label)]

        def each(column: str, frames: list[Any] = frames) -> list[Any]:
            return [f[column] for f in frames]

        got = sample.scores
        assert got[f"{PREFIX}_score"] == pytest.approx(np.mean(each(f"{PREFIX}_score")), abs=1e-6)
        assert got[f"{PREFIX}_score_min"] == pytest.approx(min(each(f"{PREFIX}_score")), abs=1e-6)
        margin = np.mean(each(f"{PREFIX}_label_margin"))
        assert got[f"{PREFIX}_label_margin"] == pytest.approx(margin, abs=1e-6)
        assert got[f"{PREFIX}_score_min"] < got[f"{PREFIX}_score"]
        # the embedding: the frames' mean, normalised; safety: the worst frame; stats: mean
        mean = np.mean(each(f"{PREFIX}_embedding"), axis=0)
        embedding = np.asarray(got[f"{PREFIX}_embedding"])
        assert embedding == pytest.approx(mean / np.linalg.norm(mean), abs=1e-6)
        assert np.linalg.norm(embedding) == pytest.approx(1.0)
        assert got[f"{PREFIX}_unsafe"] == pytest.approx(max(each(f"{PREFIX}_unsafe")), abs=1e-6)
        for column in ("brightness", "sharpness", "entropy"):
            assert got[column] == pytest.approx(np.mean(each(column)))


def counting(target: Any, name: str) -> list[int]:
    """Count the calls of `target.name` (replaced by a counting wrapper)."""
    calls: list[int] = []
    original: Callable[..., Any] = getattr(target, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[0]))
        return original(*args, **kwargs)

    setattr(target, name, wrapper)
    return calls


@pytest.mark.parametrize("n_clips", [3, 5])
def test_clip_frames_go_through_clip_in_fixed_batches(
    digits: np.ndarray, video_recipe: Recipe, n_clips: int
) -> None:
    """N clips of K sampled frames: ceil(N * K / batch) image calls, each of `batch`
    images; one text pass per clip, not per frame."""
    loaded = loaded_for(video_recipe)
    model = loaded.states[0].bundle.model
    images = counting(model, "encode_image")
    texts = counting(model, "encode_text")
    clips = [(f"c{i}", moving(digits[i]), int(i % 10)) for i in range(n_clips)]
    scored_clips(loaded, clips)
    assert len(images) == math.ceil(n_clips * 4 / BATCH)
    assert set(images) == {BATCH}
    assert len(texts) == math.ceil(n_clips / BATCH)


# -- near-duplicate clips ------------------------------------------------------------------
def build_wide(check: BuildCheck, features: Sequence[BuildFeatures]) -> dict[str, str]:
    """What `check` tags over a whole build, group by group (as the deciding step runs it)."""
    groups: dict[Any, list[BuildFeatures]] = defaultdict(list)
    for f in features:
        for group in check.groups(f):
            groups[group].append(f)
    return {key: reason for members in groups.values() for key, reason in check.tag(members)}


def test_near_duplicate_clips_are_caught_and_distinct_ones_are_not(
    digits: np.ndarray, loaded: LoadedScorers
) -> None:
    recipe = digits_recipe(FRAMES, near_duplicate={"max_distance": 2})
    (check,) = [b for b in checks_of(recipe)[1] if b.name == "near_duplicate_clip"]
    assert check.duplicate
    original = moving(digits[3])
    touched = original.copy()
    touched[:, 0, 0] = 6  # a few darkest pixels a shade lighter
    reversed_clip = original[::-1].copy()  # the same frames, the other way
    clips = [
        ("a", original, 3),
        ("b", touched, 3),
        ("c", moving(digits[4]), 4),
        ("d", reversed_clip, 3),
        ("e", moving(digits[13]), 3),
    ]
    scored = scored_clips(loaded, clips)
    fingerprints = [s.media.fingerprint for s in scored]
    assert all(len(f) == 4 * 16 for f in fingerprints)
    assert fingerprints[0] == fingerprints[1] and len(set(fingerprints)) == 4
    tagged = build_wide(check, [BuildFeatures.of(sample_features(s)) for s in scored])
    assert tagged == {"b": "near_duplicate_clip"}


def test_clip_bands_share_a_band_within_the_limit() -> None:
    rng = np.random.default_rng(0)
    for limit in (0, 3, 8, 40):
        for _ in range(50):
            value = int.from_bytes(rng.bytes(32), "big")
            flips = rng.choice(256, size=int(rng.integers(0, limit + 1)), replace=False)
            other = value
            for bit in flips:
                other ^= 1 << int(bit)
            a, b = f"{value:064x}", f"{other:064x}"
            assert set(clip_bands(a, limit)) & set(clip_bands(b, limit))


def test_a_stored_clip_scores_as_its_frames_and_keeps_its_codecs_fingerprint(
    digits: np.ndarray, loaded: LoadedScorers
) -> None:
    """`score_samples` decodes a clip's mp4 bytes with its codec; a lossless clip scores as
    the pixels it was made from, and the fingerprint is the codec's own."""
    from synthgen.storage.codecs import video_codec

    clip = moving(digits[6])
    codec = video_codec("mp4-lossless")
    data = codec.encode(clip)
    stored = clip_sample("stored", clip, 6)
    stored = dataclasses.replace(stored, media=codec.media(data, Shape(*clip.shape[:3])))
    (from_bytes,) = score_samples(loaded, [stored])
    (from_pixels,) = scored_clips(loaded, [("stored", clip, 6)])
    assert from_bytes.scores == from_pixels.scores
    assert from_bytes.media.fingerprint == codec.fingerprint(clip)
    assert from_pixels.media.fingerprint == codec.fingerprint(clip)


def test_a_lossless_clip_must_carry_the_watermark_in_every_frame() -> None:
    """The watermark check reads every frame of a lossless clip; a lossy clip codec does not
    keep the payload, so a build of mp4 clips has no watermark check."""
    from synthgen.storage.watermark import embed_watermark, watermark_payload
    from synthgen.validators.checks.watermark import WatermarkSurvives

    def at_256(video_format: str) -> Recipe:
        data = digits_recipe(3).model_dump(mode="json", exclude_none=True)
        data["sampling"].update(height=256, width=256)
        data["output"]["video_format"] = video_format
        return recipe_from_dict(data)

    lossless = at_256("mp4-lossless")
    (check,) = [c for c in checks_of(lossless)[0] if c.name == "watermark"]
    assert isinstance(check, WatermarkSurvives)
    assert "watermark" not in {c.name for c in checks_of(at_256("mp4"))[0]}
    rng = np.random.default_rng(0)
    texture = rng.integers(40, 200, (3, 256, 256, 3)).astype(np.uint8)
    payload = watermark_payload(lossless.hash)
    marked = np.stack([embed_watermark(f, payload) for f in texture])
    sample = clip_sample("marked", marked, 3)
    sample = dataclasses.replace(sample, media=Media(b"", "video/mp4", "mp4", Shape(3, 256, 256)))
    assert check.pixel_reason(sample, marked) is None
    one_unmarked = marked.copy()
    one_unmarked[2] = texture[2]
    assert check.pixel_reason(sample, one_unmarked) == "watermark"
