"""Deciding each sample: its nearest reference images, the build-wide checks over every
sample of the build, then the per-sample checks (`DecideSamples`)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from synthgen.pipelines.transforms import METRICS_NAMESPACE, ApplyQuota
from synthgen.schemas.failures import is_failed
from synthgen.schemas.records import ACCEPTED, Sample, SampleFeatures, sample_features
from synthgen.schemas.scores import ScoreColumn
from synthgen.storage.faults import maybe_fault
from synthgen.validators.apply import apply_checks
from synthgen.validators.base import BuildCheck, BuildFeatures, Check, Verdict
from synthgen.validators.nearest import ReferenceSet, nearest, read_reference, with_nearest

# (check name, reason) of each build-wide check that rejects a key, sorted
Verdicts = tuple[tuple[str, str], ...]


class AttachNearest(beam.DoFn):
    """Each sample -> a copy carrying its nearest reference / eval-set image (id, cosine
    similarity, perceptual-hash distance). The embedded sets are read once per worker from
    their cache files (kind -> path): only the paths travel with the DoFn."""

    def __init__(self, paths: dict[str, str], embedding_column: str):
        self._paths = dict(paths)
        self._column = embedding_column
        self._sets: dict[str, ReferenceSet] | None = None

    def setup(self) -> None:
        self._sets = {kind: read_reference(Path(p)) for kind, p in sorted(self._paths.items())}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_sets"] = None
        return state

    def process(self, sample: Sample) -> Iterator[Sample]:
        if self._sets is None:
            self.setup()
        assert self._sets is not None
        vector = sample.scores.get(self._column)
        if not isinstance(vector, tuple):
            yield sample
            return
        for kind, ref in self._sets.items():
            (found,) = nearest([vector], [sample.phash], ref)
            sample = with_nearest(sample, kind, found)
        yield sample


def features(sample: Sample, vectors: Sequence[str] = ()) -> list[BuildFeatures]:
    """What build-wide checks compare: the sample's features and its `vectors` columns; a
    failed sample has no image, so nothing."""
    if is_failed(sample):
        return []
    found = {c: v for c in vectors if isinstance(v := sample.scores.get(c), tuple)}
    return [BuildFeatures.of(sample_features(sample), found)]


class TagFn(beam.DoFn):
    """(group, its features) -> (key, (check name, reason)) of each key the check rejects."""

    def __init__(self, check: BuildCheck):
        self._check = check

    def setup(self) -> None:
        self._check.load()

    def process(self, element: tuple[Any, Iterable[BuildFeatures]]) -> Iterator[Any]:
        _, members = element
        for key, reason in self._check.tag(list(members)):
            yield key, (self._check.name, reason)


class TagKeys(beam.PTransform):
    """One build-wide check over every sample's features: each sample joins the check's
    groups carrying only the columns the check needs; the check tags each group."""

    def __init__(self, check: BuildCheck):
        super().__init__()
        self._check = check

    def expand(self, feats: beam.PCollection) -> beam.PCollection:
        check = self._check
        needs = check.needs()
        return (
            feats
            | "Groups" >> beam.FlatMap(lambda f: [(g, f.only(needs)) for g in check.groups(f)])
            | "Group" >> beam.GroupByKey()
            | "Tag" >> beam.ParDo(TagFn(check))
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


class DecideFn(_ProgressWriter):
    """Accept or reject each sample; counts per outcome and reason are Beam metrics.

    The build-wide checks' verdicts for a sample (`verdicts`: key -> (check, reason) pairs)
    become outcomes: a duplicate check's joins the `duplicate` outcome (the smallest reason,
    ranking first), any other's is the outcome of the per-sample check it answers for, else
    one of its own after the per-sample checks."""

    def __init__(
        self,
        checks: Sequence[Check],
        progress_dir: str | None = None,
        build_checks: Sequence[BuildCheck] = (),
    ):
        super().__init__(progress_dir)
        self._checks = list(checks)
        self._duplicate = {b.name for b in build_checks if b.duplicate}
        deferred = {c.name for c in self._checks if c.decided_build_wide}
        self._own = [b.name for b in build_checks if not b.duplicate and b.name not in deferred]
        self._accepted = Metrics.counter(METRICS_NAMESPACE, "accepted")
        self._rejected = Metrics.counter(METRICS_NAMESPACE, "rejected")

    def setup(self) -> None:
        super().setup()
        for check in self._checks:
            check.load()

    def checks_for(self, found: dict[str, str]) -> list[Check]:
        """The per-sample checks with the build-wide outcomes `found` (check -> reason)."""
        out = [
            Verdict(c.name, found.get(c.name)) if c.decided_build_wide else c for c in self._checks
        ]
        return out + [Verdict(name, found.get(name)) for name in self._own]

    def process(self, sample: Sample, verdicts: dict[str, Verdicts]) -> Iterator[Sample]:
        maybe_fault("check", sample.request.key)
        if is_failed(sample):  # a final decision: no check applies to a sample with no image
            self.note("X")
            yield sample
            return
        found: dict[str, str] = {}
        for name, reason in verdicts.get(sample.request.key, ()):
            found.setdefault(name, reason)  # sorted: the smallest reason of each check
        duplicate = min((r for n, r in found.items() if n in self._duplicate), default=None)
        decided = apply_checks(sample, self.checks_for(found), duplicate)
        if decided.status == ACCEPTED:
            self._accepted.inc()
        else:
            self._rejected.inc()
            Metrics.counter(METRICS_NAMESPACE, f"rejected_{decided.reject_reason}").inc()
        self.note("A" if decided.status == ACCEPTED else "R")
        yield decided


def _sorted_verdicts(element: tuple[str, Iterable[tuple[str, str]]]) -> tuple[str, Verdicts]:
    key, found = element
    return key, tuple(sorted(set(found)))


class DecideSamples(beam.PTransform):
    """Samples -> decided Samples.

    1. each sample's nearest reference / eval-set image (`nearest`: kind -> cache file)
    2. every build-wide check over the features of every sample of the build, including
       those of shards written earlier (`reused`, see `reused_build_features`), flattened
       into one verdict per key
    3. the per-sample checks, with those verdicts (`DecideFn`)
    4. with `quota`, at most `quota[class]` samples per class are accepted
    """

    def __init__(
        self,
        checks: Sequence[Check],
        *,
        build_checks: Sequence[BuildCheck] = (),
        reused: Sequence[SampleFeatures] = (),
        progress_dir: str | None = None,
        quota: dict[int, int] | None = None,
        nearest: dict[str, str] | None = None,
        embedding_column: str | None = None,
    ):
        super().__init__()
        self._checks = list(checks)
        self._build = list(build_checks)
        self._reused = [f if isinstance(f, BuildFeatures) else BuildFeatures.of(f) for f in reused]
        self._progress_dir = progress_dir
        self._quota = quota
        self._nearest = nearest or {}
        self._embedding = embedding_column

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        p = samples.pipeline
        if self._nearest and self._embedding:
            samples = samples | "NearestReference" >> beam.ParDo(
                AttachNearest(self._nearest, self._embedding)
            )
        vectors = sorted({c for b in self._build for c in b.needs()})
        feats = (
            samples | "Features" >> beam.FlatMap(features, vectors),
            p | "ReusedFeatures" >> beam.Create(self._reused),
        ) | "AllFeatures" >> beam.Flatten()
        tagged = [feats | f"BuildCheck[{b.name}]" >> TagKeys(b) for b in self._build]
        if not tagged:
            tagged.append(p | "NoBuildChecks" >> beam.Create([]))
        verdicts = (
            tuple(tagged)
            | "AllVerdicts" >> beam.Flatten()
            | "ByKey" >> beam.GroupByKey()
            | "Sorted" >> beam.Map(_sorted_verdicts)
        )
        decided = samples | "Decide" >> beam.ParDo(
            DecideFn(self._checks, self._progress_dir, self._build),
            verdicts=beam.pvalue.AsDict(verdicts),
        )
        if self._quota is None:
            return decided
        return decided | "ApplyQuota" >> ApplyQuota(self._quota)


def reused_build_features(
    out: Path,
    shards: Sequence[int],
    columns: Sequence[ScoreColumn],
    build_checks: Sequence[BuildCheck],
) -> list[BuildFeatures]:
    """What the build-wide checks need of the samples in finished shards, read from their
    Parquet: the scalar scores, and the vector columns a check needs."""
    from synthgen.pipelines.writer import reused_features

    feats = reused_features(out, shards, columns)
    vector_columns = {c.name for c in columns if c.is_vector}
    vectors = sorted({c for b in build_checks for c in b.needs()} & vector_columns)
    found = _stored_vectors(out, shards, vectors) if vectors and feats else {}
    return [BuildFeatures.of(f, found.get(f.key, {})) for f in feats]


def _stored_vectors(
    out: Path, shards: Sequence[int], columns: Sequence[str]
) -> dict[str, dict[str, tuple[float, ...]]]:
    """key -> {vector column: value} of the finished shards (rows without one left out)."""
    import pyarrow.parquet as pq

    from synthgen.schemas.manifest import shard_files
    from synthgen.schemas.records import missing_vector

    found: dict[str, dict[str, tuple[float, ...]]] = {}
    for shard in shards:
        table = pq.read_table(out / shard_files(shard).parquet, columns=["key", *columns])
        for row in table.to_pylist():
            values = {c: tuple(row[c]) for c in columns if not missing_vector(row[c])}
            if values:
                found[row["key"]] = values
    return found
