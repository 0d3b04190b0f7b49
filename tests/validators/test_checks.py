from __future__ import annotations

import random
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that
from hypothesis import given, settings
from hypothesis import strategies as st

from synthgen.pipelines.decide import DecideSamples
from synthgen.schemas.media import image_media
from synthgen.schemas.recipe import Recipe, recipe_from_dict
from synthgen.schemas.records import GenerationRequest, Sample, SampleFeatures
from synthgen.schemas.scores import ScoreColumn
from synthgen.validators.apply import apply_checks
from synthgen.validators.build_checks import make_checks
from synthgen.validators.checks.exact_duplicate import ExactDuplicate
from synthgen.validators.checks.near_duplicate import NearDuplicate
from synthgen.validators.checks.odd_size import OddSize
from synthgen.validators.checks.quantile import QuantileCut
from synthgen.validators.checks.threshold import ScoreThreshold
from synthgen.validators.dedup import (
    exact_duplicate_losers,
    hamming,
    hash_bands,
    near_duplicate_losers,
    quantile_threshold,
)
from tests.conftest import tiny_recipe_dict


def _sample(
    key: str,
    cls: int = 0,
    scores: dict | None = None,
    size: int = 16,
    sha: str = "s",
    phash: str = "0" * 16,
) -> Sample:
    req = GenerationRequest(key, 0, 0, cls, f"c{cls}", "p", "", 1)
    media = image_media(b"", "png", size, size, phash)
    return Sample(req, sha, media, scores=dict(scores or {}))


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
    before = _sample("a", scores={"s": 0.1}, size=8)
    s = apply_checks(before, [OddSize(16, 16), ScoreThreshold("clip_score", "s", 0.2)])
    assert s.status == "rejected" and s.reject_reason == "odd_size"
    assert s.checks == {"duplicate": "pass", "odd_size": "odd_size", "clip_score": "clip_score"}
    assert before.status == "accepted" and before.checks == {}, "the input is not changed"
    ok = apply_checks(_sample("b", scores={"s": 0.5}), [OddSize(16, 16)])
    assert ok.status == "accepted" and ok.reject_reason is None


def test_quantile_threshold_rejects_floor_q_n() -> None:
    values = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0]
    cut = quantile_threshold(values, 0.3)
    assert sum(v < cut for v in values) == 3
    assert sum(v < quantile_threshold(values, 1 - 0.9) for v in values) == 1
    assert quantile_threshold(values, 0.0) == float("-inf")


def test_a_quantile_on_a_check_that_keeps_low_scores_rejects_the_highest_share() -> None:
    """`light` / `keep: below`: the worst q of a class is its highest scores, never the rest."""
    values = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0]
    cut = quantile_threshold(values, 0.2, keep_above=False)
    check = ScoreThreshold("light", "brightness", cut, keep_above=False)
    rejected = [v for v in values if check.reason(_sample("x", scores={"brightness": v}))]
    assert sorted(rejected) == [0.8, 0.9]
    # a class with few samples in a round: floor(0.33 * 2) = 0 of them is the worst share
    few = quantile_threshold([0.2, 0.4], 0.33, keep_above=False)
    assert few == float("inf")  # nothing above it: none rejected
    assert quantile_threshold(values, 1.0, keep_above=False) == float("-inf")  # all of them
    recipe = _recipe(scores={"brightness": {"quantile": 0.2, "keep": "below"}})
    (cut,) = [b for b in make_checks(recipe, _columns())[1] if isinstance(b, QuantileCut)]
    assert (cut.name, cut.column, cut.quantile, cut.keep_above) == (
        "brightness",
        "brightness",
        0.2,
        False,
    )


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
                checks,
                build_checks=[
                    ExactDuplicate(),
                    NearDuplicate(2),
                    QuantileCut("label_margin", "m", 0.5, True),
                ],
                reused=reused,
            )
        )
        assert_that(decided, check)


def _columns() -> list[ScoreColumn]:
    return [
        ScoreColumn(name="clip_m_score", scorer="clip", checks={"clip_score": "above"}),
        ScoreColumn(name="clip_m_label_margin", scorer="clip", checks={"label_margin": "above"}),
        ScoreColumn(
            name="brightness", scorer="image_stats", checks={"dark": "above", "light": "below"}
        ),
        ScoreColumn(name="sharpness", scorer="image_stats", checks={"blurry": "above"}),
        ScoreColumn(name="entropy", scorer="image_stats", checks={"low_information": "above"}),
        ScoreColumn(
            name="clip_m_embedding", scorer="clip_embedding", dim=4, role="image_embedding"
        ),
    ]


def _recipe(**checks: object) -> Recipe:
    return recipe_from_dict(tiny_recipe_dict(Path("/models"), checks=checks))


def test_make_checks_maps_named_checks_to_the_columns_backing_them() -> None:
    recipe = _recipe(
        clip_score={"absolute": 0.1},
        label_margin={"kept_fraction": 0.75},
        light={"absolute": 0.9},
        low_information={"absolute": 0.5},
        near_duplicate={"max_distance": 3},
        scores={"sharpness": {"quantile": 0.1, "keep": "above"}},
    )
    checks, global_checks = make_checks(recipe, _columns())
    got = [
        (c.name, c.column, c.threshold, c.keep_above, c.quantile)
        for c in checks
        if isinstance(c, ScoreThreshold)
    ]
    assert isinstance(checks[0], OddSize)
    assert got == [
        ("clip_score", "clip_m_score", 0.1, True, None),
        ("label_margin", "clip_m_label_margin", None, True, pytest.approx(0.25)),
        ("light", "brightness", 0.9, False, None),
        ("low_information", "entropy", 0.5, True, None),
        ("sharpness", "sharpness", None, True, 0.1),
    ]
    assert [(type(b), b.name) for b in global_checks] == [
        (ExactDuplicate, "exact_duplicate"),
        (NearDuplicate, "near_duplicate"),
        (QuantileCut, "label_margin"),
        (QuantileCut, "sharpness"),
    ]
    assert global_checks[1].max_distance == 3
    cuts = [(b.column, b.quantile, b.keep_above) for b in global_checks[2:]]
    assert cuts == [("clip_m_label_margin", pytest.approx(0.25), True), ("sharpness", 0.1, True)]


def test_make_checks_refuses_what_no_scorer_backs() -> None:
    stats_only = [c for c in _columns() if c.scorer == "image_stats"]
    # the default clip_score check is skipped without a clip scorer ...
    checks, _ = make_checks(_recipe(dark={"absolute": 0.1}), stats_only)
    assert [c.name for c in checks] == ["odd_size", "dark"]
    # ... but one the recipe sets is an error, as is a threshold on an unknown or vector column
    with pytest.raises(ValueError, match=r"checks.clip_score: no listed scorer"):
        make_checks(_recipe(clip_score={"absolute": 0.1}), stats_only)
    with pytest.raises(ValueError, match=r"checks.scores.nope: no listed scorer.*brightness"):
        make_checks(_recipe(scores={"nope": {"absolute": 1.0}}), _columns())
    with pytest.raises(ValueError, match="vector column"):
        make_checks(_recipe(scores={"clip_m_embedding": {"absolute": 1.0}}), _columns())
