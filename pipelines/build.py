"""The build driver: check every input, pick a strategy, run the session, publish."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apache_beam.options.pipeline_options import PipelineOptions

from synthgen.pipelines.output import (
    LATEST,
    BuildError,
    exclusive_lock,
    publish,
    versioned_output,
)
from synthgen.pipelines.progress import mark_build_start
from synthgen.pipelines.resolve import ResolvedRecipe, resolve
from synthgen.pipelines.runner import beam_options
from synthgen.pipelines.session import BuildResult, BuildSession, ValidationFailed
from synthgen.pipelines.strategies import Strategy, strategy_for
from synthgen.schemas.recipe import load_recipe_source
from synthgen.storage.store import Store, is_remote, open_store

if TYPE_CHECKING:
    from synthgen.pipelines.remote import Mirror

__all__ = ["BuildError", "BuildResult", "ValidationFailed", "run_build"]

logger = logging.getLogger(__name__)


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
) -> BuildResult:
    """Build a corpus into `output`, or as a new version under `publish_root`.

    1. the recipe: read, overridden, validated
    2. its inputs: model folders, scorers, sources, the Beam runner — all checked before
       any output folder is touched
    3. the strategy reads its inputs (a balance source), still writing nothing
    4. the session builds round after round, then finalizes (manifest, gate, report)
    5. with a publish root, `latest` is swapped to the complete build

    `output`, `publish_root` and `extend` may be object-store URLs (`s3://`, `gs://`): the
    build then runs in a local working copy mirrored to the store (synthgen.pipelines.remote).

    `extend` names a complete build to grow (with a publish root, "latest" is its latest):
    its shards are taken as they are and only new keys are generated, into a new build.

    `started` (monotonic clock) is when the build began, if before this call (the command
    line's start, so that its imports count); the live rate and the result's `seconds`
    both run from it.
    """
    start = mark_build_start(started)
    if (output is None) == (publish_root is None):
        raise BuildError("give exactly one of an output directory or a publish root")
    recipe, base_dir = load_recipe_source(recipe_path, overrides)
    stores = [open_store(x) for x in (output, publish_root) if x is not None and is_remote(x)]
    resolved = resolve(recipe, base_dir)
    options = beam_options(beam_args or [])
    parent = _parent(extend, publish_root)
    strategy = strategy_for(resolved, parent)
    with ExitStack() as stack:
        stack.callback(strategy.close)
        strategy.prepare()
        if stores:
            return _build_remote(
                stores[0], output is None, resolved, strategy, options, resume, show_progress, start
            )
        if publish_root is None:
            out = Path(output).resolve()  # type: ignore[arg-type]
            return _build(out, resolved, strategy, options, resume, show_progress, start)
        root = Path(publish_root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        stack.enter_context(exclusive_lock(root, "publish root"))
        out = versioned_output(root, recipe, resume)
        result = _build(out, resolved, strategy, options, True, show_progress, start)
        publish(root, out)
        return result
    raise AssertionError("unreachable")  # pragma: no cover


def _build_remote(
    store: Store,
    is_root: bool,
    resolved: ResolvedRecipe,
    strategy: Strategy,
    options: PipelineOptions,
    resume: bool,
    show_progress: bool,
    start: float,
) -> BuildResult:
    """A build at an object-store URL, or a new version under an object-store publish root.

    1. the lock object of the location (the publish root's, for a published build)
    2. the build's store pulled into its local working copy (refused as for a folder)
    3. the build runs there; the session uploads as files are finished, the manifest last
    4. with a publish root, the LATEST pointer object is swapped to it
    """
    from synthgen.pipelines.remote import (
        Mirror,
        RemoteLock,
        previous_report,
        publish_pointer,
        versioned_build,
        work_dir,
    )

    with RemoteLock(store, "publish root" if is_root else "output location") as lock:
        build = store
        folder = ""
        if is_root:
            folder = versioned_build(store, resolved.recipe.hash, resume)
            build = store.child(f"builds/{folder}")
        mirror = Mirror(build, work_dir(build.url), lock)
        if is_root:
            mirror.previous = previous_report(store, folder)  # for the report's trend
        mirror.pull(resume or is_root)
        result = _build(
            mirror.local, resolved, strategy, options, True, show_progress, start, mirror
        )
        if is_root:
            publish_pointer(store, folder, result.manifest)
        return result


def _parent(extend: str | Path | None, publish_root: str | Path | None) -> Path | None:
    if extend is None:
        return None
    if str(extend) == LATEST:
        if publish_root is None:
            raise BuildError("--extend without a build needs --publish ROOT (extends its latest)")
        # an object-store root's LATEST pointer is followed by pull_build
        extend = str(publish_root) if is_remote(publish_root) else Path(publish_root) / LATEST
    if is_remote(extend):
        from synthgen.pipelines.remote import pull_build

        return pull_build(str(extend))
    return Path(extend).resolve()


def _build(
    out: Path,
    resolved: ResolvedRecipe,
    strategy: Strategy,
    options: PipelineOptions,
    resume: bool,
    show_progress: bool,
    start: float,
    mirror: Mirror | None = None,
) -> BuildResult:
    """One build directory: reuse a verified complete build, or run the strategy's rounds."""
    session = BuildSession(
        out,
        resolved,
        options,
        resume=resume,
        show_progress=show_progress,
        start=start,
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
        while (plan_round := strategy.next_round()) is not None:
            strategy.observe(session.run_round(plan_round))
        return session.finalize(strategy.finish(session))
