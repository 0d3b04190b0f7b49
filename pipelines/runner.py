"""Beam wiring for one round of shards: options, the pipeline graph, progress, counters."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from synthgen.generators.handler import GenerationSettings
from synthgen.generators.planning import padding_waste
from synthgen.pipelines.context import BuildContext
from synthgen.pipelines.decide import DecideSamples, reused_build_features
from synthgen.pipelines.generate import GenerateShards, StageSpec
from synthgen.pipelines.guided import guided_round
from synthgen.pipelines.output import BuildError
from synthgen.pipelines.progress import Progress
from synthgen.pipelines.resolve import ResolvedRecipe, generation_settings
from synthgen.pipelines.staging import ReadStaged, staged_shards
from synthgen.pipelines.transforms import METRICS_NAMESPACE, WriteShards
from synthgen.schemas.manifest import PlanRound
from synthgen.schemas.plugins import outside_plugins
from synthgen.schemas.recipe import Recipe
from synthgen.validators.build_checks import check_columns, embedding_column, make_checks

if TYPE_CHECKING:
    from synthgen.validators.base import Check

logger = logging.getLogger(__name__)

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


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
        std.runner = DASK_RUNNER
    try:
        create_runner(std.runner)  # an unknown runner fails before any output exists
    except (ValueError, ImportError) as exc:
        raise BuildError(f"Beam runner {std.runner!r}: {exc}") from None
    return options


def recipe_names(recipe: Recipe) -> set[str]:
    """Every string the recipe gives (plug-in names among them: a codec, a writer, a mode,
    a source format)."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(recipe.model_dump(mode="json"))
    return found


@contextlib.contextmanager
def carried_plugins(recipe: Recipe) -> Iterator[tuple[type, ...]]:
    """The plug-in classes from outside synthgen (a user's module, a test file) that the
    recipe names, for the work shipped to worker processes. While the build runs, their
    modules are pickled by value into that work (Beam's and Dask's cloudpickle), so a worker
    that cannot import the module re-creates the classes (`register_carried` registers them
    there); afterwards the modules pickle by reference again."""
    from apache_beam.internal.cloudpickle import cloudpickle as beam_cloudpickle

    classes = outside_plugins(recipe_names(recipe))
    picklers: list[Any] = [beam_cloudpickle]
    with contextlib.suppress(ImportError):
        import cloudpickle

        picklers.append(cloudpickle)
    modules = [
        sys.modules[name]
        for name in sorted({c.__module__ for c in classes})
        if name in sys.modules and name != "__main__"  # __main__ is pickled by value already
    ]
    added = [
        (p, m)
        for p in picklers
        for m in modules
        if m.__name__ not in p.list_registry_pickle_by_value()
    ]
    for pickler, module in added:
        pickler.register_pickle_by_value(module)
    try:
        yield classes
    finally:
        for pickler, module in added:
            pickler.unregister_pickle_by_value(module)


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
    started: float | None = None,
) -> dict[str, int]:
    """Generate, score, check and write `shard_ids` of one round; returns Beam's counters.

    1. the checks: per sample (with each image's host work) and build-wide (this round plus
       `earlier_shards`)
    2. pipeline one: shard ids -> `GenerateShards` (pipelines.generate: one worker per
       process and device, the model loaded once, host work beside the device loop) -> one
       staging file per shard (shards already staged are skipped; on Dask one partition each)
    3. pipeline two: staging files (no image bytes) -> decided samples -> shard files
    Both show progress (clock: `started`); a runner not finishing DONE is a failure."""
    r = resolved.recipe
    for note in padding_waste(r):
        logger.warning("%s", note)
    columns = (*resolved.score_columns, *check_columns(r, resolved.score_columns))
    checks, build_checks = make_checks(r, columns)
    reused = reused_build_features(out, earlier_shards, columns, build_checks)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # a guided feedback round: its probe in the settings and in every sample's record
    settings, ctx = guided_round(resolved, generation_settings(resolved), ctx, plan_round, out)
    to_generate = _not_staged(out, shard_ids)
    metrics: dict[str, int] = {}
    unit = "image" if r.sampling.num_frames is None else "clip"
    shown = (
        Progress(progress_dir, total, *done_counts, started=started, unit=unit)
        if show_progress
        else None
    )
    with shown or contextlib.nullcontext(), carried_plugins(r) as plugins:
        if to_generate:
            spec = _stage_spec(
                resolved, ctx, plan_round, checks, out, progress_dir, plugins, settings
            )
            _add(metrics, _run(_generating(spec, to_generate, options)))
        decide = DecideSamples(
            checks,
            build_checks=build_checks,
            reused=reused,
            progress_dir=str(progress_dir),
            quota=plan_round.quota,
            nearest=references,
            embedding_column=embedding_column(columns),
        )
        write = WriteShards(str(out), ctx, columns, plugins)
        _add(metrics, _run(_deciding(options, shard_ids, out, decide, write)))
    return metrics


def _stage_spec(
    resolved: ResolvedRecipe,
    ctx: BuildContext,
    plan_round: PlanRound,
    checks: list[Check],
    out: Path,
    progress_dir: Path,
    plugins: tuple[type, ...] = (),
    settings: GenerationSettings | None = None,
) -> StageSpec:
    """What every generating worker needs, small enough to ship."""
    return StageSpec(
        recipe=resolved.recipe,
        plan_round=plan_round,
        settings=settings if settings is not None else generation_settings(resolved),
        scorers=tuple(resolved.scorers),
        checks=tuple(checks),
        out=str(out),
        progress_dir=str(progress_dir),
        ctx=ctx,
        plugins=plugins,
    )


def _not_staged(out: Path, shard_ids: list[int]) -> list[int]:
    """The shards still to generate: those without a staging file."""
    staged = staged_shards(out, shard_ids)
    todo = [s for s in shard_ids if s not in staged]
    if len(todo) < len(shard_ids):
        logger.info("%d shard(s) already generated and staged", len(shard_ids) - len(todo))
    return todo


def _generating(spec: StageSpec, shards: list[int], options: PipelineOptions) -> beam.Pipeline:
    """Pipeline one: shard ids spread over the workers, each shard generated and staged."""
    first = pipeline(generation_options(options))
    ids = first | "ShardIds" >> beam.Create(shards)
    if on_dask(options):
        ids = ids | "PrepareWorker" >> beam.ParDo(PrepareDaskWorker())
    generate: beam.PTransform = beam.ParDo(GenerateShards(spec))
    if spec.recipe.model.accelerator:  # only the model step asks for a GPU worker
        generate = generate.with_resource_hints(accelerator=spec.recipe.model.accelerator)
    _ = ids | "Spread" >> beam.Reshuffle() | "GenerateShards" >> generate
    return first


def _deciding(
    options: PipelineOptions,
    shard_ids: list[int],
    out: Path,
    decide: DecideSamples,
    write: WriteShards,
) -> beam.Pipeline:
    """Pipeline two: each shard's staged samples (no image bytes) decided, then written."""
    second = pipeline(deciding_options(options))
    _ = (
        second
        | "ShardIds" >> beam.Create(shard_ids)
        | "Read" >> ReadStaged(str(out), images=False)
        | "Check" >> decide
        | "Write" >> write
    )
    return second


SAFE_PATH_ENV = "PYTHONSAFEPATH"


@contextlib.contextmanager
def safe_child_paths() -> Iterator[None]:
    """While a pipeline runs, every Python process it starts (Beam's `multi_processing`
    workers start as `python -m apache_beam...`) leaves the working directory off its module
    path.

    `python -m` puts the current directory first on `sys.path`, so a module lying in the
    folder where a user runs a build (a `great_expectations.py`, a `synthgen/` folder, a file
    shadowing the standard library) would be imported and run by every worker. PYTHONSAFEPATH
    (Python 3.11+) changes only child interpreters; it is set for the pipeline's run and put
    back afterwards, so a program calling synthgen keeps its own environment. A value the
    user chose is kept.
    """
    before = os.environ.get(SAFE_PATH_ENV)
    if before is None:
        os.environ[SAFE_PATH_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(SAFE_PATH_ENV, None)


def pipeline(options: PipelineOptions) -> beam.Pipeline:
    """A pipeline on the runner `options` name; `DirectRunner` is Beam's FnApiRunner here.

    Beam's DirectRunner (2.77) first tries its Prism runner for a batch pipeline: a Go
    binary it downloads from GitHub on first use, starting a job server with the pipeline
    staged through temporary folders that are never removed. Offline that attempt fails and
    falls back to the FnApiRunner, at a cost on every pipeline; online a build would run
    on a different runner depending on the network. A batch build goes straight to the
    FnApiRunner, configured as the DirectRunner configures it (the pipeline options reach
    the workers; `--direct_num_workers` and `--direct_running_mode` apply); a streaming
    one is left to Beam's DirectRunner.
    """
    from apache_beam.runners.runner import create_runner

    if not _fn_api_runner(options):  # any of Beam's names for it: DirectRunner, direct, ...
        return beam.Pipeline(
            runner=create_runner(options.view_as(StandardOptions).runner), options=options
        )
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    )
    return beam.Pipeline(runner=_quiet_workers(fn_runner, provision), options=options)


# A `multi_processing` worker process: Beam's worker main, run as `python -m` runs it, with
# a root log handler in place first. Without one, Beam's import-time notice (`apitools not
# found`) gives the worker a stderr handler of its own, and its start-up lines and warnings
# reach the terminal past the build's logging; with it, every record still goes to the
# build's process through Beam's logging service (shown there with -v).
QUIET_WORKER = (
    "import logging, runpy; logging.getLogger().addHandler(logging.NullHandler()); "
    "runpy._run_module_as_main('apache_beam.runners.worker.sdk_worker_main', False)"
)


def _quiet_workers(fn_runner: Any, provision: Any) -> Any:
    """An FnApiRunner whose `multi_processing` workers start as QUIET_WORKER, watched
    (synthgen.pipelines.workers)."""
    import shlex

    from apache_beam.portability import python_urns

    from synthgen.pipelines.workers import WATCHED_WORKER_URN

    beams = f"{sys.executable} -m apache_beam.runners.worker.sdk_worker_main".encode()
    ours = f"{shlex.quote(sys.executable)} -c {shlex.quote(QUIET_WORKER)}".encode()

    class QuietWorkersRunner(fn_runner.FnApiRunner):  # type: ignore[misc]
        def run_via_runner_api(self, pipeline_proto: Any, options: Any) -> Any:
            for env in pipeline_proto.components.environments.values():
                if env.urn == python_urns.SUBPROCESS_SDK and env.payload == beams:
                    env.urn, env.payload = WATCHED_WORKER_URN, ours
            return super().run_via_runner_api(pipeline_proto, options)

    return QuietWorkersRunner(provision_info=provision)


def on_dask(options: PipelineOptions) -> bool:
    return options.view_as(StandardOptions).runner == DASK_RUNNER


def generation_options(options: PipelineOptions) -> PipelineOptions:
    """The generating pipeline's options: on Dask, one shard id per bag partition.

    Beam's DaskRunner turns `Create` into a dask bag of 128 elements per partition and
    `Reshuffle` into nothing, so every shard of a build under 128 shards would be generated
    in one task on one worker. A shard is `shard_size` samples of model work, far more than
    a task's scheduling cost. A partitioning the user chose (`--dask_npartitions`,
    `--dask_partition_size`) is kept; the deciding pipeline keeps Beam's default (its
    build-wide side inputs are evaluated once per partition).
    """
    if not on_dask(options):
        return options
    from apache_beam.runners.dask.dask_runner import DaskOptions

    chosen = options.view_as(DaskOptions)
    if chosen.npartitions or chosen.partition_size:
        return options
    spread = copy.deepcopy(options)
    spread.view_as(DaskOptions).partition_size = 1
    return spread


def deciding_options(options: PipelineOptions) -> PipelineOptions:
    """The deciding pipeline's options: on this machine's DirectRunner, its `multi_processing`
    workers become as many threads of the build's process.

    The deciding pipeline does no model work: scalar checks over staged scores, and shard
    files written from staged bytes. Its worker processes would each start cold once per
    round (Python, Beam, pyarrow and synthgen imported again, 5-15 s each on 2 cores) for
    work that takes a fraction of that; threads start at once and share the build's
    imports. A runner with its own workers (Dask, Dataflow, Flink) keeps them.
    """
    from apache_beam.options.pipeline_options import DirectOptions

    if options.view_as(DirectOptions).direct_running_mode != "multi_processing":
        return options
    if not _fn_api_runner(options):
        return options
    threads = copy.deepcopy(options)
    threads.view_as(DirectOptions).direct_running_mode = "multi_threading"
    return threads


def _fn_api_runner(options: PipelineOptions) -> bool:
    """Whether `pipeline` runs `options` on Beam's FnApiRunner (a batch DirectRunner)."""
    from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner
    from apache_beam.runners.runner import create_runner

    std = options.view_as(StandardOptions)
    return isinstance(create_runner(std.runner), SwitchingDirectRunner) and not std.streaming


class PrepareDaskWorker(beam.DoFn):
    """Passes shard ids through; its setup prepares the worker process for model work."""

    def setup(self) -> None:
        prepare_dask_worker()

    def process(self, element: int) -> Iterator[int]:
        yield element


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # glibc's own upper bound for its adaptive threshold


class MallocTuning:
    """Whether this process's malloc thresholds were set for model work (`prepare`): None
    until it ran, then its answer.

    A registry: the process holds one, MALLOC. It must be process-wide: the allocator it
    sets is the process's, set once whichever DoFn instance of the process asks first."""

    def __init__(self) -> None:
        self.done: bool | None = None

    def prepare(self) -> bool:
        """Undo, in this process, what `MALLOC_TRIM_THRESHOLD_` costs model work; True if
        done.

        dask.distributed's nanny starts every worker with MALLOC_TRIM_THRESHOLD_=65536
        (`distributed.nanny.pre-spawn-environ`). Setting it switches off glibc's adaptive
        mmap threshold, so every allocation over 128 KiB (each tensor of a diffusion step)
        is a fresh mmap, zero-filled page by page, and unmapped again: measured on the
        default recipe, 3 million page faults and twice the CPU time per image on a worker.
        The thresholds are set to where glibc's adaptive ones end up (a 32 MiB mmap
        threshold, twice that for trimming). Once per process; nothing is done without the
        variable, where a MALLOC_MMAP_THRESHOLD_ was chosen, or off glibc. Only speed and
        resident memory change, never a computed value.
        """
        if self.done is not None:
            return self.done
        self.done = _set_malloc_thresholds()
        if self.done:
            logger.info("worker %d: malloc thresholds set for model work", os.getpid())
        return self.done


MALLOC = MallocTuning()


def _set_malloc_thresholds() -> bool:
    if not (
        sys.platform.startswith("linux")
        and "MALLOC_TRIM_THRESHOLD_" in os.environ
        and "MALLOC_MMAP_THRESHOLD_" not in os.environ
    ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD)
    )


def prepare_dask_worker() -> bool:
    """`MallocTuning.prepare` on this process's MALLOC registry: a Dask worker's allocator
    set for model work, once per process; True if done."""
    return MALLOC.prepare()


def _add(total: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        total[k] = total.get(k, 0) + v


def _run(pipeline: beam.Pipeline) -> dict[str, int]:
    result = None
    state = None
    from synthgen.pipelines import workers

    deaths = len(workers.DEATHS)
    try:
        with safe_child_paths():
            result = pipeline.run()
            state = result.wait_until_finish()
    except Exception as exc:
        if len(workers.DEATHS) > deaths:  # whatever Beam raised after, the cause is that
            raise workers.DEATHS[deaths] from exc
        advice = _out_of_memory_advice(exc)
        if advice is not None:  # the device ran out of memory: stop with what to change
            raise BuildError(advice) from None
        raise
    finally:
        client = getattr(result, "client", None)  # DaskRunner's connection to the cluster
        if client is not None:
            client.close()
    if state is not None and str(state) not in ("DONE", "PipelineState.DONE"):
        raise BuildError(f"pipeline finished in state {state}")
    return counters(result)


def _out_of_memory_advice(exc: BaseException) -> str | None:
    """The generating stage's out-of-memory message, however the runner wrapped it."""
    from synthgen.generators.handler import DeviceOutOfMemory

    seen: BaseException | None = exc
    while seen is not None:
        for line in str(seen).splitlines():
            at = line.find(DeviceOutOfMemory.PREFIX)
            if at >= 0:
                return line[at:].split(" [while running")[0].strip()
        seen = seen.__cause__ or seen.__context__
    return None


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
