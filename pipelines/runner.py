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
from synthgen.pipelines.staging import ReadStaged, StageSamples, staged_shards
from synthgen.pipelines.transforms import (
    METRICS_NAMESPACE,
    DecideSamples,
    GenerateSamples,
    WriteShards,
    reused_embeddings,
)
from synthgen.pipelines.writer import reused_features
from synthgen.schemas.manifest import PlanRound
from synthgen.validators.build_checks import check_columns, embedding_column, make_checks
from synthgen.validators.scoring import ScoreSamples

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
    references: dict[str, str] | None = None,
) -> dict[str, int]:
    """Generate, score, check and write `shard_ids` of one round; returns Beam's counters.

    1. the model steps (generation, scoring) as RunInference handlers, loaded once per worker
    2. the checks: per sample, and build-wide over this round plus `earlier_shards`
    3. pipeline one: shard ids -> generated, scored samples -> staging files (one consumer
       chain, so no runner repeats the model work); shards already staged are skipped
    4. pipeline two: staging files -> decided samples -> shard files
    Each runs with the progress display; a runner that does not finish DONE is a failure.
    """
    r = resolved.recipe
    columns = (*resolved.score_columns, *check_columns(r))
    checks, global_checks = make_checks(r, columns)
    reused = reused_features(out, earlier_shards, columns)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    progress_path = str(progress_dir)
    to_generate = [s for s in shard_ids if s not in staged_shards(out, shard_ids)]
    if len(to_generate) < len(shard_ids):
        logger.info("%d shard(s) already generated and staged", len(shard_ids) - len(to_generate))
    metrics: dict[str, int] = {}
    progress = Progress(progress_dir, total, *done_counts) if show_progress else None
    if progress:
        progress.__enter__()
    try:
        if to_generate:
            generate = generation_handler(resolved)
            score = ScoreSamples(list(resolved.scorers), r.model.device, r.model.cpu_threads)
            first = beam.Pipeline(options=options)
            _ = (
                first
                | "ShardIds" >> beam.Create(to_generate)
                | "Generate"
                >> GenerateSamples(
                    r, plan_round, generate, score, progress_path, r.model.accelerator
                )
                | "Stage" >> StageSamples(str(out))
            )
            _add(metrics, _run(first))
        second = beam.Pipeline(options=options)
        _ = (
            second
            | "ShardIds" >> beam.Create(shard_ids)
            | "Read" >> ReadStaged(str(out))
            | "Check"
            >> DecideSamples(
                checks,
                global_checks,
                reused,
                progress_path,
                plan_round.quota,
                nearest=references,
                embedding_column=embedding_column(columns),
                reused_embeddings=reused_embeddings(out, earlier_shards, global_checks),
            )
            | "Write" >> WriteShards(str(out), ctx, columns)
        )
        _add(metrics, _run(second))
    finally:
        if progress:
            progress.__exit__(None, None, None)
    return metrics


def _add(total: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        total[k] = total.get(k, 0) + v


def _run(pipeline: beam.Pipeline) -> dict[str, int]:
    result = None
    state = None
    try:
        result = pipeline.run()
        state = result.wait_until_finish()
    finally:
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
