"""Composite Beam transforms of the deciding pipeline: staged samples -> checks -> shard files
(the generating stage is pipelines.generate)."""

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

from synthgen.pipelines.writer import write_shard
from synthgen.schemas.failures import is_failed
from synthgen.schemas.manifest import ShardStats
from synthgen.schemas.recipe import Recipe
from synthgen.schemas.records import (
    ACCEPTED,
    REJECTED,
    BuildContext,
    Sample,
    SampleFeatures,
    Score,
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
from synthgen.validators.expectations import metric_gate_results
from synthgen.validators.nearest import (
    ReferenceSet,
    nearest,
    read_reference,
    semantic_duplicate_losers,
    with_nearest,
)

logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "synthgen"


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

    def __init__(self, quantiles: dict[str, tuple[str, float, bool]]):
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
                    for name, (col, _, _) in q.items()
                ]
            )
            | "GroupClass" >> beam.GroupByKey()
            | "Cut" >> beam.Map(lambda kv: (kv[0], quantile_threshold(kv[1], *q[kv[0][0]][1:])))
        )


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


class SemanticDuplicates(beam.PTransform):
    """Per class, samples whose embeddings are nearly the same: all but the smallest key.

    `reused` holds (class, (key, embedding)) of shards written earlier in the build."""

    def __init__(self, column: str, min_similarity: float, reused: list[Any]):
        super().__init__()
        self._column = column
        self._sim = min_similarity
        self._reused = reused

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        column, sim = self._column, self._sim
        now = samples | "ByClass" >> beam.FlatMap(
            lambda s: (
                [(s.request.class_label, (s.request.key, s.scores[column]))]
                if isinstance(s.scores.get(column), tuple)
                else []
            )
        )
        earlier = samples.pipeline | "Reused" >> beam.Create(self._reused)
        return (
            (now, earlier)
            | "All" >> beam.Flatten()
            | "GroupClass" >> beam.GroupByKey()
            | "Losers" >> beam.FlatMap(lambda kv: semantic_duplicate_losers(kv[1], sim))
            | "Tag" >> beam.Map(lambda key: (key, "semantic_duplicate"))
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
        if is_failed(sample):  # a final decision: no check applies to a sample with no image
            self.note("X")
            yield sample
            return
        checks = [_resolve(c, cuts) for c in self._checks]
        decided = apply_checks(sample, checks, duplicates.get(sample.request.key))
        if decided.status == ACCEPTED:
            self._accepted.inc()
        else:
            self._rejected.inc()
            Metrics.counter(METRICS_NAMESPACE, f"rejected_{decided.reject_reason}").inc()
        self.note("A" if decided.status == ACCEPTED else "R")
        yield decided


def _features(sample: Sample) -> list[SampleFeatures]:
    """What build-wide checks compare; a failed sample has no image, so nothing."""
    return [] if is_failed(sample) else [sample_features(sample)]


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
        nearest: dict[str, str] | None = None,
        embedding_column: str | None = None,
        reused_embeddings: list[Any] | None = None,
    ):
        super().__init__()
        self._checks = checks
        self._global = global_checks
        self._reused = reused_features
        self._progress_dir = progress_dir
        self._quota = quota
        self._nearest = nearest or {}
        self._embedding = embedding_column
        self._reused_embeddings = reused_embeddings or []

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        p = samples.pipeline
        if self._nearest and self._embedding:
            samples = samples | "NearestReference" >> beam.ParDo(
                AttachNearest(self._nearest, self._embedding)
            )
        feats = (
            samples | "Features" >> beam.FlatMap(_features),
            p | "ReusedFeatures" >> beam.Create(self._reused),
        ) | "AllFeatures" >> beam.Flatten()
        tagged = []
        if self._global.exact_duplicate:
            tagged.append(feats | "ExactDuplicates" >> ExactDuplicates())
        if self._global.near_duplicate_distance is not None:
            tagged.append(
                feats | "NearDuplicates" >> NearDuplicates(self._global.near_duplicate_distance)
            )
        if self._global.semantic_duplicate is not None:
            column, sim = self._global.semantic_duplicate
            tagged.append(
                samples
                | "SemanticDuplicates" >> SemanticDuplicates(column, sim, self._reused_embeddings)
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


def compact(sample: Sample) -> Sample:
    """A decided sample as it travels to its shard's writer: no image bytes, no vectors (the
    writer reads both back from the shard's staging file)."""
    scalars: dict[str, Score] = {k: v for k, v in sample.scores.items() if not isinstance(v, tuple)}
    return dataclasses.replace(sample, image=b"", scores=scalars)


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
        out.append(dataclasses.replace(d, image=s.image, scores={**vectors, **d.scores}))
    return out


class WriteShardFn(beam.DoFn):
    """(shard, its decided compact samples) -> the shard's files, images read from staging."""

    def __init__(self, out_dir: str, ctx: BuildContext, columns: tuple[ScoreColumn, ...]):
        self._out_dir = out_dir
        self._ctx = ctx
        self._columns = columns
        self._shards = Metrics.counter(METRICS_NAMESPACE, "shards_written")

    def process(self, element: tuple[int, Iterable[Sample]]) -> Iterator[ShardStats]:
        from synthgen.pipelines.staging import read_signed, read_staged

        shard, decided = element
        maybe_fault("write", f"{shard:05d}")
        out = Path(self._out_dir)
        samples = with_staged(decided, read_staged(out, shard))
        signed = read_signed(out, shard)
        yield write_shard(out, shard, samples, self._ctx, self._columns, signed)
        self._shards.inc()


class WriteShards(beam.PTransform):
    """Decided samples -> one set of shard files per shard id; emits each shard's ShardStats.

    Only compact decisions are grouped by shard (`compact`); each writer reads its shard's
    images and vectors from the staging file, so no step holds more than one shard's images.
    """

    def __init__(self, out_dir: str, ctx: BuildContext, columns: tuple[ScoreColumn, ...]):
        super().__init__()
        self._out_dir = out_dir
        self._ctx = ctx
        self._columns = tuple(columns)

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        return (
            samples
            | "KeyByShard" >> beam.Map(lambda s: (s.request.shard, compact(s)))
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(WriteShardFn(self._out_dir, self._ctx, self._columns))
        )


# -- reference sets (read on the driver, before the pipeline) ------------------------------


def source_images(source: Any) -> Iterator[tuple[str, str, bytes]]:
    """(reference, label, encoded image) of every record of a balance-style source.

    The source's own reader lists them (`Source.iter_images`: labels and bytes from one
    walk, each image checked to decode), so a reference always names the image beside it.
    """
    for image in source.iter_images():
        yield image.reference, image.label, image.data


def _source_sha256(location: str) -> str:
    import hashlib

    from synthgen.generators.sources.webdataset_source import expand_pattern
    from synthgen.storage.hashing import file_sha256, folder_sha256

    path = Path(location)
    if path.is_file():
        return file_sha256(path)
    if path.is_dir():
        return folder_sha256(path)
    h = hashlib.sha256()
    for url in expand_pattern(location):
        h.update(file_sha256(Path(url)).encode())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class ReferenceInput:
    """A reference or eval set as the driver opens it: checked, nothing read yet."""

    kind: str  # reference | eval_set
    location: str  # resolved path or shard pattern
    spec: Any  # BalanceSpec-shaped: format, label_column, image_column, label_type
    max_images: int


def reference_inputs(recipe: Recipe, base_dir: Path | None) -> list[ReferenceInput]:
    """The build's reference (its own, else its balance source) and eval set, each opened
    once to check it exists and is readable (SourceError naming it); nothing is written."""
    from synthgen.generators.sources.open import open_source
    from synthgen.schemas.recipe import BalanceSpec, RecipeError
    from synthgen.validators.build_checks import uses_embeddings

    base = base_dir or Path.cwd()
    out = []
    if (recipe.reference is not None or recipe.eval_set is not None) and not uses_embeddings(
        recipe
    ):
        raise RecipeError(
            "reference / eval_set: comparing with real images needs stored embeddings; add "
            "`{name: clip_embedding}` to scoring.scorers"
        )
    for kind in ("reference", "eval_set"):
        spec = getattr(recipe, kind)
        max_images = 10_000_000
        if spec is None and kind == "reference" and recipe.balance is not None:
            if not uses_embeddings(recipe):
                continue  # the balance source is the default reference only with embeddings
            spec = recipe.balance
        elif spec is not None:
            max_images = spec.max_images
            spec = BalanceSpec(
                source=spec.source,
                format=spec.format,
                label_column=spec.label_column,
                image_column=spec.image_column,
                label_type=spec.label_type,
            )
        if spec is None:
            continue
        from synthgen.pipelines.remote import source_location

        location = source_location(base, spec.source)
        open_source(spec, location)
        out.append(ReferenceInput(kind, location, spec, max_images))
    return out


def prepare_reference(
    recipe: Recipe, ref: ReferenceInput, clip: Any, cache_dir: Path, device: str = "cpu"
) -> Path:
    """The embedded set's cache file under `cache_dir` (made once per source content, CLIP
    weights and class mapping; later builds and rounds read it)."""
    import itertools

    from synthgen.generators.sources.base import PixelLimit
    from synthgen.generators.sources.open import label_resolver, open_source
    from synthgen.validators.nearest import (
        cache_key,
        cached_reference,
        clip_encoder,
        embed_reference,
    )

    resolve = label_resolver(recipe, ref.spec.label_type)
    mapping = {c.name: c.id for c in recipe.classes}
    key = cache_key(
        _source_sha256(ref.location),
        clip.sha256,
        {
            "classes": mapping,
            "label_type": ref.spec.label_type,
            "max": ref.max_images,
            # the embedding's batch shape and device change its float rounding
            "encoder": {"compute_batch": clip.compute_batch, "device": device},
        },
    )

    def make() -> ReferenceSet:
        s = recipe.sampling  # images declaring far more pixels are refused undecoded
        source = open_source(ref.spec, ref.location, PixelLimit(s.width, s.height))
        items = (
            (r, cid, data)
            for r, label, data in source_images(source)
            if (cid := resolve(label)) is not None
        )
        encode = clip_encoder(clip, device, recipe.model.cpu_threads)
        return embed_reference(itertools.islice(items, ref.max_images), encode)

    return cached_reference(cache_dir, ref.kind, key, make)


def prepare_references(
    resolved: Any, inputs: Sequence[ReferenceInput], out: Path
) -> dict[str, str]:
    """kind -> the embedded set's cache file, under the build's `.synthgen/` (made once)."""
    from synthgen.schemas.manifest import STATE_DIR
    from synthgen.validators.scorers.clip_embedding import ClipEmbeddingScorer

    if not inputs:
        return {}
    clip = next((s.clip for s in resolved.scorers if isinstance(s, ClipEmbeddingScorer)), None)
    if clip is None:
        raise ValueError("reference / eval_set: add the `clip_embedding` scorer to scoring.scorers")
    device = resolved.recipe.model.device
    cache = out / STATE_DIR / "references"
    return {
        ref.kind: str(prepare_reference(resolved.recipe, ref, clip, cache, device))
        for ref in inputs
    }


def reused_embeddings(out: Path, shards: Sequence[int], global_checks: GlobalChecks) -> list[Any]:
    """(class, (key, embedding)) of shards written earlier, for semantic dedup."""
    import pyarrow.parquet as pq

    from synthgen.schemas.manifest import shard_files

    if global_checks.semantic_duplicate is None:
        return []
    column = global_checks.semantic_duplicate[0]
    found = []
    for shard in shards:
        table = pq.read_table(out / shard_files(shard)[1], columns=["key", "class_label", column])
        for row in table.to_pylist():
            if row[column] is not None:
                found.append((row["class_label"], (row["key"], tuple(row[column]))))
    return found


def with_metrics(
    manifest: Any,
    out: Path,
    recipe: Recipe,
    inputs: Sequence[ReferenceInput],
    paths: dict[str, str],
) -> Any:
    """The manifest with its metrics block (accepted samples against the reference)."""
    from synthgen.validators.build_checks import embedding_column
    from synthgen.validators.metrics import metrics_info

    column = embedding_column(manifest.score_columns)
    path = paths.get("reference")
    if path is None or column is None:
        return manifest
    location = next(r.location for r in inputs if r.kind == "reference")
    info = metrics_info(
        out,
        manifest.shard_ids,
        column,
        read_reference(Path(path)),
        {c.id: c.name for c in recipe.classes},
        location,
        os.path.relpath(path, out),
    )
    return manifest.model_copy(update={"metrics": info})


def reference_for_build(out: Path, manifest: Any, source: str, clip_model: str | None) -> Path:
    """`--reference SRC` on a finished build: SRC embedded with the build's own CLIP model
    (its folder from `clip_model`, else the recipe's path from the current directory; its
    weights must match the build's) and cached under the build's `.synthgen/references/`."""
    from synthgen.schemas.manifest import STATE_DIR
    from synthgen.schemas.recipe import recipe_from_dict
    from synthgen.validators.clip_model import clip_ref

    recipe = recipe_from_dict(manifest.recipe, "manifest.json")
    if clip_model is not None:
        scoring = recipe.scoring.model_copy(update={"clip_model": str(Path(clip_model).resolve())})
        recipe = recipe.model_copy(update={"scoring": scoring})
    clip = clip_ref(recipe, Path.cwd())
    built = {s.get("sha256") for s in manifest.scorers if s.get("name") == "clip_embedding"}
    if not built:
        raise ValueError(f"{out}: the build stored no image embeddings (no clip_embedding scorer)")
    if clip.sha256 not in built:
        raise ValueError(
            f"{clip.path}: CLIP weights differ from the build's (sha256 {clip.sha256[:12]}); "
            "pass the build's model with --clip-model"
        )
    only = {
        "reference": _reference_spec(source, recipe.reference),
        "balance": None,
        "eval_set": None,
    }
    inputs = reference_inputs(recipe.model_copy(update=only), None)
    return Path(prepare_reference(recipe, inputs[0], clip, out / STATE_DIR / "references"))


def _reference_spec(source: str, spec: Any) -> Any:
    """A `reference:` block for `source`, keeping the recipe's label settings if it has some."""
    from synthgen.schemas.recipe import ReferenceSpec

    if spec is None:
        return ReferenceSpec(source=str(Path(source).resolve()))
    return spec.model_copy(update={"source": str(Path(source).resolve())})


def check_against_reference(
    out: Path, source: str, clip_model: str | None = None
) -> tuple[list[str], list[Any]]:
    """`synthgen validate DIR --reference SRC`: (failures, expectation results).

    Every accepted sample whose nearest SRC image is a near copy by the recipe's
    `checks.near_copy` rule (default: cosine similarity >= 0.95) is a failure naming both;
    the recipe's metric gates are evaluated against SRC. Nothing in the build is rewritten."""
    from synthgen.schemas.recipe import NearCopySpec, recipe_from_dict
    from synthgen.validators.build_checks import embedding_column
    from synthgen.validators.corpus import read_manifest
    from synthgen.validators.nearest import build_nearest, near_copies

    manifest = read_manifest(out)
    recipe = recipe_from_dict(manifest.recipe, "manifest.json")
    path = reference_for_build(out, manifest, source, clip_model)
    column = embedding_column(manifest.score_columns)
    assert column is not None  # reference_for_build checked the scorer
    ref = read_reference(path)
    spec = recipe.checks.near_copy or NearCopySpec()
    failures = [
        f"near_copy: {r['key']} ({r['class_name']}) is a near copy of {r['nearest_ref']} "
        f"(similarity {r['similarity']:.4f}, phash distance {r['phash_distance']})"
        for r in near_copies(build_nearest(out, manifest.shard_ids, column, ref), spec)
    ]
    inputs = [ReferenceInput("reference", str(Path(source).resolve()), None, 0)]
    measured = with_metrics(manifest, out, recipe, inputs, {"reference": str(path)})
    return failures, metric_gate_results(measured, recipe)
