from __future__ import annotations

import io
import random

import apache_beam as beam
import numpy as np
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from synthgen.pipelines.transforms import DecideSamples, GlobalChecks
from synthgen.schemas.records import GenerationRequest, Sample, SampleFeatures
from synthgen.validators.apply import apply_checks
from synthgen.validators.checks.odd_size import OddSize
from synthgen.validators.checks.threshold import ScoreThreshold
from synthgen.validators.dedup import (
    exact_duplicate_losers,
    hamming,
    hash_bands,
    near_duplicate_losers,
    quantile_threshold,
)
from synthgen.validators.measure import measure_image


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _sample(
    key: str,
    cls: int = 0,
    scores: dict | None = None,
    size: int = 16,
    sha: str = "s",
    phash: str = "0" * 16,
) -> Sample:
    req = GenerationRequest(key, 0, 0, cls, f"c{cls}", "p", "", 1)
    return Sample(req, b"", sha, size, size, phash=phash, scores=dict(scores or {}))


def test_measurements_tell_dark_light_flat_and_sharp_apart() -> None:
    rng = np.random.default_rng(0)
    black = measure_image(_png(np.zeros((32, 32, 3))))[0]
    white = measure_image(_png(np.full((32, 32, 3), 255)))[0]
    noise = measure_image(_png(rng.integers(0, 256, (32, 32, 3))))[0]
    smooth = np.tile(np.linspace(0, 255, 32), (32, 1))[..., None].repeat(3, axis=2)
    gradient = measure_image(_png(smooth))[0]
    assert black["brightness"] == 0 and white["brightness"] == 1
    assert black["entropy"] == 0 and noise["entropy"] > 7
    assert noise["sharpness"] > 100 * gradient["sharpness"]


def test_phash_is_stable_and_close_for_near_copies() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (32, 32, 3))
    a = measure_image(_png(img))[1]
    tweaked = img.copy()
    tweaked[0, 0] = 255 - tweaked[0, 0]
    b = measure_image(_png(tweaked))[1]
    c = measure_image(_png(rng.integers(0, 256, (32, 32, 3))))[1]
    assert len(a) == 16
    assert hamming(a, b) <= 4 < hamming(a, c)


def test_threshold_checks_absolute_per_class_and_direction() -> None:
    low = ScoreThreshold("clip_score", "s", 0.2)
    assert low.reason(_sample("a", scores={"s": 0.1})) == "clip_score"
    assert low.reason(_sample("a", scores={"s": 0.3})) is None
    assert low.reason(_sample("a", scores={"s": float("nan")})) is None
    light = ScoreThreshold("light", "brightness", 0.9, keep_above=False)
    assert light.reason(_sample("a", scores={"brightness": 0.95})) == "light"
    per_class = ScoreThreshold("label_margin", "m", {0: 0.5, 1: -1.0})
    assert per_class.reason(_sample("a", 0, {"m": 0.0})) == "label_margin"
    assert per_class.reason(_sample("a", 1, {"m": 0.0})) is None


def test_apply_checks_records_every_outcome_and_first_reason() -> None:
    s = _sample("a", scores={"s": 0.1}, size=8)
    apply_checks(s, [OddSize(16, 16), ScoreThreshold("clip_score", "s", 0.2)])
    assert s.status == "rejected" and s.reject_reason == "odd_size"
    assert s.checks == {"duplicate": "pass", "odd_size": "odd_size", "clip_score": "clip_score"}
    ok = apply_checks(_sample("b", scores={"s": 0.5}), [OddSize(16, 16)])
    assert ok.status == "accepted" and ok.reject_reason is None


def test_quantile_threshold_rejects_floor_q_n() -> None:
    values = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0]
    cut = quantile_threshold(values, 0.3)
    assert sum(v < cut for v in values) == 3
    assert sum(v < quantile_threshold(values, 1 - 0.9) for v in values) == 1
    assert quantile_threshold(values, 0.0) == float("-inf")


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**64 - 1), st.integers(0, 6), st.data())
def test_hash_bands_pigeonhole(value: int, distance: int, data: st.DataObject) -> None:
    bits = data.draw(st.lists(st.integers(0, 63), max_size=distance, unique=True))
    other = value
    for b in bits:
        other ^= 1 << b
    a, b = f"{value:016x}", f"{other:016x}"
    assert hamming(a, b) == len(bits)
    assert set(hash_bands(a, distance)) & set(hash_bands(b, distance))


def test_duplicate_losers_keep_the_smallest_key() -> None:
    assert exact_duplicate_losers(["k3", "k1", "k2", "k1"]) == ["k2", "k3"]
    members = [("b", "ffff000000000000"), ("a", "ffff000000000001"), ("c", "0000ffffffffffff")]
    assert list(near_duplicate_losers(members, 2)) == ["b"]


def test_build_wide_checks_see_every_bundle_and_reused_shards() -> None:
    """Duplicates in different bundles and in a reused shard are found; quantiles are per class."""
    samples = [
        _sample("k1", 0, {"m": 0.1}, sha="A", phash="ffff000000000000"),
        _sample("k2", 0, {"m": 0.2}, sha="A", phash="ffff000000000000"),  # exact dup of k1
        _sample("k3", 0, {"m": 0.3}, sha="B", phash="ffff000000000001"),  # near dup of k1
        _sample("k5", 1, {"m": 0.9}, sha="D", phash="0f0f0f0f0f0f0f0f"),  # exact dup of reused k0
        _sample("k6", 1, {"m": 0.5}, sha="E", phash="1234567890abcdef"),
    ]
    random.Random(0).shuffle(samples)
    reused = [
        SampleFeatures("k0", 1, "D", "0f0f0f0f0f0f0f0f", {"m": 0.4}),
        SampleFeatures("k4", 0, "C", "00000000ffffffff", {"m": 0.0}),
    ]
    checks = [ScoreThreshold("label_margin", "m", None, quantile=0.5)]

    def check(decided: list[Sample]) -> None:
        got = {s.request.key: s.reject_reason for s in decided}
        # class 0 has k1..k4 (0.1, 0.2, 0.3, 0.0): the two lowest (k4, k1) fall below the cut;
        # class 1 has k0, k5, k6 (0.4, 0.9, 0.5): floor(1.5) = 1, the reused k0.
        assert got == {
            "k1": "label_margin",
            "k2": "exact_duplicate",
            "k3": "near_duplicate",
            "k5": "exact_duplicate",
            "k6": None,
        }, got

    with BeamTestPipeline() as p:
        decided = (
            p
            | beam.Create(samples, reshuffle=True)
            | DecideSamples(
                checks, GlobalChecks(True, 2, {"label_margin": ("m", 0.5)}), reused, None
            )
        )
        assert_that(decided, check)
