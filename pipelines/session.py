"""The build session: one object owns an output directory for the life of a build.

    session = BuildSession(out, resolved, options, resume=..., show_progress=..., run=...)
    with session:                        # lock the directory, take the run's gate
        done = session.open()            # create or reopen; a verified complete build?
        while (r := strategy.next_round()) is not None:
            strategy.observe(session.run_round(r))
        session.finalize(strategy.finish(session))   # stats -> manifest -> gate -> report

What differs between a fixed-count build and a balancing build is the strategy
(synthgen.pipelines.strategies); everything about files, shards, resume and the manifest is here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apache_beam.options.pipeline_options import PipelineOptions

from synthgen.generators.planning import count_planned
from synthgen.generators.planning import shard_ids as planned_shards
from synthgen.pipelines.context import BuildContext
from synthgen.pipelines.output import (
    BuildError,
    check_output_dir,
    discard_shard,
    exclusive_lock,
    finished_shard,
    prepare_output,
    take_file,
    utc_now,
    verified_manifest,
)
from synthgen.pipelines.references import (
    prepare_references,
    reference_inputs,
    with_metrics,
)
from synthgen.pipelines.resolve import ResolvedRecipe, make_context
from synthgen.pipelines.runner import run_shards
from synthgen.pipelines.staging import clear_staged
from synthgen.schemas.manifest import (
    MANIFEST_NAME,
    REPORT_HTML,
    REPORT_JSON,
    STATE_DIR,
    BuildState,
    Counts,
    Lineage,
    Manifest,
    ModelInfo,
    PlanRound,
    ShardStats,
    UsageInfo,
    WatermarkInfo,
    stats_name,
)
from synthgen.schemas.recipe import Recipe
from synthgen.storage.atomic import remove_stale_tmp, write_bytes_atomic
from synthgen.storage.c2pa_sign import signing_config, write_signing_config
from synthgen.storage.faults import maybe_fault
from synthgen.storage.hashing import file_sha256
from synthgen.storage.model_card import license_info
from synthgen.storage.watermark import watermark_info
from synthgen.validators.build_checks import check_columns
from synthgen.validators.gate_process import GateProcess
from synthgen.validators.report import record_run_start, write_report
from synthgen.validators.scorers.base import WorkerModels
from synthgen.validators.trend import previous_build

if TYPE_CHECKING:
    from synthgen.pipelines.remote import Mirror
    from synthgen.pipelines.runcontext import RunContext

logger = logging.getLogger(__name__)


@dataclass
class BuildResult:
    output: Path  # the build directory (for an object-store build: its local working copy)
    manifest: Manifest
    seconds: float
    generated_now: int
    reused_shards: list[int] = field(default_factory=list)
    metrics: dict[str, int] = field(default_factory=dict)
    location: str = ""  # where the build is: the directory, or its s3:// / gs:// URL

    def __post_init__(self) -> None:
        self.location = self.location or str(self.output)


class ValidationFailed(BuildError):
    """The corpus was written but failed its expectations; the manifest says so."""

    def __init__(self, message: str, result: BuildResult):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class RoundOutcome:
    """What one round left on disk: every shard's stats, and what this run did."""

    out: Path
    plan_round: PlanRound
    stats: list[ShardStats]
    reused: list[int]
    generated_now: int
    metrics: dict[str, int]


@dataclass(frozen=True)
class Finish:
    """What a strategy adds to the manifest when its rounds are done."""

    targets: dict[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # Manifest fields: files, balance


class BuildSession:
    """Owns `out` for one build: state, lock, rounds of shards, and the steps after them.

    `run` is the command's run context (synthgen.pipelines.runcontext): its clock times the
    build, its early gate process gates it, and it records `out` as opened."""

    def __init__(
        self,
        out: Path,
        resolved: ResolvedRecipe,
        options: PipelineOptions,
        *,
        resume: bool,
        show_progress: bool,
        run: RunContext,
        mirror: Mirror | None = None,
    ):
        self.out = out
        self.mirror = mirror  # an object store kept in step with `out`, if any
        self.resolved = resolved
        self.options = options
        self.resume = resume
        self.show_progress = show_progress
        self.run = run
        self.rounds: list[RoundOutcome] = []
        self._planned_per_class: dict[str, int] = {}
        self._stack = ExitStack()
        self._gate = GateProcess()  # the build's own is taken when it opens
        # the models the driver loads for this build (the reference sets' and a feedback
        # strategy's CLIP copy): each loaded once however many steps use it
        m = resolved.recipe.model
        self.driver_models = WorkerModels(m.device, m.cpu_threads)
        self.state: BuildState | None = None
        self.ctx: BuildContext | None = None
        self.lineage: Lineage | None = None
        self.recipe_hashes = [resolved.recipe.hash]  # an extended build's lineage: more
        # reference / eval sets: opened (checked) now, before the directory is touched
        self.references = reference_inputs(
            resolved.recipe, resolved.base_dir, resolved.score_columns
        )
        self.reference_paths: dict[str, str] = {}

    def __enter__(self) -> BuildSession:
        check_output_dir(self.out, self.resume)  # before the lock file exists
        self.out.mkdir(parents=True, exist_ok=True)
        self.run.open_output(self.out)  # what an interrupt reports, where an error is kept
        self._stack.enter_context(exclusive_lock(self.out, "output directory"))
        self._gate = self.run.take_gate()  # started with the command, if it was
        self._stack.callback(self._gate.close)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def recipe(self) -> Recipe:
        return self.resolved.recipe

    def open(self) -> Manifest | None:
        """Create or reopen the output directory; a verified complete manifest if there is one.

        1. state: a new build, or the same recipe and content identity as the one there
        2. leftovers of a crashed writer removed
        3. the build-wide provenance every sample carries
        4. a manifest is trusted only if every file it lists still matches it
        """
        # The lock file exists from __enter__; an otherwise empty folder is a new build.
        fresh = (
            not any(p for p in self.out.iterdir() if p.name != STATE_DIR)
            and not (self.out / STATE_DIR / "state.json").exists()
        )
        self.state = prepare_output(
            self.out,
            self.recipe,
            self.resolved.identity(),
            self.resume or fresh,
            self.resolved.places(),
        )
        remove_stale_tmp(self.out)
        record_run_start(self.out)  # the report's build time leaves out idle time between runs
        if self.mirror is not None:
            self.mirror.push()  # the state object first: the store is now a build
        self.ctx = make_context(self.resolved, self.state.created_at)
        self.reference_paths = prepare_references(
            self.resolved, self.references, self.out, self.driver_models
        )
        signing = signing_config(self.recipe.output.c2pa, self.resolved.base_dir)
        write_signing_config(self.out, signing)  # what the writer signs with (no secrets)
        return verified_manifest(self.out, self.state)

    def inherit(self, parent: Path, manifest: Manifest) -> RoundOutcome:
        """Take a parent build's shards into this one, byte for byte (extend builds).

        1. every shard file and stats file linked or copied in, each checked against the
           parent's manifest
        2. the parent's recipe hashes join this build's lineage
        3. the shards count as a round this build did not have to generate
        """
        hashes = [*manifest.recipe_hashes]
        stats: list[ShardStats] = []
        for entry in manifest.shards:
            for name, info in entry.files.items():
                take_file(parent / name, self.out / name, info)
            take_file(parent / stats_name(entry.shard), self.out / stats_name(entry.shard))
            done = finished_shard(self.out, entry.shard, hashes)
            if done is None:
                raise BuildError(f"{parent}: shard {entry.shard} does not match its stats")
            stats.append(done)
        self.recipe_hashes = [*hashes, self.recipe.hash]
        self.lineage = Lineage(
            parent=parent.name,  # by name: published
            parent_recipe_hash=manifest.recipe_hash,
            parent_manifest_sha256=file_sha256(parent / MANIFEST_NAME),
            recipe_hashes=self.recipe_hashes,
            inherited_shards=[s.shard for s in stats],
        )
        for name, n in manifest.counts.planned_per_class.items():
            self._planned_per_class[name] = self._planned_per_class.get(name, 0) + n
        outcome = RoundOutcome(
            out=self.out,
            plan_round=PlanRound(round=0),
            stats=stats,
            reused=[s.shard for s in stats],
            generated_now=0,
            metrics={},
        )
        self.rounds.append(outcome)
        return outcome

    def use_adapters(self, table: str) -> None:
        """Generate with this adapter table (`generators.adapters`) from now on: a strategy's
        trained LoRAs. Provenance (the build constant `adapters`) follows."""
        assert self.ctx is not None, "open() first"
        self.resolved = dataclasses.replace(self.resolved, adapters=table)
        self.ctx = dataclasses.replace(self.ctx, adapters=table)

    def run_round(self, plan_round: PlanRound) -> RoundOutcome:
        """Make sure every shard of one round is written: reuse finished ones, build the rest.

        1. plan the round (pure: keys, seeds, shards)
        2. keep shards whose files match their stats; discard partial ones
        3. run the Beam pipeline over the rest; build-wide checks see every earlier shard
        4. every shard must now be finished, or the build is incomplete
        """
        assert self.ctx is not None, "open() first"
        kw = plan_round.plan_kwargs()
        total = count_planned(self.recipe, plan_round.counts, plan_round.start)
        shard_ids = list(planned_shards(self.recipe, **kw))
        for name, n in self._per_class(plan_round).items():
            self._planned_per_class[name] = self._planned_per_class.get(name, 0) + n
        done = self._finished(shard_ids)
        todo = [s for s in shard_ids if s not in done]
        if done:
            logger.info("resuming: reusing %d finished shard(s), building %d", len(done), len(todo))
        metrics: dict[str, int] = {}
        if todo:
            metrics = self._run_pipeline(plan_round, todo, done, total)
        stats = [done.get(s) or finished_shard(self.out, s, self.recipe_hashes) for s in shard_ids]
        missing = [s for s, st in zip(shard_ids, stats, strict=True) if st is None]
        if missing:
            raise BuildError(f"{self.out}: build incomplete: shard(s) {missing} were not written")
        clear_staged(self.out, shard_ids)  # written for good: the staged copies can go
        if self.mirror is not None:
            self.mirror.push()
        size = self.recipe.output.shard_size
        first = plan_round.shard_offset
        outcome = RoundOutcome(
            out=self.out,
            plan_round=plan_round,
            stats=[s for s in stats if s is not None],
            reused=sorted(done),
            generated_now=sum(min(size, total - (s - first) * size) for s in todo),
            metrics=metrics,
        )
        self.rounds.append(outcome)
        return outcome

    def _per_class(self, plan_round: PlanRound) -> dict[str, int]:
        """Samples planned per class name in one round, without planning them."""
        names = {c.id: c.name for c in self.recipe.classes}
        if plan_round.counts is None:
            return {c.name: self.recipe.count_per_class or 0 for c in self.recipe.classes}
        out = {}
        for class_id, end in plan_round.counts.items():
            n = end - plan_round.start.get(class_id, 0)
            if n > 0:
                out[names[class_id]] = n
        return out

    def _finished(self, shard_ids: list[int]) -> dict[int, ShardStats]:
        done: dict[int, ShardStats] = {}
        for shard in shard_ids:
            stats = finished_shard(self.out, shard, self.recipe_hashes)
            if stats is None:
                discard_shard(self.out, shard)
            else:
                done[shard] = stats
        return done

    def _run_pipeline(
        self, plan_round: PlanRound, todo: list[int], done: dict[int, ShardStats], total: int
    ) -> dict[str, int]:
        """Run one round's unfinished shards; `done` are its finished ones (already checked)."""
        assert self.ctx is not None
        earlier = sorted({s.shard for o in self.rounds for s in o.stats} | set(done))
        progress_dir = self.out / STATE_DIR / "progress"
        shutil.rmtree(progress_dir, ignore_errors=True)
        progress_dir.mkdir(parents=True)
        with ExitStack() as stack:
            if self.mirror is not None:
                stack.enter_context(self.mirror.watch())
            return self._run_shards(plan_round, todo, done, total, earlier, progress_dir)

    def _run_shards(
        self,
        plan_round: PlanRound,
        todo: list[int],
        done: dict[int, ShardStats],
        total: int,
        earlier: list[int],
        progress_dir: Path,
    ) -> dict[str, int]:
        assert self.ctx is not None
        return run_shards(
            self.resolved,
            self.ctx,
            plan_round,
            todo,
            earlier_shards=earlier,
            out=self.out,
            progress_dir=progress_dir,
            show_progress=self.show_progress,
            options=self.options,
            total=total,
            done_counts=(
                sum(s.accepted for s in done.values()),
                sum(s.rejected for s in done.values()),
            ),
            references=self.reference_paths,
            started=self.run.started,
        )

    def finalize(self, finish: Finish) -> BuildResult:
        """Gate the written corpus, then write the manifest (last), then the report.

        1. the manifest's content from every round's shard stats
        2. the gate: corpus expectations over what was written, before the manifest exists
        3. manifest.json, atomically: from now on the build is complete (or failed)
        4. report.json + report.html
        """
        manifest = self._manifest(finish)
        refs = self.references, self.reference_paths
        manifest = with_metrics(manifest, self.out, self.recipe, *refs)
        validation = self._gate.validate(self.out, manifest, self.recipe, tars=False)
        manifest = manifest.model_copy(
            update={
                "validation": validation.as_info(),
                "status": "complete" if validation.ok else "failed_validation",
            }
        )
        maybe_fault("manifest", "*")
        write_bytes_atomic(self.out / MANIFEST_NAME, manifest.to_json())
        result = self.after_manifest(manifest)
        if not validation.ok:
            failed = [
                f"{e.dataset}: {e.expectation} {e.kwargs} {e.detail}"
                for e in validation.failed_expectations()
            ]
            raise ValidationFailed(
                f"{self.out}: build failed validation:\n  "
                + "\n  ".join(validation.failures + failed),
                result,
            )
        return result

    def after_manifest(self, manifest: Manifest) -> BuildResult:
        """The steps after the manifest: idempotent, so a resumed build redoes what is missing."""
        if not ((self.out / REPORT_JSON).is_file() and (self.out / REPORT_HTML).is_file()):
            previous = self.mirror.previous if self.mirror else previous_build(self.out)
            write_report(self.out, manifest, previous=previous)  # trend
        from synthgen.pipelines.card import CARD_NAME, write_card

        if not (self.out / CARD_NAME).is_file():
            write_card(self.out, manifest)  # the dataset card (README.md with Hub metadata)
        metrics: dict[str, int] = {}
        for o in self.rounds:
            for k, v in o.metrics.items():
                metrics[k] = metrics.get(k, 0) + v
        reused = sorted(s for o in self.rounds for s in o.reused)
        if self.mirror is not None:
            self.mirror.push(final=True)  # everything, the manifest last of all
        return BuildResult(
            output=self.out,
            manifest=manifest,
            seconds=time.monotonic() - self.run.started,
            generated_now=sum(o.generated_now for o in self.rounds),
            reused_shards=reused if self.rounds else manifest.shard_ids,
            metrics=metrics,
            location=self.mirror.store.url if self.mirror is not None else "",
        )

    def _manifest(self, finish: Finish) -> Manifest:
        assert self.state is not None and self.ctx is not None
        stats = sorted((s for o in self.rounds for s in o.stats), key=lambda s: s.shard)
        accepted = sum(s.accepted for s in stats)
        rejected = sum(s.rejected for s in stats)
        failed = sum(s.failed for s in stats)
        ctx = self.ctx
        r = self.recipe
        return Manifest(
            status="complete",
            recipe_name=self.recipe.name,
            recipe_hash=self.recipe.hash,
            recipe=self.state.published_recipe(),  # no path of this machine
            created_at=self.state.created_at,
            finished_at=utc_now(),
            versions=json.loads(ctx.library_versions),
            model=ModelInfo.model_validate(
                {"path": ctx.model_path, "sha256": ctx.model_sha256, "class": ctx.pipeline_class}
            ),
            scorers=json.loads(ctx.scorers),
            score_columns=[
                *self.resolved.score_columns,
                *check_columns(self.recipe, self.resolved.score_columns),
            ],
            counts=Counts(
                planned=sum(self._planned_per_class.values()),
                attempted=accepted + rejected + failed,
                accepted=accepted,
                rejected=rejected,
                failed=failed,
                planned_per_class=dict(self._planned_per_class),
                target_accepted_per_class=finish.targets,
            ),
            shards=[s.entry() for s in stats],
            lineage=self.lineage,
            watermark=WatermarkInfo.model_validate(
                watermark_info(r.hash, r.sampling.width, r.sampling.height, _lossy_clips(r))
            ),
            usage=UsageInfo.model_validate(
                license_info(
                    self.resolved.model_path, r.model.license, r.model.license_ack, r.usage
                )
            ),
            **finish.extra,
        )


def _lossy_clips(recipe: Recipe) -> str | None:
    """The clip format of a video build whose codec is lossy (its clips carry no
    watermark), else None."""
    if recipe.sampling.num_frames is None:
        return None
    from synthgen.storage.codecs import video_codec

    fmt = recipe.output.video_format
    return None if video_codec(fmt, recipe.sampling.fps).lossless else fmt
