"""The build driver: validate everything, plan, run the Beam pipeline, publish the manifest."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from synthgen.generators.handler import DiffusersHandler
from synthgen.generators.planning import check_unique_keys, plan
from synthgen.pipelines.context import BuildContext
from synthgen.pipelines.progress import Progress
from synthgen.pipelines.resolve import (
    ResolvedRecipe,
    generation_settings,
    make_context,
    resolve,
)
from synthgen.pipelines.transforms import (
    METRICS_NAMESPACE,
    DecideSamples,
    GenerateSamples,
    GlobalChecks,
    WriteShards,
)
from synthgen.schemas.manifest import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    STATE_DIR,
    shard_files,
    stats_name,
)
from synthgen.schemas.recipe import Recipe, load_recipe
from synthgen.schemas.records import GenerationRequest, SampleFeatures
from synthgen.storage.atomic import remove_stale_tmp, write_bytes_atomic
from synthgen.storage.faults import maybe_fault
from synthgen.storage.hashing import file_sha256
from synthgen.validators.base import Check
from synthgen.validators.checks.odd_size import OddSize
from synthgen.validators.checks.threshold import ScoreThreshold
from synthgen.validators.clip_scorer import ClipScoreHandler
from synthgen.validators.corpus import validate_corpus
from synthgen.validators.report import write_report

logger = logging.getLogger(__name__)


class BuildError(RuntimeError):
    """A build cannot start or did not complete; the message says why."""


class ValidationFailed(BuildError):
    """The corpus was written but failed its expectations; the manifest says so."""

    def __init__(self, message: str, result: BuildResult):
        super().__init__(message)
        self.result = result


@dataclass
class BuildResult:
    output: Path
    manifest: dict[str, Any]
    seconds: float
    generated_now: int
    reused_shards: list[int] = field(default_factory=list)
    metrics: dict[str, int] = field(default_factory=dict)


def beam_options(beam_args: list[str]) -> PipelineOptions:
    """PipelineOptions from the arguments after `--`; DirectRunner unless a runner is named."""
    if not any(a.startswith("--default_sdk_harness_log_level") for a in beam_args):
        beam_args = [*beam_args, "--default_sdk_harness_log_level=WARNING"]
    options = PipelineOptions(flags=list(beam_args))
    std = options.view_as(StandardOptions)
    if not std.runner:
        std.runner = "DirectRunner"
    if std.runner == "DaskRunner":  # Beam only knows it by its full name
        std.runner = "apache_beam.runners.dask.dask_runner.DaskRunner"
    from apache_beam.runners.runner import create_runner

    try:
        create_runner(std.runner)  # an unknown runner fails before any output exists
    except (ValueError, ImportError) as exc:
        raise BuildError(f"Beam runner {std.runner!r}: {exc}") from None
    return options


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


def reused_features(
    out: Path, shards: list[int], score_columns: tuple[str, ...]
) -> list[SampleFeatures]:
    """What build-wide checks need of the samples in reused shards, read from their Parquet."""
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


# -- output folder state --------------------------------------------------------------------


def _state_path(out: Path) -> Path:
    return out / STATE_DIR / "state.json"


def prepare_output(out: Path, recipe: Recipe, resume: bool) -> dict[str, Any]:
    """Create or reopen the output folder; returns the build state (hash, created_at)."""
    if out.exists() and not out.is_dir():
        raise BuildError(f"{out}: output path exists and is not a directory")
    non_empty = out.exists() and any(out.iterdir())
    if non_empty and not resume:
        raise BuildError(
            f"{out}: output directory is not empty; pass --resume to finish an interrupted "
            "build there, or choose a new directory"
        )
    if non_empty:
        state_file = _state_path(out)
        if not state_file.is_file():
            raise BuildError(
                f"{out}: cannot resume: not a synthgen build (no {STATE_DIR}/state.json)"
            )
        state = json.loads(state_file.read_text())
        if state.get("recipe_hash") != recipe.hash:
            raise BuildError(
                f"{out}: cannot resume: the recipe changed since this build started "
                f"(recipe hash {str(state.get('recipe_hash'))[:12]} there, "
                f"{recipe.hash[:12]} now); "
                "build into a new directory"
            )
        return state
    out.mkdir(parents=True, exist_ok=True)
    (out / STATE_DIR).mkdir(exist_ok=True)
    state = {
        "recipe_hash": recipe.hash,
        "recipe": recipe.model_dump(mode="json"),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    write_bytes_atomic(_state_path(out), json.dumps(state, indent=2).encode())
    return state


def finished_shard(out: Path, shard: int, recipe_hash: str) -> dict[str, Any] | None:
    """A shard's stats entry if the shard is complete and its files match; else None."""
    path = out / stats_name(shard)
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())
    except ValueError:
        return None
    if entry.get("recipe_hash") != recipe_hash:
        return None
    for name in shard_files(shard):
        info = entry.get("files", {}).get(name)
        f = out / name
        if not info or not f.is_file() or f.stat().st_size != info["bytes"]:
            return None
        if file_sha256(f) != info["sha256"]:
            return None
    return dict(entry)


def _discard_shard(out: Path, shard: int) -> None:
    (out / stats_name(shard)).unlink(missing_ok=True)
    for name in shard_files(shard):
        (out / name).unlink(missing_ok=True)


# -- the build -------------------------------------------------------------------------------


def build_manifest(
    resolved: ResolvedRecipe,
    state: dict[str, Any],
    requests: list[GenerationRequest],
    entries: list[dict[str, Any]],
    ctx: BuildContext,
) -> dict[str, Any]:
    r = resolved.recipe
    accepted = sum(e["accepted"] for e in entries)
    rejected = sum(e["rejected"] for e in entries)
    planned_per_class: dict[str, int] = {}
    for req in requests:
        planned_per_class[req.class_name] = planned_per_class.get(req.class_name, 0) + 1
    return {
        "manifest_version": MANIFEST_VERSION,
        "status": "complete",
        "recipe_name": r.name,
        "recipe_hash": r.hash,
        "recipe": r.model_dump(mode="json"),
        "created_at": state["created_at"],
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "versions": json.loads(ctx.library_versions),
        "model": {"path": ctx.model_path, "sha256": ctx.model_sha256, "class": ctx.pipeline_class},
        "scorers": json.loads(ctx.scorers),
        "score_columns": list(resolved.score_columns),
        "counts": {
            "planned": len(requests),
            "attempted": accepted + rejected,
            "accepted": accepted,
            "rejected": rejected,
            "planned_per_class": planned_per_class,
        },
        "shards": [
            {k: e[k] for k in ("shard", "files", "accepted", "rejected")}
            for e in sorted(entries, key=lambda e: e["shard"])
        ],
    }


LATEST = "latest"


def _state_hash(build_dir: Path) -> str | None:
    try:
        return str(json.loads(_state_path(build_dir).read_text())["recipe_hash"])
    except (OSError, ValueError, KeyError):
        return None


def versioned_output(root: Path, recipe: Recipe, resume: bool) -> Path:
    """The build folder under ROOT/builds/ for a published build.

    With `resume`, the newest unfinished build of the same recipe is continued, and a
    `latest` that is already a complete build of this recipe is returned as it is.
    Otherwise a new folder `<UTC time>-<recipe hash>` is made; complete builds are never
    written to again.
    """
    if root.exists() and not root.is_dir():
        raise BuildError(f"{root}: publish root exists and is not a directory")
    builds = root / "builds"
    if resume:
        latest = root / LATEST
        if (
            latest.is_symlink()
            and (latest / MANIFEST_NAME).is_file()
            and _state_hash(latest.resolve()) == recipe.hash
        ):
            return latest.resolve()
        if builds.is_dir():
            unfinished = [
                d
                for d in sorted(builds.iterdir())
                if d.is_dir() and not (d / MANIFEST_NAME).exists() and _state_hash(d) == recipe.hash
            ]
            if unfinished:
                return unfinished[-1]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return builds / f"{stamp}-{recipe.hash[:12]}"


def publish(root: Path, build_dir: Path) -> Path:
    """Swap ROOT/latest to this complete build in one atomic step."""
    from synthgen.storage.atomic import swap_symlink

    swap_symlink(root / LATEST, f"builds/{build_dir.name}")
    return root / LATEST


def run_build(
    recipe_path: str | Path,
    output: str | Path | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    beam_args: list[str] | None = None,
    show_progress: bool = True,
    test_pipeline: beam.Pipeline | None = None,
    publish_root: str | Path | None = None,
) -> BuildResult:
    """Build a corpus into `output`, or as a new version under `publish_root`.

    Every input is checked before any output folder is touched.
    """
    start = time.monotonic()
    if (output is None) == (publish_root is None):
        raise BuildError("give exactly one of an output directory or a publish root")
    recipe, base_dir = load_recipe(recipe_path, overrides)
    resolved = resolve(recipe, base_dir)
    options = beam_options(beam_args or [])
    requests: list[GenerationRequest] = []
    if recipe.balance is None:
        requests = plan(recipe)
        check_unique_keys(requests)

    if publish_root is not None:
        root = Path(publish_root).resolve()
        out = versioned_output(root, recipe, resume)
        result = _build_into(
            out,
            resolved,
            requests,
            options,
            resume or out.exists(),
            start,
            show_progress,
            test_pipeline,
        )
        publish(root, out)
        return result
    out = Path(output).resolve()  # type: ignore[arg-type]
    return _build_into(
        out, resolved, requests, options, resume, start, show_progress, test_pipeline
    )


@dataclass
class ShardsOutcome:
    entries: list[dict[str, Any]]
    reused: list[int]
    generated_now: int
    metrics: dict[str, int]


def build_shards(
    out: Path,
    resolved: ResolvedRecipe,
    ctx: BuildContext,
    requests: list[GenerationRequest],
    options: PipelineOptions,
    show_progress: bool,
    test_pipeline: beam.Pipeline | None,
    plan_kwargs: dict[str, Any] | None = None,
    prior_shards: list[int] | None = None,
    quota: dict[int, int] | None = None,
) -> ShardsOutcome:
    """Make sure every shard of `requests` is written: reuse finished ones, build the rest.

    `prior_shards` (earlier balancing rounds) take part in build-wide checks; `quota` caps
    accepted samples per class id (the rest are rejected as `surplus`).
    """
    recipe = resolved.recipe
    shard_ids = sorted({r.shard for r in requests})
    done: dict[int, dict[str, Any]] = {}
    for shard in shard_ids:
        entry = finished_shard(out, shard, recipe.hash)
        if entry is None:
            _discard_shard(out, shard)
        else:
            done[shard] = entry
    todo = [s for s in shard_ids if s not in done]
    if done:
        logger.info("resuming: reusing %d finished shard(s), building %d", len(done), len(todo))
    metrics: dict[str, int] = {}
    todo_set = set(todo)
    generated_now = sum(1 for r in requests if r.shard in todo_set)
    if todo:
        progress_dir = out / STATE_DIR / "progress"
        shutil.rmtree(progress_dir, ignore_errors=True)
        progress_dir.mkdir(parents=True)
        metrics = _run_pipeline(
            resolved,
            ctx,
            todo,
            reused_features(out, sorted({*done, *(prior_shards or [])}), resolved.score_columns),
            options,
            out,
            progress_dir,
            test_pipeline,
            total=len(requests),
            done_counts=(
                sum(e["accepted"] for e in done.values()),
                sum(e["rejected"] for e in done.values()),
            ),
            show_progress=show_progress,
            plan_kwargs=plan_kwargs,
            quota=quota,
        )
    entries: list[dict[str, Any]] = []
    missing: list[int] = []
    for shard in shard_ids:
        entry = done.get(shard) or finished_shard(out, shard, recipe.hash)
        if entry is None:
            missing.append(shard)
        else:
            entries.append(entry)
    if missing:
        raise BuildError(f"{out}: build incomplete: shard(s) {missing} were not written")
    return ShardsOutcome(entries, sorted(done), generated_now, metrics)


def finalize(
    out: Path,
    resolved: ResolvedRecipe,
    state: dict[str, Any],
    ctx: BuildContext,
    requests: list[GenerationRequest],
    outcome: ShardsOutcome,
    start: float,
    targets: dict[str, int] | None = None,
    extra: dict[str, Any] | None = None,
) -> BuildResult:
    """Gate the written corpus with its expectations, then write the manifest and report."""
    manifest = build_manifest(resolved, state, requests, outcome.entries, ctx)
    if targets is not None:
        manifest["counts"]["target_accepted_per_class"] = targets
    manifest.update(extra or {})
    # The gate: corpus expectations over what was written, before the manifest exists.
    validation = validate_corpus(
        out,
        outcome.entries,
        resolved.recipe,
        manifest["counts"]["planned_per_class"],
        list(resolved.score_columns),
        targets=targets,
        tars=False,
    )
    manifest["validation"] = validation.as_dict()
    manifest["status"] = "complete" if validation.ok else "failed_validation"
    maybe_fault("manifest", "*")
    write_bytes_atomic(out / MANIFEST_NAME, json.dumps(manifest, indent=2).encode())
    write_report(out)
    seconds = time.monotonic() - start
    result = BuildResult(
        out, manifest, seconds, outcome.generated_now, outcome.reused, outcome.metrics
    )
    if not validation.ok:
        failed = [
            f"{e.dataset}: {e.expectation} {e.kwargs} {e.detail}"
            for e in validation.failed_expectations()
        ]
        raise ValidationFailed(
            f"{out}: build failed validation:\n  " + "\n  ".join(validation.failures + failed),
            result,
        )
    return result


def _already_complete(out: Path, start: float, shard_ids: list[int]) -> BuildResult | None:
    if not (out / MANIFEST_NAME).is_file():
        return None
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    if manifest.get("status") != "complete":
        raise BuildError(f"{out}: the build there ended as {manifest.get('status')!r}")
    logger.info("%s: build already complete; nothing to do", out)
    return BuildResult(out, manifest, time.monotonic() - start, 0, reused_shards=shard_ids)


def _build_into(
    out: Path,
    resolved: ResolvedRecipe,
    requests: list[GenerationRequest],
    options: PipelineOptions,
    resume: bool,
    start: float,
    show_progress: bool,
    test_pipeline: beam.Pipeline | None,
) -> BuildResult:
    if resolved.recipe.balance is not None:
        from synthgen.pipelines.balance import run_balance

        return run_balance(out, resolved, options, resume, start, show_progress)
    state = prepare_output(out, resolved.recipe, resume)
    remove_stale_tmp(out)
    ctx = make_context(resolved, state["created_at"])
    complete = _already_complete(out, start, sorted({r.shard for r in requests}))
    if complete is not None:
        return complete
    outcome = build_shards(out, resolved, ctx, requests, options, show_progress, test_pipeline)
    return finalize(out, resolved, state, ctx, requests, outcome, start)


def _run_pipeline(
    resolved: ResolvedRecipe,
    ctx: BuildContext,
    shard_ids: list[int],
    reused: list[SampleFeatures],
    options: PipelineOptions,
    out: Path,
    progress_dir: Path,
    test_pipeline: beam.Pipeline | None,
    total: int,
    done_counts: tuple[int, int],
    show_progress: bool,
    plan_kwargs: dict[str, Any] | None = None,
    quota: dict[int, int] | None = None,
) -> dict[str, int]:
    r = resolved.recipe
    generate = DiffusersHandler(generation_settings(resolved), batch_size=r.batch_size)
    score = ClipScoreHandler(
        str(resolved.clip.config.parent),
        resolved.clip.name,
        r.model.device,
        r.scoring.batch_size,
        r.model.cpu_threads,
        class_prompts={c.id: c.prompts[0] for c in r.classes},
    )
    checks, global_checks = make_checks(resolved)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pipeline = test_pipeline or beam.Pipeline(options=options)
    _ = (
        pipeline
        | "ShardIds" >> beam.Create(shard_ids)
        | "Generate"
        >> GenerateSamples(r, generate, score, plan_kwargs, str(progress_dir), r.model.accelerator)
        | "Check" >> DecideSamples(checks, global_checks, reused, str(progress_dir), quota)
        | "Write" >> WriteShards(str(out), ctx, resolved.score_columns)
    )
    progress = Progress(progress_dir, total, *done_counts) if show_progress else None
    if progress:
        progress.__enter__()
    result = None
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
    return _counters(result)


def _counters(result: Any) -> dict[str, int]:
    from apache_beam.metrics.metric import MetricsFilter

    try:
        query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except (NotImplementedError, AttributeError):
        return {}
    out: dict[str, int] = {}
    for c in query.get("counters", []):
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(c.committed or 0)
    return out
