"""Composite Beam transforms of the deciding pipeline: quotas, and decided samples -> shard
files (deciding itself is pipelines.decide; the generating stage is pipelines.generate)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path

import apache_beam as beam
from apache_beam.metrics import Metrics

from synthgen.pipelines.writer import write_shard
from synthgen.schemas.manifest import ShardStats
from synthgen.schemas.plugins import register_carried
from synthgen.schemas.records import ACCEPTED, REJECTED, BuildContext, Sample, Score
from synthgen.schemas.scores import ScoreColumn
from synthgen.storage.faults import maybe_fault

METRICS_NAMESPACE = "synthgen"


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


def compact(sample: Sample) -> Sample:
    """A decided sample as it travels to its shard's writer: no image bytes, no vectors (the
    writer reads both back from the shard's staging file)."""
    scalars: dict[str, Score] = {k: v for k, v in sample.scores.items() if not isinstance(v, tuple)}
    return dataclasses.replace(sample, media=sample.media.with_data(b""), scores=scalars)


def with_staged(decided: Iterable[Sample], staged: Iterable[Sample]) -> list[Sample]:
    """Each decision completed with its staged image and vector scores (by key).

    A decision for a key that was not staged is refused: writer and staging disagree."""
    by_key = {s.request.key: s for s in staged}
    out = []
    for d in decided:
        s = by_key.get(d.request.key)
        if s is None:
            raise RuntimeError(f"sample {d.request.key}: decided but not staged")
        vectors = {k: v for k, v in s.scores.items() if isinstance(v, tuple)}
        out.append(
            dataclasses.replace(
                d, media=d.media.with_data(s.media.data), scores={**vectors, **d.scores}
            )
        )
    return out


class WriteShardFn(beam.DoFn):
    """(shard, its decided compact samples) -> the shard's files, images read from staging."""

    def __init__(
        self,
        out_dir: str,
        ctx: BuildContext,
        columns: tuple[ScoreColumn, ...],
        plugins: tuple[type, ...] = (),
    ):
        self._out_dir = out_dir
        self._ctx = ctx
        self._columns = columns
        self._shards = Metrics.counter(METRICS_NAMESPACE, "shards_written")
        # a writer or codec plug-in from outside its package travels with the DoFn, and
        # registers on the worker (`schemas.plugins.register_carried`)
        self._plugins = plugins

    def setup(self) -> None:
        register_carried(self._plugins)  # a writer or codec plug-in, by name here too

    def process(self, element: tuple[int, Iterable[Sample]]) -> Iterator[ShardStats]:
        from synthgen.pipelines.staging import read_signed, read_staged
        from synthgen.storage.c2pa_sign import current_signer

        shard, decided = element
        maybe_fault("write", f"{shard:05d}")
        out = Path(self._out_dir)
        samples = with_staged(decided, read_staged(out, shard))
        signed = read_signed(out, shard, current_signer(out))
        yield write_shard(out, shard, samples, self._ctx, self._columns, signed)
        self._shards.inc()


class WriteShards(beam.PTransform):
    """Decided samples -> one set of shard files per shard id; emits each shard's ShardStats.

    Only compact decisions are grouped by shard (`compact`); each writer reads its shard's
    images and vectors from the staging file, so no step holds more than one shard's images.
    """

    def __init__(
        self,
        out_dir: str,
        ctx: BuildContext,
        columns: tuple[ScoreColumn, ...],
        plugins: tuple[type, ...] = (),
    ):
        super().__init__()
        self._out_dir = out_dir
        self._ctx = ctx
        self._columns = tuple(columns)
        self._plugins = plugins

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        return (
            samples
            | "KeyByShard" >> beam.Map(lambda s: (s.request.shard, compact(s)))
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard"
            >> beam.ParDo(WriteShardFn(self._out_dir, self._ctx, self._columns, self._plugins))
        )
