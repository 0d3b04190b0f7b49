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
    WriteShards,
)
from synthgen.pipelines.writer import reused_features
from synthgen.schemas.manifest import PlanRound
from synthgen.validators.build_checks import make_checks
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
) -> dict[str, int]:
    """Generate, score, check and write `shard_ids` of one round; returns Beam's counters.

    1. the model steps (generation, scoring) as RunInference handlers, loaded once per worker
    2. the checks: per sample, and build-wide over this round plus `earlier_shards`
    3. one pipeline: shard ids -> samples -> decided samples -> shard files
    4. run it with a progress display; a runner that does not finish DONE is a failure
    """
    r = resolved.recipe
    columns = resolved.score_columns
    generate = generation_handler(resolved)
    score = ScoreSamples(list(resolved.scorers), r.model.device, r.model.cpu_threads)
    checks, global_checks = make_checks(r, columns)
    reused = reused_features(out, earlier_shards, columns)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    progress_path = str(progress_dir)
    pipeline = beam.Pipeline(options=options)
    _ = (
        pipeline
        | "ShardIds" >> beam.Create(shard_ids)
        | "Generate"
        >> GenerateSamples(r, plan_round, generate, score, progress_path, r.model.accelerator)
        | "Check" >> DecideSamples(checks, global_checks, reused, progress_path, plan_round.quota)
        | "Write" >> WriteShards(str(out), ctx, columns)
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
