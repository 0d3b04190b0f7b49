"""Composite Beam transforms: plan -> generate -> score -> check -> write shards."""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from synthgen.generators.planning import plan
from synthgen.pipelines.writer import write_shard
from synthgen.schemas.manifest import PlanRound, ShardStats
from synthgen.schemas.recipe import Recipe
from synthgen.schemas.records import (
    ACCEPTED,
    REJECTED,
    BuildContext,
    GenerationRequest,
    Sample,
    SampleFeatures,
    sample_features,
)
from synthgen.schemas.scores import ScoreColumn
from synthgen.storage.faults import maybe_fault
from synthgen.validators.apply import apply_checks
from synthgen.validators.base import Check
from synthgen.validators.build_checks import GlobalChecks
from synthgen.validators.checks.threshold import ScoreThreshold
from synthgen.validators.dedup import (
    exact_duplicate_losers,
    hash_bands,
    near_duplicate_losers,
    quantile_threshold,
)

logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "synthgen"


class ExpandShard(beam.DoFn):
    """Shard id -> its GenerationRequests in batches of the recipe's `batch_size`.

    Planning is pure, so workers re-derive it; batches are consecutive slices of a shard.
    """

    def __init__(self, recipe: Recipe, plan_round: PlanRound):
        self._recipe = recipe
        self._round = plan_round
        self._by_shard: dict[int, list[GenerationRequest]] | None = None

    def process(self, shard: int) -> Iterator[list[GenerationRequest]]:
        if self._by_shard is None:
            self._by_shard = {}
            for r in plan(self._recipe, **self._round.plan_kwargs()):
                self._by_shard.setdefault(r.shard, []).append(r)
        requests = self._by_shard.get(shard, [])
        n = self._recipe.batch_size
        for start in range(0, len(requests), n):
            yield requests[start : start + n]


def take_inference(result: PredictionResult) -> Any:
    return result.inference


class GenerateSamples(beam.PTransform):
    """Shard ids -> generated and scored Samples (nothing decided yet).

    `generate_handler` turns a batch of requests into a list of Samples, `score_handler`
    (validators.scoring.ScoreSamples) a list of Samples into new, scored ones; both run
    once per batch, on accelerator workers when `accelerator` is set.
    """

    def __init__(
        self,
        recipe: Recipe,
        plan_round: PlanRound,
        generate_handler: ModelHandler,
        score_handler: ModelHandler,
        progress_dir: str | None = None,
        accelerator: str | None = None,
    ):
        super().__init__()
        self._recipe = recipe
        self._round = plan_round
        self._generate = generate_handler
        self._score = score_handler
        self._progress_dir = progress_dir
        self._accelerator = accelerator

    def expand(self, shard_ids: beam.PCollection) -> beam.PCollection:
        generate: beam.PTransform = RunInference(self._generate.with_postprocess_fn(take_inference))
        score: beam.PTransform = RunInference(self._score.with_postprocess_fn(take_inference))
        if self._accelerator:
            # Model steps run on accelerator workers; planning, checks and writing do not ask.
            generate = generate.with_resource_hints(accelerator=self._accelerator)
            score = score.with_resource_hints(accelerator=self._accelerator)
        return (
            shard_ids
            | "PlanRequests" >> beam.ParDo(ExpandShard(self._recipe, self._round))
            | "Spread" >> beam.Reshuffle()
            | "GenerateImages" >> generate
            | "ScoreImages" >> score
            | "OnePerSample" >> beam.FlatMap(iter)
            | "CountGenerated" >> beam.ParDo(CountGenerated(self._progress_dir))
        )


class ExactDuplicates(beam.PTransform):
    def expand(self, feats: beam.PCollection) -> beam.PCollection:
        return (
            feats
            | "BySha" >> beam.Map(lambda f: (f.image_sha256, f.key))
            | "GroupSha" >> beam.GroupByKey()
            | "Losers" >> beam.FlatMap(lambda kv: exact_duplicate_losers(kv[1]))
            | "Tag" >> beam.Map(lambda key: (key, "exact_duplicate"))
        )


class NearDuplicates(beam.PTransform):
    def __init__(self, max_distance: int):
        super().__init__()
        self._d = max_distance

    def expand(self, feats: beam.PCollection) -> beam.PCollection:
        d = self._d
        return (
            feats
            | "Bands"
            >> beam.FlatMap(lambda f: [(b, (f.key, f.phash)) for b in hash_bands(f.phash, d)])
            | "GroupBand" >> beam.GroupByKey()
            | "Losers" >> beam.FlatMap(lambda kv: near_duplicate_losers(kv[1], d))
            | "Distinct" >> beam.Distinct()
            | "Tag" >> beam.Map(lambda key: (key, "near_duplicate"))
        )


class QuantileCuts(beam.PTransform):
    """(check name, class) -> absolute threshold, from every sample's score in that class."""

    def __init__(self, quantiles: dict[str, tuple[str, float]]):
        super().__init__()
        self._q = quantiles

    def expand(self, feats: beam.PCollection) -> beam.PCollection:
        q = self._q
        return (
            feats
            | "Scores"
            >> beam.FlatMap(
                lambda f: [
                    ((name, f.class_label), f.scores.get(col, float("nan")))
                    for name, (col, _) in q.items()
                ]
            )
            | "GroupClass" >> beam.GroupByKey()
            | "Cut" >> beam.Map(lambda kv: (kv[0], quantile_threshold(kv[1], q[kv[0][0]][1])))
        )


class _ProgressWriter(beam.DoFn):
    """Appends one letter per sample to a per-worker file the driver's progress display reads."""

    def __init__(self, progress_dir: str | None):
        self._progress_dir = progress_dir
        self._progress: IO[str] | None = None

    def setup(self) -> None:
        if self._progress_dir and os.path.isdir(self._progress_dir):
            path = Path(self._progress_dir) / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.log"
            self._progress = path.open("a", buffering=1, encoding="ascii")

    def __getstate__(self) -> dict[str, Any]:
        # Some runners (Dask) pickle DoFns after setup: an open file must not travel.
        state = dict(self.__dict__)
        state["_progress"] = None
        return state

    def note(self, letter: str) -> None:
        if self._progress is not None:
            self._progress.write(letter + "\n")

    def teardown(self) -> None:
        if self._progress is not None:
            self._progress.close()


class CountGenerated(_ProgressWriter):
    def __init__(self, progress_dir: str | None):
        super().__init__(progress_dir)
        self._generated = Metrics.counter(METRICS_NAMESPACE, "generated")

    def process(self, sample: Sample) -> Iterator[Sample]:
        self._generated.inc()
        self.note("G")
        yield sample


class DecideFn(_ProgressWriter):
    """Accept or reject each sample; counts per outcome and reason are Beam metrics."""

    def __init__(self, checks: Sequence[Check], progress_dir: str | None):
        super().__init__(progress_dir)
        self._checks = list(checks)
        self._accepted = Metrics.counter(METRICS_NAMESPACE, "accepted")
        self._rejected = Metrics.counter(METRICS_NAMESPACE, "rejected")

    def process(
        self,
        sample: Sample,
        duplicates: dict[str, str],
        cuts: dict[tuple[str, int], float],
    ) -> Iterator[Sample]:
        maybe_fault("check", sample.request.key)
        checks = [_resolve(c, cuts) for c in self._checks]
        decided = apply_checks(sample, checks, duplicates.get(sample.request.key))
        if decided.status == ACCEPTED:
            self._accepted.inc()
        else:
            self._rejected.inc()
            Metrics.counter(METRICS_NAMESPACE, f"rejected_{decided.reject_reason}").inc()
        self.note("A" if decided.status == ACCEPTED else "R")
        yield decided


def _resolve(check: Check, cuts: dict[tuple[str, int], float]) -> Check:
    """A quantile-based threshold check with its per-class cuts filled in."""
    if not isinstance(check, ScoreThreshold) or check.quantile is None:
        return check
    per_class = {cls: value for (name, cls), value in cuts.items() if name == check.name}
    return ScoreThreshold(check.name, check.column, per_class, check.keep_above)


class DecideSamples(beam.PTransform):
    """Samples -> decided Samples. Build-wide checks see every sample of the build, including
    those of shards written earlier (`reused_features`, see pipelines.writer.reused_features).
    With `quota`, at most `quota[class]` samples per class are accepted."""

    def __init__(
        self,
        checks: Sequence[Check],
        global_checks: GlobalChecks,
        reused_features: list[SampleFeatures],
        progress_dir: str | None,
        quota: dict[int, int] | None = None,
    ):
        super().__init__()
        self._checks = checks
        self._global = global_checks
        self._reused = reused_features
        self._progress_dir = progress_dir
        self._quota = quota

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        p = samples.pipeline
        feats = (
            samples | "Features" >> beam.Map(sample_features),
            p | "ReusedFeatures" >> beam.Create(self._reused),
        ) | "AllFeatures" >> beam.Flatten()
        tagged = []
        if self._global.exact_duplicate:
            tagged.append(feats | "ExactDuplicates" >> ExactDuplicates())
        if self._global.near_duplicate_distance is not None:
            tagged.append(
                feats | "NearDuplicates" >> NearDuplicates(self._global.near_duplicate_distance)
            )
        if not tagged:
            tagged.append(p | "NoDuplicates" >> beam.Create([]))
        duplicates = (
            tuple(tagged)
            | "AllDuplicates" >> beam.Flatten()
            | "FirstReason" >> beam.CombinePerKey(min)
        )
        cuts = feats | "QuantileCuts" >> QuantileCuts(self._global.quantiles)
        decided = samples | "Decide" >> beam.ParDo(
            DecideFn(self._checks, self._progress_dir),
            duplicates=beam.pvalue.AsDict(duplicates),
            cuts=beam.pvalue.AsDict(cuts),
        )
        if self._quota is None:
            return decided
        return decided | "ApplyQuota" >> ApplyQuota(self._quota)


def surplus_keys(
    quota: dict[int, int], element: tuple[int, Iterable[tuple[int, str]]]
) -> list[str]:
    """Accepted keys of one class beyond its quota, lowest indices kept."""
    class_label, accepted = element
    ordered = sorted(set(accepted))  # a sample delivered twice counts once
    return [key for _, key in ordered[quota.get(class_label, 0) :]]


def mark_surplus(sample: Sample, surplus: dict[str, bool]) -> Sample:
    """The sample, or a rejected copy of it when its class is over quota."""
    if sample.status != ACCEPTED or not surplus.get(sample.request.key):
        return sample
    Metrics.counter(METRICS_NAMESPACE, "rejected_surplus").inc()
    return dataclasses.replace(
        sample,
        status=REJECTED,
        reject_reason="surplus",
        checks={**sample.checks, "quota": "surplus"},
    )


class ApplyQuota(beam.PTransform):
    """Keep at most `quota[class]` accepted samples per class (balancing needs exact counts);
    the accepted samples with the lowest indices are kept, the rest rejected as `surplus`."""

    def __init__(self, quota: dict[int, int]):
        super().__init__()
        self._quota = quota

    def expand(self, decided: beam.PCollection) -> beam.PCollection:
        quota = self._quota
        surplus = (
            decided
            | "Accepted" >> beam.Filter(lambda s: s.status == ACCEPTED)
            | "ByClass"
            >> beam.Map(lambda s: (s.request.class_label, (s.request.index, s.request.key)))
            | "GroupClass" >> beam.GroupByKey()
            | "Surplus" >> beam.FlatMap(lambda kv: surplus_keys(quota, kv))
            | "AsFlag" >> beam.Map(lambda key: (key, True))
        )
        return decided | "MarkSurplus" >> beam.Map(
            mark_surplus, surplus=beam.pvalue.AsDict(surplus)
        )


class WriteShardFn(beam.DoFn):
    def __init__(self, out_dir: str, ctx: BuildContext, columns: tuple[ScoreColumn, ...]):
        self._out_dir = out_dir
        self._ctx = ctx
        self._columns = columns
        self._shards = Metrics.counter(METRICS_NAMESPACE, "shards_written")

    def process(self, element: tuple[int, Iterable[Sample]]) -> Iterator[ShardStats]:
        shard, samples = element
        maybe_fault("write", f"{shard:05d}")
        yield write_shard(Path(self._out_dir), shard, samples, self._ctx, self._columns)
        self._shards.inc()


class WriteShards(beam.PTransform):
    """Samples -> one set of shard files per shard id; emits each shard's ShardStats."""

    def __init__(self, out_dir: str, ctx: BuildContext, columns: tuple[ScoreColumn, ...]):
        super().__init__()
        self._out_dir = out_dir
        self._ctx = ctx
        self._columns = tuple(columns)

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        return (
            samples
            | "KeyByShard" >> beam.Map(lambda s: (s.request.shard, s))
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(WriteShardFn(self._out_dir, self._ctx, self._columns))
        )
