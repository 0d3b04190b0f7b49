"""Beam wiring for one round of shards: options, the pipeline graph, progress, counters."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from synthgen.pipelines.context import BuildContext
from synthgen.pipelines.output import BuildError
from synthgen.pipelines.progress import Progress
from synthgen.pipelines.resolve import ResolvedRecipe, generation_settings
from synthgen.pipelines.transforms import (
    METRICS_NAMESPACE,
    DecideSamples,
    GenerateSamples,
    GlobalChecks,
    WriteShards,
)
from synthgen.schemas.manifest import PlanRound, shard_files
from synthgen.schemas.records import SampleFeatures
from synthgen.validators.base import Check
from synthgen.validators.checks.odd_size import OddSize
from synthgen.validators.checks.threshold import ScoreThreshold

logger = logging.getLogger(__name__)


def beam_options(beam_args: list[str]) -> PipelineOptions:
    """PipelineOptions from the arguments after `--`; DirectRunner unless a runner is named."""
    from apache_beam.runners.runner import create_runner

    if not any(a.startswith("--default_sdk_harness_log_level") for a in beam_args):
        beam_args = [*beam_args, "--default_sdk_harness_log_level=WARNING"]
    options = PipelineOptions(flags=list(beam_args))
    std = options.view_as(StandardOptions)
    if not std.runner:
        std.runner = "DirectRunner"
    if std.runner == "DaskRunner":  # Beam only knows it by its full name
        std.runner = "apache_beam.runners.dask.dask_runner.DaskRunner"
    try:
        create_runner(std.runner)  # an unknown runner fails before any output exists
    except (ValueError, ImportError) as exc:
        raise BuildError(f"Beam runner {std.runner!r}: {exc}") from None
    return options


def reused_features(
    out: Path, shards: list[int], score_columns: tuple[str, ...]
) -> list[SampleFeatures]:
    """What build-wide checks need of the samples in earlier shards, read from their Parquet."""
    import pyarrow.parquet as pq

    feats: list[SampleFeatures] = []
    columns = ["key", "class_label", "image_sha256", "phash", *score_columns]
    for shard in shards:
        table = pq.read_table(out / shard_files(shard)[1], columns=columns)
        for row in table.to_pylist():
            feats.append(
                SampleFeatures(
                    key=row["key"],
                    class_label=row["class_label"],
                    image_sha256=row["image_sha256"],
                    phash=row["phash"],
                    scores={c: (float("nan") if row[c] is None else row[c]) for c in score_columns},
                )
            )
    return feats


# check name -> (score column, keep samples above the threshold?)
def _threshold_columns(resolved: ResolvedRecipe) -> dict[str, tuple[str, bool]]:
    return {
        "dark": ("brightness", True),
        "light": ("brightness", False),
        "blurry": ("sharpness", True),
        "low_information": ("entropy", True),
        "clip_score": (resolved.clip_column, True),
        "label_margin": (resolved.margin_column, True),
    }


def make_checks(resolved: ResolvedRecipe) -> tuple[list[Check], GlobalChecks]:
    """Per-sample checks in reporting order, and the build-wide ones."""
    spec = resolved.recipe.checks
    sampling = resolved.recipe.sampling
    checks: list[Check] = []
    if spec.odd_size:
        checks.append(OddSize(sampling.width, sampling.height))
    quantiles: dict[str, tuple[str, float]] = {}
    for name, (column, keep_above) in _threshold_columns(resolved).items():
        threshold = getattr(spec, name)
        if threshold is None:
            continue
        q = threshold.per_class_quantile
        checks.append(ScoreThreshold(name, column, threshold.absolute, keep_above, quantile=q))
        if q is not None:
            quantiles[name] = (column, q)
    near = spec.near_duplicate.max_distance if spec.near_duplicate else None
    return checks, GlobalChecks(spec.exact_duplicate, near, quantiles)


def run_shards(
    resolved: ResolvedRecipe,
    ctx: BuildContext,
    plan_round: PlanRound,
    shard_ids: list[int],
    *,
    earlier_shards: list[int],
    out: Path,
    progress_dir: Path,
    show_progress: bool,
    options: PipelineOptions,
    total: int,
    done_counts: tuple[int, int],
) -> dict[str, int]:
    """Generate, score, check and write `shard_ids` of one round; returns Beam's counters.

    1. the model steps (generation, scoring) as RunInference handlers, loaded once per worker
    2. the checks: per sample, and build-wide over this round plus `earlier_shards`
    3. one pipeline: shard ids -> samples -> decided samples -> shard files
    4. run it with a progress display; a runner that does not finish DONE is a failure
    """
    from synthgen.validators.clip_scorer import ClipScoreHandler

    r = resolved.recipe
    generate = generation_handler(resolved)
    score = ClipScoreHandler(
        str(resolved.clip.config.parent),
        resolved.clip.name,
        r.model.device,
        r.scoring.batch_size,
        r.model.cpu_threads,
        class_prompts={c.id: c.prompts[0] for c in r.classes},
    )
    checks, global_checks = make_checks(resolved)
    reused = reused_features(out, earlier_shards, resolved.score_columns)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    progress_path = str(progress_dir)
    pipeline = beam.Pipeline(options=options)
    _ = (
        pipeline
        | "ShardIds" >> beam.Create(shard_ids)
        | "Generate"
        >> GenerateSamples(
            r, generate, score, plan_round.plan_kwargs(), progress_path, r.model.accelerator
        )
        | "Check" >> DecideSamples(checks, global_checks, reused, progress_path, plan_round.quota)
        | "Write" >> WriteShards(str(out), ctx, resolved.score_columns)
    )
    progress = Progress(progress_dir, total, *done_counts) if show_progress else None
    result = None
    state = None
    if progress:
        progress.__enter__()
    try:
        result = pipeline.run()
        state = result.wait_until_finish()
    finally:
        if progress:
            progress.__exit__(None, None, None)
        client = getattr(result, "client", None)  # DaskRunner's connection to the cluster
        if client is not None:
            client.close()
    if state is not None and str(state) not in ("DONE", "PipelineState.DONE"):
        raise BuildError(f"pipeline finished in state {state}")
    return counters(result)


def counters(result: Any) -> dict[str, int]:
    from apache_beam.metrics.metric import MetricsFilter

    try:
        query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except (NotImplementedError, AttributeError):
        return {}
    out: dict[str, int] = {}
    for c in query.get("counters", []):
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(c.committed or 0)
    return out


def generation_handler(resolved: ResolvedRecipe) -> Any:
    from synthgen.generators.handler import DiffusersHandler

    return DiffusersHandler(generation_settings(resolved), batch_size=resolved.recipe.batch_size)
