"""The Beam transforms and the shard writer: every planned sample once, inputs never changed,
written shards read back as they were written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from synthgen.generators.handler import GenerationSettings
from synthgen.generators.planning import plan
from synthgen.pipelines.decide import DecideFn, DecideSamples
from synthgen.pipelines.generate import GenerateShards, StageSpec
from synthgen.pipelines.staging import ReadStaged, read_staged
from synthgen.pipelines.transforms import WriteShards, mark_surplus
from synthgen.pipelines.writer import reused_features, write_shard
from synthgen.schemas.manifest import PlanRound, ShardStats, stats_name
from synthgen.schemas.records import (
    BUILD_FIELDS,
    JSON_FIELDS,
    PROVENANCE_FIELDS,
    ROW_PROVENANCE_FIELDS,
    BuildContext,
    Sample,
    canonical_json,
    read_build_constants,
    sample_schema,
)
from synthgen.schemas.scores import ScoreColumn
from synthgen.storage.tars import iter_tar_samples
from synthgen.validators.checks.exact_duplicate import ExactDuplicate
from synthgen.validators.checks.odd_size import OddSize
from synthgen.validators.checks.threshold import ScoreThreshold
from synthgen.validators.scoring import build_scorers, score_columns
from tests.validators.conftest import make_samples, recipe_with, scoring

EMBEDDING = ScoreColumn(name="emb", scorer="clip_embedding", minimum=-1, maximum=1, dim=3)
COLUMNS = (ScoreColumn(name="s", scorer="t", minimum=0, maximum=1), EMBEDDING)


def context(**changes: object) -> BuildContext:
    values: dict[str, object] = {n: "{}" if n in JSON_FIELDS else "x" for n in BUILD_FIELDS}
    values.update(steps=2, guidance_scale=1.5, compute_batch=4, image_format="png")
    values.update(created_at="2024-01-01T00:00:00Z", class_names="")
    for name in ("scheduler_config", "image_encoding", "library_versions", "generation_options"):
        values[name] = canonical_json({"k": name})
    values["scorers"] = canonical_json([{"name": "t"}])
    values.update(changes)
    return BuildContext(**values)  # type: ignore[arg-type]


def scored(samples: list[Sample]) -> list[Sample]:
    return [
        dataclasses.replace(
            s,
            media=s.media.with_fingerprint(f"{i:016x}"),
            scores={"s": i / 10, "emb": (0.5, -0.75, float(i % 2))},
        )
        for i, s in enumerate(samples)
    ]


def test_one_field_list_gives_the_schema_and_the_provenance() -> None:
    schema = sample_schema(COLUMNS)
    names = schema.names
    assert names[0] == "key" and names[-1] == "rejected_image"
    assert set(ROW_PROVENANCE_FIELDS) == set(names) - {
        "status",
        "reject_reason",
        "s",
        "emb",
        "rejected_image",
        "nearest_ref",
        "nearest_eval",
        "error_message",
    }
    assert set(BUILD_FIELDS) <= set(PROVENANCE_FIELDS)
    assert schema.field("emb").type == pa.list_(pa.float32(), 3)
    assert schema.field("s").type == pa.float32()
    assert len(names) == len(set(names))


def test_write_shard_round_trips_and_leaves_vectors_out_of_the_sidecar(tmp_path: Path) -> None:
    samples = scored(make_samples(5))
    samples[1] = dataclasses.replace(samples[1], status="rejected", reject_reason="s")
    stats = write_shard(tmp_path, 0, reversed(samples), context(), COLUMNS)
    assert isinstance(stats, ShardStats)
    assert (stats.accepted, stats.rejected, stats.keys) == (4, 1, 5)
    assert (tmp_path / stats_name(0)).read_bytes() == stats.to_json()

    rows = pq.read_table(tmp_path / "00000.parquet").to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(s.request.key for s in samples)
    by_key = {s.request.key: s for s in samples}
    for row in rows:
        sample = by_key[row["key"]]
        assert row["emb"] == list(sample.scores["emb"])
        assert row["s"] == pa.scalar(sample.scores["s"], pa.float32()).as_py()
        assert (row["rejected_image"] is None) == (sample.status == "accepted")
    constants = read_build_constants(pq.read_schema(tmp_path / "00000.parquet"))
    assert constants["scheduler_config"] == {"k": "scheduler_config"}

    tar = list(iter_tar_samples(tmp_path / "00000.tar"))
    assert [t.key for t in tar] == [r["key"] for r in rows if r["status"] == "accepted"]
    for t in tar:
        assert sorted(t.members) == ["cls", "json", "png", "txt"]
        prov = json.loads(t.members["json"])
        assert set(prov) == {*PROVENANCE_FIELDS, "scores"}
        assert set(prov["scores"]) == {"s"}, "vector columns stay in the Parquet"
        assert t.members["png"] == by_key[t.key].image

    feats = reused_features(tmp_path, [0], COLUMNS)
    assert {f.key: set(f.scores) for f in feats} == {k: {"s"} for k in by_key}


def test_decide_and_quota_never_change_their_input() -> None:
    """`samples` feeds two consumers: the raw one must still see undecided samples."""
    samples = scored(make_samples(6))
    keys = sorted(s.request.key for s in samples)
    checks = [OddSize(32, 32), ScoreThreshold("low_s", "s", 0.05)]

    def undecided(got: list[Sample]) -> None:
        assert sorted(s.request.key for s in got) == keys
        assert all(s.status == "accepted" and s.checks == {} for s in got), got

    def decided(got: list[Sample]) -> None:
        outcome = {s.request.key: (s.status, s.reject_reason) for s in got}
        # sample 0 (s=0.0) fails low_s; of the rest one per class (lowest index) is kept
        assert outcome[samples[0].request.key] == ("rejected", "low_s")
        accepted = sorted(k for k, (status, _) in outcome.items() if status == "accepted")
        assert accepted == sorted(s.request.key for s in samples[1:4])
        assert all(s.checks["duplicate"] == "pass" for s in got)

    with BeamTestPipeline() as p:
        raw = p | beam.Create(samples)
        out = raw | DecideSamples(checks, build_checks=[ExactDuplicate()], quota={0: 1, 1: 1, 2: 1})
        assert_that(raw, undecided, label="Raw")
        assert_that(out, decided, label="Decided")


def test_dofns_return_copies() -> None:
    (sample,) = scored(make_samples(1))
    fn = DecideFn([ScoreThreshold("low_s", "s", 0.5)], None)
    (out,) = list(fn.process(sample, verdicts={}))
    assert out.status == "rejected" and sample.status == "accepted" and sample.checks == {}
    accepted = dataclasses.replace(out, status="accepted", reject_reason=None)
    surplus = mark_surplus(accepted, {sample.request.key: True})
    assert surplus.reject_reason == "surplus" and surplus.checks["quota"] == "surplus"
    assert accepted.status == "accepted" and "quota" not in accepted.checks


def test_generate_score_write_every_planned_sample_once(model_dir: Path, tmp_path: Path) -> None:
    recipe = recipe_with(
        model_dir,
        count_per_class=2,
        scoring=scoring(model_dir, "clip", "clip_embedding", "image_stats"),
    )
    r = recipe
    settings = GenerationSettings(
        model_path=str(model_dir / "sd"),
        scheduler=r.sampling.scheduler,
        steps=r.sampling.steps,
        guidance_scale=r.sampling.guidance_scale,
        height=r.sampling.height,
        width=r.sampling.width,
        dtype=r.model.dtype,
        device="cpu",
        compute_batch=r.model.compute_batch,
        cpu_threads=1,
        image_format="png",
        png_compress_level=1,
        quality=95,
    )
    scorers = build_scorers(recipe, model_dir)
    columns = tuple(score_columns(scorers))
    planned = plan(recipe)
    shards = sorted({q.shard for q in planned})

    spec = StageSpec(
        recipe=recipe,
        plan_round=PlanRound(),
        settings=settings,
        scorers=tuple(scorers),
        checks=(),
        out=str(tmp_path),
    )
    with BeamTestPipeline() as p:
        _ = p | beam.Create(shards) | beam.ParDo(GenerateShards(spec))
    staged = [s for shard in shards for s in read_staged(tmp_path, shard)]
    assert sorted(s.request.key for s in staged) == sorted(q.key for q in planned)
    for s in staged:
        assert set(s.scores) == {c.name for c in columns} and len(s.phash) == 16
        assert s.image and s.request.shard in shards
    with BeamTestPipeline() as p:
        compact = p | beam.Create(shards) | ReadStaged(str(tmp_path), images=False)
        assert_that(
            compact | beam.Map(lambda s: (s.image, s.request.key)),
            equal_to([(b"", q.key) for q in planned]),
            label="NoImages",
        )
        stats = compact | WriteShards(str(tmp_path), context(), columns)
        assert_that(
            stats | beam.Map(lambda s: (s.shard, s.keys)),
            equal_to([(s, sum(q.shard == s for q in planned)) for s in shards]),
            label="Stats",
        )
    table = pa.concat_tables([pq.read_table(tmp_path / f"{s:05d}.parquet") for s in shards])
    assert table.schema.field("clip_tiny_clip_embedding").type == pa.list_(pa.float32(), 16)
