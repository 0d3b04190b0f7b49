"""DecideSamples over a list of build-wide checks: each check sees the features it needs,
grouped, over this round and earlier shards; the verdicts are flattened into one per key."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that

from synthgen.pipelines.decide import DecideSamples, reused_build_features
from synthgen.schemas.manifest import shard_files
from synthgen.schemas.media import image_media
from synthgen.schemas.records import GenerationRequest, Sample, SampleFeatures
from synthgen.schemas.scores import ScoreColumn
from synthgen.validators.base import BuildCheck, BuildFeatures
from synthgen.validators.checks.exact_duplicate import ExactDuplicate
from synthgen.validators.checks.near_duplicate import NearDuplicate
from synthgen.validators.checks.odd_size import OddSize
from synthgen.validators.checks.quantile import QuantileCut
from synthgen.validators.checks.semantic_duplicate import SemanticDuplicate
from synthgen.validators.checks.threshold import ScoreThreshold


def _sample(key: str, cls: int = 0, sha: str = "", phash: str = "", **scores: object) -> Sample:
    req = GenerationRequest(key, 0, 0, cls, f"c{cls}", "p", "", 1)
    media = image_media(b"", "png", 16, 16, phash or hashlib.sha256(key.encode()).hexdigest()[:16])
    return Sample(req, sha or f"sha-{key}", media, scores=dict(scores))  # type: ignore[arg-type]


_DECIDED: dict[str, Sample] = {}  # what the pipeline decided (the runner is in-process)


def _collect(decided: list[Sample]) -> None:
    _DECIDED.update({s.request.key: s for s in decided})


def _decide(samples: list[Sample], transform: DecideSamples) -> dict[str, Sample]:
    """Every decided sample by key, the samples fed shuffled."""
    _DECIDED.clear()
    random.Random(0).shuffle(samples)
    with BeamTestPipeline() as p:
        assert_that(p | beam.Create(samples, reshuffle=True) | transform, _collect)
    assert len(_DECIDED) == len(samples)
    return dict(_DECIDED)


class SeenColumns(BuildCheck):
    """Tags every sample with the columns its features carried (what `needs` asked for)."""

    def __init__(self, name: str, needs: tuple[str, ...]):
        self.name = name
        self._needs = needs

    def needs(self) -> tuple[str, ...]:
        return self._needs

    def tag(self, features: Sequence[BuildFeatures]) -> Iterable[tuple[str, str]]:
        return [
            (f.key, "saw:" + ",".join(sorted(f.scores)) + "|" + ",".join(sorted(f.vectors)))
            for f in features
        ]


class ClassSize(BuildCheck):
    """Tags the samples of classes with more than `limit` samples in the build."""

    name = "test_class_size"

    def __init__(self, limit: int):
        self.limit = limit

    def groups(self, features: BuildFeatures) -> Iterable[Hashable]:
        return (features.class_label,)

    def tag(self, features: Sequence[BuildFeatures]) -> Iterable[tuple[str, str]]:
        keys = {f.key for f in features}
        return [(k, "crowded_class") for k in keys] if len(keys) > self.limit else []


def test_verdicts_of_several_checks_are_flattened_by_rank() -> None:
    """Duplicate checks give the smallest reason, first; a quantile cut answers in its
    threshold check's place; a plug-in's outcome follows the per-sample checks."""
    samples = [
        _sample("a", 0, sha="X", phash="ffff000000000000", m=0.9),
        _sample("b", 0, sha="X", phash="ffff000000000000", m=0.8),  # exact + near dup of a
        _sample("c", 0, phash="ffff000000000001", m=0.1),  # near dup of a, lowest m
        _sample("d", 1, phash="0f0f0f0f0f0f0f0f", m=0.5),
        _sample("e", 1, phash="00000000ffffffff", m=0.6),
    ]
    checks = [OddSize(16, 16), ScoreThreshold("margin", "m", None, quantile=0.34)]
    build = [
        ExactDuplicate(),
        NearDuplicate(2),
        QuantileCut("margin", "m", 0.34, True),
        ClassSize(2),
    ]
    got = _decide(samples, DecideSamples(checks, build_checks=build))
    assert {k: s.reject_reason for k, s in got.items()} == {
        "a": "crowded_class",  # class 0 has three samples; a is neither a duplicate nor cut
        "b": "exact_duplicate",  # the smallest of its duplicate reasons (exact, near)
        "c": "near_duplicate",  # the duplicate ranks before its quantile cut (m = 0.1)
        "d": None,  # class 1: floor(0.34 * 2) = 0 samples cut
        "e": None,
    }
    c = got["c"].checks
    assert c["duplicate"] == "near_duplicate" and c["margin"] == "margin"
    assert list(c) == ["duplicate", "odd_size", "margin", "test_class_size"]
    assert c["test_class_size"] == "crowded_class"
    assert got["e"].checks == {
        "duplicate": "pass",
        "odd_size": "pass",
        "margin": "pass",
        "test_class_size": "pass",
    }


def test_each_check_sees_only_the_columns_it_needs_from_this_round_and_earlier_shards() -> None:
    samples = [_sample("k1", s=0.5, t=0.1, emb=(1.0, 0.0)), _sample("k2", s=0.2, emb=(0.0, 1.0))]
    reused = [SampleFeatures("k0", 0, "sha-k0", "0" * 16, {"s": 0.3, "t": 0.4})]
    build = [SeenColumns("none", ()), SeenColumns("vec", ("emb",)), SeenColumns("one", ("s",))]
    seen: dict[str, dict[str, str]] = {}
    got = _decide(samples, DecideSamples([], build_checks=build, reused=reused))
    for key, s in got.items():
        seen[key] = {n: s.checks[n] for n in ("none", "vec", "one")}
    assert seen == {
        "k1": {"none": "saw:|", "vec": "saw:|emb", "one": "saw:s|"},
        "k2": {"none": "saw:|", "vec": "saw:|emb", "one": "saw:s|"},
    }
    assert got["k1"].reject_reason == "saw:|", "build-wide outcomes run in list order"


def test_semantic_duplicates_span_rounds_and_classes_apart() -> None:
    column = "emb"
    samples = [
        _sample("k2", 0, emb=(1.0, 0.01)),  # near k0 (an earlier shard): a duplicate
        _sample("k3", 1, emb=(1.0, 0.0)),  # the same vector in another class: kept
        _sample("k4", 0, emb=(0.0, 1.0)),
        _sample("k5", 0),  # no embedding: nothing to compare
    ]
    reused = [BuildFeatures("k0", 0, "sha-k0", "0" * 16, {}, {column: (1.0, 0.0)})]
    transform = DecideSamples([], build_checks=[SemanticDuplicate(column, 0.99)], reused=reused)
    got = _decide(samples, transform)
    assert {k: s.reject_reason for k, s in got.items()} == {
        "k2": "semantic_duplicate",
        "k3": None,
        "k4": None,
        "k5": None,
    }


def test_no_build_checks_decides_on_the_per_sample_checks_alone() -> None:
    samples = [_sample("a", s=0.1), _sample("b", s=0.9)]
    got = _decide(samples, DecideSamples([ScoreThreshold("low", "s", 0.5)]))
    assert {k: (s.reject_reason, s.checks) for k, s in got.items()} == {
        "a": ("low", {"duplicate": "pass", "low": "low"}),
        "b": (None, {"duplicate": "pass", "low": "pass"}),
    }


def test_reused_features_carry_the_vectors_a_check_needs(tmp_path: Path) -> None:
    columns = [
        ScoreColumn(name="s", scorer="t"),
        ScoreColumn(name="emb", scorer="e", dim=2, role="image_embedding"),
    ]
    table = pa.table(
        {
            "key": ["k0", "k1", "k2"],
            "class_label": pa.array([0, 1, 0], pa.int32()),
            "image_sha256": ["a", "b", ""],
            "phash": ["0" * 16, "f" * 16, ""],
            "status": ["accepted", "rejected", "failed"],
            "s": pa.array([0.5, None, None], pa.float32()),
            "emb": pa.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], pa.list_(pa.float32(), 2)),
        }
    )
    pq.write_table(table, tmp_path / shard_files(3).parquet)
    plain = reused_build_features(tmp_path, [3], columns, [ExactDuplicate()])
    assert [(f.key, f.vectors) for f in plain] == [("k0", {}), ("k1", {})]
    semantic = reused_build_features(tmp_path, [3], columns, [SemanticDuplicate("emb", 0.9)])
    assert [(f.key, f.vectors) for f in semantic] == [
        ("k0", {"emb": (1.0, 0.0)}),
        ("k1", {"emb": (0.0, 1.0)}),
    ], "a failed sample is no feature"
    assert semantic[0].scores == {"s": 0.5}
