"""The build driver: check every input, pick a strategy, run the session, publish."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from synthgen.pipelines.output import (
    LATEST,
    BuildError,
    exclusive_lock,
    publish,
    versioned_output,
)
from synthgen.pipelines.resolve import ResolvedRecipe, resolve
from synthgen.pipelines.runner import beam_options
from synthgen.pipelines.session import BuildResult, BuildSession, ValidationFailed
from synthgen.pipelines.strategies import Strategy, strategy_for
from synthgen.schemas.recipe import Recipe, apply_overrides, load_recipe, recipe_from_dict

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
) -> BuildResult:
    """Build a corpus into `output`, or as a new version under `publish_root`.

    1. the recipe: read, overridden, validated
    2. its inputs: model folders, scorers, sources, the Beam runner — all checked before
       any output folder is touched
    3. the strategy reads its inputs (a balance source), still writing nothing
    4. the session builds round after round, then finalizes (manifest, gate, report)
    5. with a publish root, `latest` is swapped to the complete build

    `extend` names a complete build to grow (with a publish root, "latest" is its latest):
    its shards are taken as they are and only new keys are generated, into a new build.
    """
    start = time.monotonic()
    if (output is None) == (publish_root is None):
        raise BuildError("give exactly one of an output directory or a publish root")
    recipe, base_dir = _load(recipe_path, overrides)
    resolved = resolve(recipe, base_dir)
    options = beam_options(beam_args or [])
    parent = _parent(extend, publish_root)
    strategy = strategy_for(resolved, parent)
    with ExitStack() as stack:
        stack.callback(strategy.close)
        strategy.prepare()
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


def _parent(extend: str | Path | None, publish_root: str | Path | None) -> Path | None:
    if extend is None:
        return None
    if str(extend) == LATEST:
        if publish_root is None:
            raise BuildError("--extend without a build needs --publish ROOT (extends its latest)")
        extend = Path(publish_root) / LATEST
    return Path(extend).resolve()


def _load(source: str | Path | dict[str, Any], overrides: list[str] | None) -> tuple[Recipe, Path]:
    """A recipe from a file (paths relative to it) or a dict (paths relative to the cwd)."""
    if isinstance(source, dict):
        data = apply_overrides(source, overrides or [], Path.cwd())
        return recipe_from_dict(data, "<recipe dict>"), Path.cwd()
    return load_recipe(source, overrides)


def _build(
    out: Path,
    resolved: ResolvedRecipe,
    strategy: Strategy,
    options: PipelineOptions,
    resume: bool,
    show_progress: bool,
    start: float,
) -> BuildResult:
    """One build directory: reuse a verified complete build, or run the strategy's rounds."""
    session = BuildSession(
        out,
        resolved,
        options,
        resume=resume,
        show_progress=show_progress,
        start=start,
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
