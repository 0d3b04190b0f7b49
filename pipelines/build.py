"""The build driver: check every input, pick a strategy, run the session, publish."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apache_beam.options.pipeline_options import PipelineOptions

from synthgen.pipelines.estimate import check_inputs
from synthgen.pipelines.output import (
    LATEST,
    BuildError,
    check_publish_root,
    check_resumable,
    exclusive_lock,
    publish,
    versioned_output,
)
from synthgen.pipelines.resolve import ResolvedRecipe, resolve
from synthgen.pipelines.runcontext import RunContext
from synthgen.pipelines.runner import beam_options
from synthgen.pipelines.session import BuildResult, BuildSession, ValidationFailed
from synthgen.pipelines.strategies import Strategy, strategy_for
from synthgen.schemas.recipe import load_recipe_source
from synthgen.storage.store import Store, is_remote, open_store

if TYPE_CHECKING:
    from synthgen.pipelines.remote import Mirror, PointerSeen, RemoteLock

__all__ = ["BuildError", "BuildResult", "ValidationFailed", "run_build"]

logger = logging.getLogger(__name__)


@dataclass
class _Root:
    """A publish root this build holds locked, and what its latest named when it was locked:
    the swap at the end is made only if that is unchanged."""

    location: str
    store: Store | None = None  # an object-store root
    lock: RemoteLock | None = None  # its lock object
    pointer: PointerSeen = (None, None)  # its LATEST as read under the lock, with its version
    latest: Path | None = None  # a local root: the build its `latest` link named


@dataclass(frozen=True)
class _Job:
    """A build's settled inputs, whichever way it is then run (a folder, a versioned build
    under a publish root, an object store)."""

    resolved: ResolvedRecipe
    options: PipelineOptions
    resume: bool
    show_progress: bool
    run: RunContext


def run_build(
    recipe_path: str | Path | dict[str, Any],
    output: str | Path | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    beam_args: list[str] | None = None,
    show_progress: bool = True,
    publish_root: str | Path | None = None,
    extend: str | Path | None = None,
    started: float | None = None,
    run: RunContext | None = None,
) -> BuildResult:
    """Build a corpus into `output`, or as a new version under `publish_root`.

    1. the recipe: read, overridden, validated; the checks that need no model library (the
       dry run of `synthgen plan`, and an output directory that is not empty)
    2. its inputs: model folders, scorers, sources, the Beam runner — all checked before
       any output folder is touched
    3. a publish root is locked before its latest is read (by --extend) and stays locked
       until its latest is swapped; one that is itself a build is refused
    4. the strategy reads its inputs (a balance source, the parent build), writing nothing
    5. the session builds round after round, then finalizes (manifest, gate, report)
    6. with a publish root, `latest` is swapped to the complete build, only if it still
       names what it named when the root was locked

    `output`, `publish_root` and `extend` may be object-store URLs (`s3://`, `gs://`): the
    build then runs in a local working copy mirrored to the store (synthgen.pipelines.remote).

    `extend` names a complete build to grow (with a publish root, "latest" is its latest):
    its shards are taken as they are and only new keys are generated, into a new build.

    `run` is the calling command's run context (synthgen.pipelines.runcontext): its clock,
    the gate process it started early (ended here if the build never takes it), and what
    the build opened. Without one, one is made here, its clock started at `started`
    (monotonic; the caller's start, so that its imports count) or now; the live rate and the
    result's `seconds` both run from it.
    """
    if run is not None and started is not None:
        raise ValueError("run_build: give `run` or `started`, not both (`run.started`)")
    if run is None:
        run = RunContext(started=time.monotonic() if started is None else started)
    try:
        if (output is None) == (publish_root is None):
            raise BuildError("give exactly one of an output directory or a publish root")
        recipe, base_dir = load_recipe_source(recipe_path, overrides)
        check_inputs(recipe, base_dir)  # the cheap refusals first: folders, device, source
        if output is not None and not is_remote(output):
            check_resumable(Path(output).resolve(), recipe, resume)
        where = output if output is not None else publish_root
        store = open_store(where) if where is not None and is_remote(where) else None
        job = _Job(
            resolve(recipe, base_dir), beam_options(beam_args or []), resume, show_progress, run
        )
        quiet = not any(a.startswith("--default_sdk_harness_log_level") for a in beam_args or [])
        return _build_with_strategy(job, output, publish_root, extend, store, quiet)
    finally:
        run.close_gate()  # one started early that no session took: the build is over


def _build_with_strategy(
    job: _Job,
    output: str | Path | None,
    publish_root: str | Path | None,
    extend: str | Path | None,
    store: Store | None,
    quiet_workers: bool,
) -> BuildResult:
    """Steps 3-6 of `run_build`: the root locked (before its latest is read when extending),
    the strategy prepared, then the build where it goes."""
    with ExitStack() as stack:
        if quiet_workers:
            stack.enter_context(_without_harmless_worker_notices())
        root = None
        if publish_root is not None and extend is not None:
            root = _lock_root(stack, publish_root, store)  # before its latest is read
        parent = _parent(extend, root)
        strategy = strategy_for(job.resolved, parent[0] if parent else None)
        stack.callback(strategy.close)
        strategy.prepare()
        if publish_root is not None and root is None:
            root = _lock_root(stack, publish_root, store)
        parent_location = parent[1] if parent else None
        if store is not None:
            return _build_remote(store, root, job, strategy, parent_location)
        return _build_local(output, root, job, strategy, parent_location)
    raise AssertionError("unreachable")  # pragma: no cover


def _build_local(
    output: str | Path | None,
    root: _Root | None,
    job: _Job,
    strategy: Strategy,
    parent_location: str | None,
) -> BuildResult:
    """A build into a local folder, or a new version under a local publish root, whose
    `latest` is then swapped to it."""
    if root is None:
        assert output is not None
        return _build(Path(output).resolve(), job, strategy, None, parent_location)
    root_dir = Path(root.location)
    out = versioned_output(root_dir, job.resolved.recipe, job.resume)
    result = _build(out, replace(job, resume=True), strategy, None, parent_location)
    _check_latest_unmoved(root, out)
    publish(root_dir, out)
    return result


# What every DirectRunner worker process logs at start-up, forwarded to this process by
# Beam's logging service: nothing is wrong.
HARMLESS_WORKER_NOTICES = (
    "No semi_persistent_directory found",  # a local worker has no staged files to load
    "Discarding unparseable args",  # the runner's own options, which the worker ignores
)
WORKER_LOG = "apache_beam.runners.portability.local_job_service"  # where they arrive


def _not_harmless(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(notice in message for notice in HARMLESS_WORKER_NOTICES)


@contextmanager
def _without_harmless_worker_notices() -> Iterator[None]:
    """While a build runs, the worker processes' start-up notices (HARMLESS_WORKER_NOTICES)
    are dropped; any other record they log passes. A caller that chose the workers' log
    level (`--default_sdk_harness_log_level`) sees everything."""
    log = logging.getLogger(WORKER_LOG)
    log.addFilter(_not_harmless)
    try:
        yield
    finally:
        log.removeFilter(_not_harmless)


def _lock_root(stack: ExitStack, publish_root: str | Path, store: Store | None) -> _Root:
    """The publish root, refused if it is itself a build, then locked (held by `stack`)."""
    if store is not None:
        from synthgen.pipelines.remote import RemoteLock, check_root, read_pointer_seen

        check_root(store)
        lock = stack.enter_context(RemoteLock(store, "publish root"))
        return _Root(store.url, store=store, lock=lock, pointer=read_pointer_seen(store))
    root = Path(publish_root).resolve()
    check_publish_root(root)
    root.mkdir(parents=True, exist_ok=True)
    stack.enter_context(exclusive_lock(root, "publish root"))
    latest = root / LATEST
    return _Root(str(root), latest=latest.resolve() if latest.is_symlink() else None)


def _check_latest_unmoved(root: _Root, out: Path) -> None:
    """Refuse to swap a local root's `latest` that moved since the root was locked (only a
    writer ignoring the lock can move it): swapping would take it back to an older build."""
    latest = Path(root.location) / LATEST
    now = latest.resolve() if latest.is_symlink() else None
    if now != root.latest:
        raise BuildError(
            f"{latest}: moved while this build ran (it named {root.latest or 'nothing'}, now "
            f"{now or 'nothing'}): not published, so it cannot move back; the build is "
            f"complete in {out}"
        )


def _build_remote(
    store: Store,
    root: _Root | None,
    job: _Job,
    strategy: Strategy,
    parent_location: str | None,
) -> BuildResult:
    """A build at an object-store URL, or a new version under an object-store publish root.

    1. the lock object of the location (a publish root's is already held: `root`)
    2. the build's store pulled into its local working copy (refused as for a folder)
    3. the build runs there; the session uploads as files are finished, the manifest last
    4. with a publish root, the LATEST pointer object is swapped to it (conditionally)
    """
    from synthgen.pipelines.remote import (
        Mirror,
        RemoteLock,
        previous_report,
        publish_pointer,
        versioned_build,
        work_dir,
    )

    with ExitStack() as stack:
        if root is None:
            lock = stack.enter_context(RemoteLock(store, "output location"))
            build, folder = store, ""
        else:
            assert root.lock is not None
            lock = root.lock
            folder = versioned_build(store, job.resolved.recipe.hash, job.resume)
            build = store.child(f"builds/{folder}")
        mirror = Mirror(build, work_dir(build.url), lock)
        if root is not None:
            mirror.previous = previous_report(store, folder)  # for the report's trend
        mirror.pull(job.resume or root is not None)
        result = _build(mirror.local, replace(job, resume=True), strategy, mirror, parent_location)
        if root is not None:
            publish_pointer(store, folder, result.manifest, root.pointer)
        return result


def _parent(extend: str | Path | None, root: _Root | None) -> tuple[Path, str] | None:
    """The build to extend: its local folder (an object-store build pulled into the cache)
    and where it is (its directory, or its store URL), for the lineage."""
    if extend is None:
        return None
    if str(extend) == LATEST:
        if root is None:
            raise BuildError("--extend without a build needs --publish ROOT (extends its latest)")
        if root.store is None:
            extend = Path(root.location) / LATEST
        else:
            pointer = root.pointer[0]
            if pointer is None:
                raise BuildError(f"{root.location}: no LATEST: there is no build to extend")
            extend = f"{root.location}/{pointer['build']}"
    if is_remote(extend):
        from synthgen.pipelines.remote import pull_build, resolve_build

        url = resolve_build(str(extend)).url
        return pull_build(url), url
    path = Path(extend).resolve()
    return path, path.name  # a local parent by its folder's name: no path of this machine


def _build(
    out: Path,
    job: _Job,
    strategy: Strategy,
    mirror: Mirror | None = None,
    parent_location: str | None = None,
) -> BuildResult:
    """One build directory: reuse a verified complete build, or run the strategy's rounds.

    `parent_location`: where an extension's parent is (a store URL, not the cache folder
    it was pulled into): the lineage names it.
    """
    session = BuildSession(
        out,
        job.resolved,
        job.options,
        resume=job.resume,
        show_progress=job.show_progress,
        run=job.run,
        mirror=mirror,
    )
    with session:
        manifest = session.open()
        if manifest is not None:
            if manifest.status != "complete":
                raise BuildError(f"{out}: the build there ended as {manifest.status!r}")
            logger.info("%s: build already complete; nothing to do", out)
            return session.after_manifest(manifest)
        strategy.begin(session)
        if session.lineage is not None and parent_location is not None:
            session.lineage = session.lineage.model_copy(update={"parent": parent_location})
        while (plan_round := strategy.next_round()) is not None:
            strategy.observe(session.run_round(plan_round))
        return session.finalize(strategy.finish(session))
