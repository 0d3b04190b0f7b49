"""Composite Beam transforms: plan -> generate -> score -> check -> write shards."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference

from generators.planning import plan
from pipelines.context import BuildContext
from pipelines.faults import maybe_fault
from pipelines.writer import write_shard
from schemas.recipe import Recipe
from schemas.records import ACCEPTED, GenerationRequest, Sample
from validators.apply import apply_checks
from validators.base import Check

logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "synthgen"


class ExpandShard(beam.DoFn):
    """Shard id -> its GenerationRequests. Planning is pure, so workers re-derive it."""

    def __init__(self, recipe: Recipe, counts: dict[int, int] | None = None):
        self._recipe = recipe
        self._counts = counts
        self._by_shard: dict[int, list[GenerationRequest]] | None = None

    def process(self, shard: int) -> Iterator[GenerationRequest]:
        if self._by_shard is None:
            self._by_shard = {}
            for r in plan(self._recipe, self._counts):
                self._by_shard.setdefault(r.shard, []).append(r)
        yield from self._by_shard.get(shard, [])


class ApplyChecksFn(beam.DoFn):
    """Accept or reject each sample; counts per outcome and reason are Beam metrics."""

    def __init__(self, checks: Sequence[Check], progress_dir: str | None):
        self._checks = list(checks)
        self._progress_dir = progress_dir
        self._progress: IO[str] | None = None
        self._generated = Metrics.counter(METRICS_NAMESPACE, "generated")
        self._accepted = Metrics.counter(METRICS_NAMESPACE, "accepted")
        self._rejected = Metrics.counter(METRICS_NAMESPACE, "rejected")

    def setup(self) -> None:
        if self._progress_dir and os.path.isdir(self._progress_dir):
            path = Path(self._progress_dir) / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.log"
            self._progress = path.open("a", buffering=1, encoding="ascii")

    def process(self, sample: Sample) -> Iterator[Sample]:
        maybe_fault("check", sample.request.key)
        apply_checks(sample, self._checks)
        self._generated.inc()
        if sample.status == ACCEPTED:
            self._accepted.inc()
        else:
            self._rejected.inc()
            Metrics.counter(METRICS_NAMESPACE, f"rejected_{sample.reject_reason}").inc()
        if self._progress is not None:
            self._progress.write("A\n" if sample.status == ACCEPTED else "R\n")
        yield sample

    def teardown(self) -> None:
        if self._progress is not None:
            self._progress.close()


class WriteShardFn(beam.DoFn):
    def __init__(self, out_dir: str, ctx: BuildContext, score_columns: tuple[str, ...]):
        self._out_dir = out_dir
        self._ctx = ctx
        self._score_columns = score_columns
        self._shards = Metrics.counter(METRICS_NAMESPACE, "shards_written")

    def process(self, element: tuple[int, Iterable[Sample]]) -> Iterator[dict[str, Any]]:
        shard, samples = element
        maybe_fault("write", f"{shard:05d}")
        yield write_shard(Path(self._out_dir), shard, samples, self._ctx, self._score_columns)
        self._shards.inc()


class GenerateSamples(beam.PTransform):
    """Shard ids -> generated, CLIP-scored and checked Samples."""

    def __init__(
        self,
        recipe: Recipe,
        generate: ModelHandler,
        score: ModelHandler,
        checks: Sequence[Check],
        progress_dir: str | None = None,
        counts: dict[int, int] | None = None,
    ):
        super().__init__()
        self._recipe = recipe
        self._generate = generate
        self._score = score
        self._checks = checks
        self._progress_dir = progress_dir
        self._counts = counts

    def expand(self, shard_ids: beam.PCollection) -> beam.PCollection:
        return (
            shard_ids
            | "PlanRequests" >> beam.ParDo(ExpandShard(self._recipe, self._counts))
            | "Spread" >> beam.Reshuffle()
            | "GenerateImages" >> RunInference(self._generate)
            | "TakeImages" >> beam.Map(lambda result: result.inference)
            | "ScoreWithClip" >> RunInference(self._score)
            | "TakeScored" >> beam.Map(lambda result: result.example)
            | "ApplyChecks" >> beam.ParDo(ApplyChecksFn(self._checks, self._progress_dir))
        )


class WriteShards(beam.PTransform):
    """Samples -> one set of shard files per shard id; emits each shard's stats entry."""

    def __init__(self, out_dir: str, ctx: BuildContext, score_columns: tuple[str, ...]):
        super().__init__()
        self._out_dir = out_dir
        self._ctx = ctx
        self._score_columns = score_columns

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        return (
            samples
            | "KeyByShard" >> beam.Map(lambda s: (s.request.shard, s))
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard"
            >> beam.ParDo(WriteShardFn(self._out_dir, self._ctx, self._score_columns))
        )
