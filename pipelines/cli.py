"""The `synthgen` command line."""

from __future__ import annotations

import argparse
import builtins
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from synthgen.pipelines.gcpolicy import exiting, loading, own_process, owned
from synthgen.pipelines.runcontext import RunContext

if TYPE_CHECKING:
    from pathlib import Path

logger = logging.getLogger("synthgen")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REGRESSED = 3  # --fail-on-regression: the trend against the previous build regressed
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a tool killed by it


def _split_beam_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def _parser() -> argparse.ArgumentParser:
    """`synthgen` and its subcommands (`_SUBCOMMANDS`, in the order `--help` lists them)."""
    from synthgen import __version__

    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="synthgen",
        description="Build synthetic image corpora: recipe -> diffusion -> CLIP -> shards.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"synthgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, add_options, texts in _SUBCOMMANDS:
        about = texts.get("description")  # else argparse shows none
        add_options(sub.add_parser(name, parents=[common], help=texts["help"], description=about))
    return parser


def _common_options() -> argparse.ArgumentParser:
    """-v/-q/--log-format, accepted before or after the subcommand (`synthgen -v build ...`
    or `synthgen build ... -v`); SUPPRESS keeps a subcommand's default from overwriting."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="synthgen's debug logging",
    )
    common.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="warnings only"
    )
    common.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=argparse.SUPPRESS,
        help="log lines on stderr as text (default) or one JSON object per line",
    )
    return common


# -- option groups more than one subcommand shares --------------------------------------


def _recipe_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML file")


def _overrides_arg(p: argparse.ArgumentParser) -> None:
    """`--set KEY=VALUE` (plan, build): recipe fields overridden before it validates."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set count_per_class=100 (repeatable)",
    )


def _build_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="build output directory, or a publish root (its latest)")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", action="store_true", help="one JSON object on stdout instead of the lines"
    )


def _regression_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fail-on-regression",
        action="store_true",
        help="exit 3, naming each regression, when the report's trend against the previously "
        "published build flags one (for scheduled builds; see docs/metrics.md)",
    )


def _reference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reference",
        metavar="SRC",
        help="real images (Parquet, WebDataset shards, class folders) to measure the build "
        "against: near copies and distribution metrics, from the stored embeddings",
    )
    p.add_argument(
        "--clip-model",
        metavar="DIR",
        help="the build's CLIP folder (default: the recipe's scoring.clip_model, found from "
        "where the build found it)",
    )


# -- each subcommand's own options ---------------------------------------------------------


def _plan_options(p: argparse.ArgumentParser) -> None:
    _recipe_arg(p)
    _overrides_arg(p)
    p.add_argument("--examples", type=int, default=3, help="sample prompts shown per class")
    _json_arg(p)
    p.add_argument(
        "--estimate",
        action="store_true",
        help="also check the model and time a short calibration on this machine: the build's "
        "time and device-seconds per 1,000 images (loads the model and scorers, runs a few "
        "short calls of the recipe's batch shape; writes nothing)",
    )
    p.add_argument(
        "--price-per-hour",
        type=float,
        metavar="X",
        help="device price per hour, with --estimate: adds the price per 1,000 images",
    )


def _build_options(p: argparse.ArgumentParser) -> None:
    _recipe_arg(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", "-o", help="output directory (refused if not empty)")
    where.add_argument(
        "--publish",
        metavar="ROOT",
        help="versioned build: ROOT/builds/<time>-<hash>/, then ROOT/latest swapped to it",
    )
    _overrides_arg(p)
    p.add_argument("--resume", action="store_true", help="finish an interrupted build")
    p.add_argument(
        "--extend",
        nargs="?",
        const="latest",
        metavar="BUILD",
        help="grow a complete build (with --publish and no BUILD: its latest): its shards are "
        "kept byte for byte, only new samples are generated",
    )
    _worker_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    _regression_arg(p)
    _json_arg(p)
    p.add_argument(
        "--metrics-file",
        metavar="PATH",
        help="write the build's metrics here in the Prometheus text format (images/s, accept "
        "rate, counters), on success and on failure",
    )


def _worker_options(p: argparse.ArgumentParser) -> None:
    """--workers / --devices: what they stand for is in pipelines.init.runner_args."""
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="N worker processes on this machine (DirectRunner multi_processing; "
        "docs/runners.md); not with --direct_num_workers after --",
    )
    p.add_argument(
        "--devices",
        metavar="LIST|N",
        help="GPU build (model.device: cuda): one worker process per GPU, N of them, or the "
        "GPUs listed (0,2 or cuda:0,cuda:2)",
    )


def _validate_options(p: argparse.ArgumentParser) -> None:
    _build_dir_arg(p)
    _reference_args(p)
    _json_arg(p)


def _status_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="build output directory or publish root")
    _json_arg(p)


def _verify_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="image file, .tar shard, build directory or publish root")
    p.add_argument("--build", help="the build (directory or manifest.json) outside PATH")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--trust-list",
        metavar="PEM",
        help="trusted C2PA signers (PEM certificates): a signed image's chain must anchor here",
    )
    p.add_argument(
        "--regenerate",
        action="store_true",
        help="also make each image again from its provenance and compare bytes and pixels",
    )


def _report_options(p: argparse.ArgumentParser) -> None:
    _build_dir_arg(p)
    _reference_args(p)
    _regression_arg(p)


def _regenerate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="build output directory")
    p.add_argument("key", help="sample key")
    p.add_argument("--image-out", default=None, help="also write the regenerated image here")
    p.add_argument(
        "--model",
        metavar="PATH",
        default=None,
        help="the model folder (needed where the build was made elsewhere); its sha256 "
        "must be the recorded one",
    )
    p.add_argument(
        "--inputs",
        metavar="DIR",
        action="append",
        default=[],
        help="a folder holding the sample's other inputs, by the path the provenance records "
        "(relative to the recipe's folder) or by name; repeatable",
    )


def _prune_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", help="publish root (holds builds/ and latest)")
    p.add_argument("--keep", type=int, required=True, metavar="N", help="builds to keep")
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")


def _init_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        metavar="MODEL_DIR",
        help="diffusers pipeline folder (with --from-dataset: the one making the top-ups; "
        "default the bundled digits model)",
    )
    p.add_argument("--from-dataset", metavar="DIR_OR_PARQUET", help="labelled dataset to balance")
    p.add_argument("--label-column", default="label", help="the dataset's label column")
    p.add_argument("--image-column", default="image", help="the dataset's image column")
    p.add_argument(
        "--clip-model",
        metavar="DIR",
        help="CLIP folder that scores the images (default the bundled digits CLIP)",
    )
    p.add_argument(
        "--classes", metavar="A,B,...", help="class names for a --model recipe (default cat,dog)"
    )
    p.add_argument("--name", help="the recipe's name (default: from the folder)")
    p.add_argument("--output", "-o", default="recipe.yaml", help="file to write")
    p.add_argument("--force", action="store_true", help="replace an existing file")


def _compare_options(p: argparse.ArgumentParser) -> None:
    _recipe_arg(p)
    _overrides_arg(p)
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        default=[],
        metavar="DIR",
        help="a candidate: the recipe with this model folder (repeatable)",
    )
    p.add_argument(
        "--candidate",
        dest="candidates",
        action="append",
        default=[],
        metavar="'NAME: KEY=VALUE ...'",
        help="a candidate: the recipe with these overrides, e.g. 'fast: sampling.steps=4 "
        "sampling.scheduler=lcm'; 'NAME:' alone is the recipe as it is (repeatable)",
    )
    p.add_argument(
        "--scratch",
        help="folder for the calibration builds (default: compare-<recipe name>/ here)",
    )
    p.add_argument(
        "--count-per-class",
        type=int,
        default=20,
        help="images per class in each calibration build (default 20)",
    )
    p.add_argument(
        "--price-per-hour", type=float, help="device price per hour: adds a price per 1,000"
    )
    _json_arg(p)


def _train_default_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", "-o", default="models", help="folder for digits-ldm/, digits-clip/")
    p.add_argument(
        "--video",
        action="store_true",
        help="train only the motion model (digits-motion/) over <output>/digits-ldm",
    )


# Every subcommand: (name, its options, its help texts), in the order `--help` lists them.
_SUBCOMMANDS: tuple[tuple[str, Callable[[argparse.ArgumentParser], None], dict[str, str]], ...] = (
    (
        "plan",
        _plan_options,
        {
            "help": "show what a recipe would build (classes, counts, shards, prompts); "
            "writes nothing"
        },
    ),
    (
        "build",
        _build_options,
        {
            "help": "build a corpus from a recipe",
            "description": "Build a corpus. Arguments after `--` go to Beam's PipelineOptions; "
            "--workers / --devices stand for the common DirectRunner ones (docs/runners.md).",
        },
    ),
    (
        "validate",
        _validate_options,
        {
            "help": "re-run every corpus check on a build directory",
            "description": "Hashes against the manifest, tar readability, tar/Parquet agreement "
            "and the great_expectations suite. Exit 0 only when all pass.",
        },
    ),
    (
        "status",
        _status_options,
        {
            "help": "what a build directory or publish root holds: complete, shards written "
            "and pending, the last error; reads only"
        },
    ),
    (
        "verify",
        _verify_options,
        {
            "help": "check images against their build: manifest sha256 and invisible watermark",
            "description": "PATH is an image, a shard tar or a build directory. Exit 0 only "
            "when every image is in its build's manifest and carries the build's watermark (or "
            "is too small to carry one).",
        },
    ),
    ("report", _report_options, {"help": "(re)write report.html and report.json for a build"}),
    (
        "regenerate",
        _regenerate_options,
        {
            "help": "rebuild one sample from its provenance alone and compare its bytes",
            "description": "Rebuild one sample from its provenance and compare its bytes. "
            "Provenance names the model folder and other inputs (adapters, conditioning "
            "sources and images, ControlNet / IP-Adapter folders) as the recipe wrote them "
            "relative to its folder, else by name, with their sha256. They are looked for with "
            "--model, where the build found them (a build made on this machine), then by the "
            "recorded path or name in the --inputs folders, the recipe's folder, the build's "
            "adapters/ folder and the current directory; only what has the recorded sha256 is "
            "used.",
        },
    ),
    (
        "prune",
        _prune_options,
        {"help": "remove all but the N newest builds under a publish root (never `latest`)"},
    ),
    (
        "init",
        _init_options,
        {
            "help": "write a commented recipe to start from: for a diffusers model folder, or "
            "to balance a labelled dataset",
            "description": "Write a recipe scaffold that `synthgen plan` accepts. --model DIR: "
            "a fixed-count recipe for that diffusers folder; --from-dataset SRC: a balancing "
            "recipe with one class per label of SRC (Parquet, WebDataset shards, class "
            "folders).",
        },
    ),
    (
        "compare",
        _compare_options,
        {
            "help": "calibrate candidate models or samplers on one recipe and compare their "
            "cost per 1,000 accepted images and the usefulness of their images",
            "description": "Each candidate (--model, --candidate) is built once, as an "
            "ordinary build of the same classes and seeds under --scratch (reused by a later "
            "compare), then one table compares images/s, device-seconds (and price) per 1,000 "
            "accepted images, acceptance, CLIP score, label margin, FD and coverage against the "
            "recipe's reference, and a probe classifier's accuracy on its real labelled images. "
            "Nothing is published.",
        },
    ),
    (
        "train-default",
        _train_default_options,
        {"help": "train the bundled digits models (diffusion + CLIP) on scikit-learn's digits"},
    ),
)


class _JsonFormatter(logging.Formatter):
    """One JSON object per log line: time (UTC, ISO 8601), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        import json
        from datetime import UTC, datetime

        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data)


def _setup_logging(
    verbose: bool,
    quiet: bool = False,
    log_format: str = "text",
    run: RunContext | None = None,
) -> None:
    """Log lines on stderr; libraries kept to warnings (`verbose`) or errors. With the
    command's `run`, what libraries log after a signal it received is dropped."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(_JsonFormatter())
    for noisy in (
        "apache_beam",
        "diffusers",
        "transformers",
        "great_expectations",
        "urllib3",
        "httpx",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)
    if verbose:  # synthgen's own debug lines; libraries stay at INFO (PIL's chunk dumps...)
        logging.getLogger("synthgen").setLevel(logging.DEBUG)
    for handler in logging.getLogger().handlers:
        # Beam's import logs this on the root logger; it concerns only GCP connectors.
        handler.addFilter(lambda record: not record.getMessage().startswith("apitools not found"))
        if run is not None:
            for old in [f for f in handler.filters if isinstance(f, _AfterSignal)]:
                handler.removeFilter(old)  # an earlier command's, in the same process
            handler.addFilter(_AfterSignal(run))


class _AfterSignal(logging.Filter):
    """Drops what libraries log about our own unwinding after SIGINT / SIGTERM (Beam logs
    the interrupt with its traceback at ERROR): the one line `_signal_exit` prints says it
    all. On the signal path, so it imports nothing."""

    def __init__(self, run: RunContext):
        super().__init__()
        self._run = run

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], Terminated | KeyboardInterrupt):
            return False
        return not (self._run.signals and not record.name.startswith("synthgen"))


def _quiet_environment() -> None:
    """No hub access, no telemetry, no library deprecation chatter (set before any import)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def cmd_plan(args: argparse.Namespace) -> int:
    """The plan of a recipe and every check that needs no model: nothing is loaded (without
    --estimate) and nothing is written; a failed check exits non-zero, as the build would."""
    from synthgen.pipelines.estimate import check_inputs, check_price, plan_estimate
    from synthgen.schemas.recipe import load_recipe

    check_price(args.price_per_hour, args.estimate)
    recipe, base_dir = load_recipe(args.recipe, args.overrides)
    deficit = check_inputs(recipe, base_dir, count_source=True)
    out: dict[str, Any] = {
        "command": "plan",
        "ok": True,
        "recipe": recipe.name,
        "recipe_hash": recipe.hash,
        "seed": recipe.seed,
    }
    lines = [f"recipe {recipe.name} (hash {recipe.hash[:12]}), seed {recipe.seed}"]
    if recipe.balance is not None:
        lines += _balance_plan(recipe, deficit, out)
    else:
        lines += _fixed_plan(recipe, args.examples, out)
    if args.estimate:
        estimate, figures = plan_estimate(recipe, base_dir, args.price_per_hour)
        lines += estimate
        out |= {"estimate": estimate, "estimate_figures": figures}
    elif recipe.balance is None:
        lines.append(
            "estimated time: add --estimate (loads the model and times a short calibration)"
        )
    if args.json:
        _print_json(out)
    else:
        for line in lines:
            print(line)
    return EXIT_OK


def _balance_plan(recipe: Any, deficit: Any, out: dict[str, Any]) -> list[str]:
    """A balancing build's plan: the source decides the counts; each class's deficit (also
    into `out`, the --json summary)."""
    b = recipe.balance
    lines = [
        f"balancing build: the source {b.source} decides the counts "
        f"(target {b.target}, up to {b.max_rounds} round(s))"
    ]
    if deficit is None:  # an object-store source: counted when the build reads it
        return lines
    out["balance"] = {
        "before": deficit.before,
        "target": deficit.target,
        "deficit": deficit.missing,
        "deficit_total": deficit.total,
    }
    width = max(len(n) for n in deficit.before) if deficit.before else 0
    for name, n in deficit.before.items():
        lines.append(
            f"  {name:<{width}}  {n} in the source, target {deficit.target[name]}: "
            f"{deficit.missing[name]} to make"
        )
    if b.strategy == "feedback":  # the probe decides the counts, within the budget
        fb = b.feedback_settings
        out["balance"]["max_synthetic"] = fb.max_synthetic
        lines.append(
            f"strategy feedback: at most {fb.max_synthetic} synthetic sample(s), in rounds of "
            f"{fb.round_budget} placed where a probe's held-out error is (the deficit above "
            "caps each class); it stops at the budget, on a plateau or at the targets"
        )
        return lines
    lines.append(
        f"deficit: {deficit.total} accepted synthetic image(s) to make in total "
        "(more are generated: rejects and the overgenerate factor)"
    )
    return lines


def _fixed_plan(recipe: Any, examples: int, out: dict[str, Any]) -> list[str]:
    """A fixed-count build's plan: samples, shards and sampling, then up to `examples` of
    the first shard's samples per class (counts also into `out`, the --json summary)."""
    from synthgen.generators.planning import count_planned, plan_shard, shard_ids

    shards = shard_ids(recipe)
    out |= {"samples": count_planned(recipe), "shards": len(shards)}
    s = recipe.sampling
    what = "samples" if s.num_frames is None else "clips"
    size = f"{s.width}x{s.height}"
    if s.num_frames is not None:  # a clip's length, and how it is stored
        size += f", {s.num_frames} frames at {s.fps} fps ({recipe.output.video_format})"
    lines = [
        f"{count_planned(recipe)} {what} in {len(shards)} shard(s) of up to "
        f"{recipe.output.shard_size}; {size}, {s.steps} steps, scheduler {s.scheduler}"
    ]
    shown: dict[int, int] = {}
    for r in plan_shard(recipe, shards[0]) if shards else []:
        if shown.get(r.class_label, 0) < examples:
            if not shown.get(r.class_label):
                lines.append(
                    f"class {r.class_label} {r.class_name}: {recipe.count_per_class} samples"
                )
            lines.append(_example_line(recipe, r))
            shown[r.class_label] = shown.get(r.class_label, 0) + 1
    return lines


def _example_line(recipe: Any, r: Any) -> str:
    """One planned sample: key, seed, the expanded prompt; steps / guidance where a class
    or jitter changes them."""
    own = [
        f"{what} {value}"
        for what, value, default in (
            ("steps", r.sample_steps, recipe.sampling.steps),
            ("guidance", r.sample_guidance_scale, recipe.sampling.guidance_scale),
        )
        if value is not None and value != default
    ]
    return f"  {r.key}  seed {r.seed}  {r.prompt!r}" + (f"  ({', '.join(own)})" * bool(own))


def cmd_build(args: argparse.Namespace, beam_args: list[str], run: RunContext) -> int:
    """Build a corpus (pipelines.build) with the command's run context: its clock is the
    live rate's and the summary's, its early gate process gates the build."""
    from synthgen.schemas.recipe import load_recipe

    started = run.started

    # A bad recipe, a bad input or an output that cannot be written is reported before the
    # heavy imports (torch, diffusers, Beam, open_clip); a build with nothing left to do
    # ends here too.
    recipe, base_dir = load_recipe(args.recipe, args.overrides)
    beam_args = _worker_args(args, recipe, beam_args)
    done = _before_heavy_imports(args, recipe, base_dir)
    _unwind_if_signalled(run)
    if done is not None:
        out, manifest = done
        import time

        summary = _build_summary(
            str(out), manifest, 0, time.monotonic() - started, manifest.shard_ids
        )
        return _print_build(args, summary) or _regressions(args, out)
    from synthgen.pipelines.progress import start_line

    logger.info("%s", start_line(recipe, args.output or args.publish, args.resume))
    run.prestart_gate()  # its process imports great_expectations while this one imports the rest
    with loading():
        from synthgen.pipelines.build import run_build
    _unwind_if_signalled(run)  # one these imports swallowed: the build never starts
    result = run_build(
        args.recipe,
        args.output,
        publish_root=args.publish,
        overrides=args.overrides,
        resume=args.resume,
        extend=args.extend,
        beam_args=beam_args,
        show_progress=not args.no_progress,
        run=run,
    )
    summary = _build_summary(
        result.location,
        result.manifest,
        result.generated_now,
        result.seconds,
        result.reused_shards,
        result.metrics,
    )
    from synthgen.pipelines.status import clear_error

    clear_error(result.output)  # a complete build has no last error
    return _print_build(args, summary) or _regressions(args, result.output)


def _worker_args(args: argparse.Namespace, recipe: Any, beam_args: list[str]) -> list[str]:
    """Beam's arguments with what --workers / --devices stand for (pipelines.init); the
    environment they need is set here, before any worker process or CUDA starts."""
    from synthgen.pipelines.init import runner_args

    out, env = runner_args(
        beam_args,
        workers=args.workers,
        devices=args.devices,
        model_device=recipe.model.device,
        verbose=getattr(args, "verbose", False),
    )
    os.environ.update(env)
    return out


def cmd_init(args: argparse.Namespace) -> int:
    """Write a recipe scaffold (pipelines.init), checked as `plan` checks it."""
    from synthgen.pipelines.init import init_recipe

    scaffold = init_recipe(
        args.output,
        model=args.model,
        from_dataset=args.from_dataset,
        label_column=args.label_column,
        image_column=args.image_column,
        clip_model=args.clip_model,
        classes=args.classes,
        name=args.name,
        force=args.force,
    )
    for note in scaffold.notes:
        print(f"synthgen: note: {note}", file=sys.stderr)
    r = scaffold.recipe
    what = "balancing" if r.balance is not None else f"{r.count_per_class} per class"
    print(
        f"synthgen: wrote {args.output}: recipe {r.name}, {len(r.classes)} class(es), {what}; "
        f"next: synthgen plan {args.output}"
    )
    return EXIT_OK


def _before_heavy_imports(args: argparse.Namespace, recipe: Any, base_dir: Path) -> Any:
    """The build's refusals that need no model library, in well under two seconds: the dry
    run (pipelines.estimate.check_inputs), an output directory that is not empty or holds
    another recipe's build, a publish root that is a build. Returns (folder, manifest) of a
    complete build with nothing left to do (`--resume` of a finished one), else None."""
    from pathlib import Path

    from synthgen.pipelines.card import CARD_NAME
    from synthgen.pipelines.estimate import check_inputs
    from synthgen.pipelines.output import (
        LATEST,
        check_resumable,
        finished_build,
        versioned_output,
    )
    from synthgen.schemas.manifest import REPORT_HTML, REPORT_JSON
    from synthgen.schemas.recipe import resolve_path
    from synthgen.storage.store import is_remote

    check_inputs(recipe, base_dir)
    after = (REPORT_JSON, REPORT_HTML, CARD_NAME)
    model = resolve_path(base_dir, recipe.model.path)
    if args.output and not is_remote(args.output):
        out = Path(args.output).resolve()
        state = check_resumable(out, recipe, args.resume)
        if state is not None and args.extend is None:
            manifest = finished_build(out, recipe, model, after)
            if manifest is not None:
                return out, manifest
    if args.publish and not is_remote(args.publish) and args.extend is None:
        root = Path(args.publish).resolve()
        out = versioned_output(root, recipe, args.resume)  # reads only
        latest = root / LATEST
        if args.resume and latest.is_symlink() and latest.resolve() == out:
            manifest = finished_build(out, recipe, model, after)
            if manifest is not None:
                return out, manifest
    return None


def _build_summary(
    location: str,
    manifest: Any,
    generated_now: int,
    seconds: float,
    reused: list[int],
    metrics: dict[str, int] | None = None,
) -> dict[str, Any]:
    """What a build did, as the `--json` summary and the metrics file give it."""
    from synthgen.pipelines.progress import rate

    c = manifest.counts
    return {
        "command": "build",
        "ok": True,
        "location": location,
        "status": manifest.status,
        "recipe_hash": manifest.recipe_hash,
        "accepted": c.accepted,
        "rejected": c.rejected,
        "failed": c.failed,
        "planned": c.planned,
        "accept_rate": c.accepted / c.attempted if c.attempted else None,
        "shards": len(manifest.shards),
        "reused_shards": len(reused),
        "generated_now": generated_now,
        "seconds": round(seconds, 3),
        "images_per_second": rate(generated_now, seconds),  # samples: clips in a video build
        "unit": "clip" if manifest.recipe.get("sampling", {}).get("num_frames") else "image",
        "metrics": dict(metrics or {}),
    }


def _print_build(args: argparse.Namespace, summary: dict[str, Any]) -> int:
    from synthgen.pipelines.progress import rate_definition

    published = None
    if args.publish:
        location = summary["location"]
        pointer = "LATEST" if "://" in location else "latest"
        folder = location.rstrip("/").rsplit("/", 1)[-1]  # the store's, not the cache's
        published = f"{args.publish}/{pointer} -> builds/{folder}"
    summary["published"] = published
    if getattr(args, "metrics_file", None):
        from synthgen.pipelines.status import write_metrics

        write_metrics(args.metrics_file, summary)
    if getattr(args, "json", False):
        _print_json(summary)
        return EXIT_OK
    s = summary
    print(
        f"synthgen: built {s['location']}: {s['accepted']} accepted, {s['rejected']} rejected"
        + (f", {s['failed']} failed" if s["failed"] else "")
        + f" in {s['shards']} shard(s); {s['generated_now']} generated in {s['seconds']:.1f}s "
        f"({s['images_per_second']:.2f} {s['unit']}s/s: {rate_definition(s['unit'])})"
        + (f"; reused {s['reused_shards']} shard(s)" if s["reused_shards"] else "")
    )
    if published:
        print(f"synthgen: published {published}")
    return EXIT_OK


def _print_json(data: dict[str, Any]) -> None:
    """One JSON object on one line of stdout (the `--json` summaries)."""
    import json

    print(json.dumps(data, sort_keys=True, allow_nan=False))


def cmd_validate(args: argparse.Namespace) -> int:
    """Every corpus check on a build (and with --reference, against real images); exit 0
    only when all pass."""
    out = _build_dir(args.dir)
    report, notes = _validation(out, args.reference, args.clip_model)
    skipped = _not_run(out, report.expectations)
    if skipped:
        notes.append(
            f"{len(skipped)} of the build's expectations not run here (the build's gate ran "
            f"them; validate reads only the corpus): {', '.join(skipped)}"
        )
    passed = sum(e.success for e in report.expectations)
    code = EXIT_OK if report.ok else EXIT_FAILED
    failed = [
        f"{e.dataset}: {e.expectation} {e.kwargs} {e.detail}" for e in report.failed_expectations()
    ]
    if args.json:
        _print_json(
            {
                "command": "validate",
                "ok": report.ok,
                "dir": str(out),
                "expectations": len(report.expectations),
                "expectations_passed": passed,
                "failures": list(report.failures),
                "failed_expectations": failed,
                "skipped_expectations": skipped,
                "notes": notes,
            }
        )
        return code
    for failure in report.failures:
        print(f"FAIL {failure}")
    for line in failed:
        print(f"FAIL expectation {line}")
    for note in notes:
        print(f"synthgen: note: {note}")
    print(
        f"synthgen: {args.dir}: {'valid' if report.ok else 'INVALID'} "
        f"({passed}/{len(report.expectations)} expectations passed, "
        f"{len(report.failures)} other failure(s))"
    )
    return code


def _validation(out: Path, reference: str | None, clip_model: str | None) -> tuple[Any, list[str]]:
    """The corpus report of `out` with its metric gates: against `reference` when given and
    the corpus passed, else as the build's gate ran them (its stored metrics); and notes."""
    from synthgen.validators.corpus import validate_dir

    report = validate_dir(out)
    notes: list[str] = []
    if reference and report.ok:
        from synthgen.pipelines.reference_commands import check_against_reference

        clip = _build_clip_folder(out, clip_model)
        failures, gates = check_against_reference(out, reference, clip)
        report.failures += failures
        report.expectations += gates
        return report, notes
    from synthgen.validators.expectations import stored_metric_gates

    gates = stored_metric_gates(out)  # as the build's gate ran them
    report.expectations += gates
    if reference and gates:
        notes.append(
            f"metric gates evaluated on the build's stored metrics, not against "
            f"{reference}: the corpus failed validation first"
        )
    return report, notes


def _not_run(out: Path, ran: list[Any]) -> list[str]:
    """The build gate's expectations (its manifest's) that `ran` lacks, by name."""
    from synthgen.validators.corpus import read_manifest
    from synthgen.validators.expectations import not_run

    try:
        validation = read_manifest(out).validation
    except (OSError, ValueError):
        return []
    return not_run(ran, validation.expectations if validation else None)


def _regressions(args: argparse.Namespace, out: Path) -> int:
    """With --fail-on-regression: EXIT_REGRESSED and one line naming each regression when
    the report's trend (against the previously published build) has any; else EXIT_OK."""
    if not getattr(args, "fail_on_regression", False):
        return EXIT_OK
    from synthgen.validators.trend import describe, report_regressions

    found = report_regressions(out)
    if not found:
        return EXIT_OK
    print(
        f"synthgen: error: regression against the previous build ({out}): "
        f"{len(found)} regression(s): {describe(found)}",
        file=sys.stderr,
    )
    return EXIT_REGRESSED


def _build_dir(location: str) -> Path:
    """A build directory; a local publish root's `latest` (as `synthgen.load(ROOT)` follows
    it); an object-store URL (or publish root) as a checked local copy."""
    from pathlib import Path

    from synthgen.storage.store import is_remote

    if is_remote(location):
        from synthgen.pipelines.remote import pull_build

        return pull_build(location)
    return _follow_root(Path(location))


def _build_clip_folder(out: Path, explicit: str | None) -> str:
    """The CLIP folder a build scored with, for `--reference`: `--clip-model`, else the
    recipe's `scoring.clip_model` resolved as the build resolved it. A relative one was
    relative to the recipe's folder: the build's private state records where that folder and
    the CLIP folder were (published files record neither); an older manifest records where
    the model folder was, and the CLIP folder is found from there. Either way, whatever the
    current directory. Its weights are then checked against the sha256 the build recorded.
    """
    import posixpath
    from pathlib import Path

    from synthgen.pipelines.output import BuildError
    from synthgen.schemas.manifest import MANIFEST_NAME, Manifest

    if explicit is not None:
        return explicit
    manifest = Manifest.model_validate_json((out / MANIFEST_NAME).read_bytes())
    clip = str(manifest.recipe["scoring"]["clip_model"])
    model = str(manifest.recipe["model"]["path"])
    candidate = None
    if Path(clip).expanduser().is_absolute():
        candidate = str(Path(clip).expanduser())
    elif not Path(model).is_absolute() and Path(manifest.model.path).is_absolute():
        base = "/" + "/".join(["_"] * 64)  # a deep stand-in for the recipe's folder
        step = posixpath.relpath(
            posixpath.normpath(posixpath.join(base, clip)),
            posixpath.normpath(posixpath.join(base, model)),
        )
        candidate = posixpath.normpath(posixpath.join(manifest.model.path, step))
    if candidate is None or not Path(candidate).is_dir():  # where this machine built it
        candidate = _clip_from_state(out, manifest.recipe_hash, clip) or candidate
    if candidate is not None and Path(candidate).is_dir():
        return candidate
    where = f" (looked for {candidate})" if candidate else ""
    raise BuildError(
        f"{out}: the build's CLIP folder, scoring.clip_model {clip!r} relative to its recipe, "
        f"is not found{where}: pass it with --clip-model DIR"
    )


def _clip_from_state(out: Path, recipe_hash: str, clip: str) -> str | None:
    """The CLIP folder recorded as `clip` (as published) where the build found it, from its
    private state (a build made on this machine); None otherwise."""
    from pathlib import Path

    from synthgen.pipelines.output import read_state

    state = read_state(out)
    if state is None or state.recipe_hash != recipe_hash:
        return None
    found = [local for local, shown in state.paths.items() if shown == clip]
    if not found and state.recipe_dir and not Path(clip).is_absolute():
        found = [str(Path(state.recipe_dir) / clip)]
    return next((f for f in found if Path(f).is_dir()), None)


def _follow_root(path: Path) -> Path:
    """`ROOT/latest` for a publish root (a folder with a `latest` link and no manifest)."""
    from synthgen.pipelines.output import LATEST
    from synthgen.schemas.manifest import MANIFEST_NAME

    if path.is_dir() and not (path / MANIFEST_NAME).exists() and (path / LATEST).is_symlink():
        return path / LATEST
    return path


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from synthgen.schemas.manifest import MANIFEST_NAME
    from synthgen.validators.report import write_report

    out = _build_dir(args.dir)
    if not (out / MANIFEST_NAME).is_file():
        print(f"synthgen: error: {out}: no {MANIFEST_NAME}: not a finished build", file=sys.stderr)
        return EXIT_FAILED
    reference = None
    if args.reference:
        from synthgen.pipelines.reference_commands import reference_for_build
        from synthgen.validators.corpus import read_manifest

        clip = _build_clip_folder(out, args.clip_model)
        path = reference_for_build(out, read_manifest(out), args.reference, clip)
        reference = (path, str(Path(args.reference).resolve()))
    json_path, html_path = write_report(out, reference=reference)
    print(f"synthgen: wrote {html_path} and {json_path}")
    return _regressions(args, out)


def cmd_regenerate(args: argparse.Namespace) -> int:
    import hashlib
    from pathlib import Path

    from synthgen.generators.regenerate import (
        Inputs,
        ProvenanceNotFound,
        find_provenance,
        regenerate,
    )

    try:
        # The Parquet row (rejects included) merged with its file's build constants.
        prov = find_provenance(Path(args.dir), args.key)
    except ProvenanceNotFound as exc:
        print(f"synthgen: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    model = Path(args.model) if args.model else None
    inputs = Inputs.for_build(Path(args.dir), model, [Path(d) for d in args.inputs])
    from synthgen.validators.clip_folder import load_clip

    # InputNotFound (a ModelFolderError) names what is missing; a guided feedback sample
    # also runs its CLIP model (load_clip)
    data = regenerate(prov, inputs, clip_loader=load_clip)
    digest = hashlib.sha256(data).hexdigest()
    if args.image_out:
        Path(args.image_out).write_bytes(data)
    from synthgen.pipelines.verify import recorded_encoding_sha256

    recorded = recorded_encoding_sha256(Path(args.dir), prov)  # a signed image: before signing
    same = digest == recorded
    print(
        f"synthgen: {args.key}: regenerated sha256 {digest} "
        f"{'matches' if same else 'DIFFERS FROM'} the recorded {recorded}"
    )
    return EXIT_OK if same else EXIT_FAILED


def cmd_prune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from synthgen.pipelines.output import prune
    from synthgen.storage.store import is_remote

    if is_remote(args.root):
        from synthgen.pipelines.remote import prune_remote

        removed: list[Any] = prune_remote(args.root, args.keep, dry_run=args.dry_run)
    else:
        removed = prune(Path(args.root), args.keep, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for folder in removed:
        print(f"synthgen: {verb} {folder}")
    print(f"synthgen: {verb} {len(removed)} build(s) under {args.root}")
    return EXIT_OK


def cmd_train_default(args: argparse.Namespace) -> int:
    from pathlib import Path

    from synthgen.generators.training.default_models import train_default

    if args.video:
        from synthgen.generators.training.motion import MOTION_DIR, train_motion_default

        fig = train_motion_default(Path(args.output))["motion"]["figures"]
        print(
            f"synthgen: trained {args.output}/{MOTION_DIR} in {fig['motion_seconds']:.0f}s; "
            f"final loss {fig['motion_loss']:.4f}"
        )
        return EXIT_OK
    summary = train_default(Path(args.output))
    clip = summary["clip"]["test_split"]
    wall = summary["diffusion"]["wall_seconds"] + summary["clip"]["wall_seconds"]
    print(
        f"synthgen: trained default models into {args.output} in {wall:.0f}s; "
        f"CLIP zero-shot accuracy on the test split {clip['zero_shot_accuracy']:.3f}"
    )
    return EXIT_OK


# The signal path (the handlers, `_signal_exit`, `_output_state`) imports nothing: a signal
# can arrive while a module (torch, Beam) is half imported, and importing it again from here
# would run it a second time: a traceback or a crash instead of the exit status.
class _Signals:
    """One command's SIGTERM / SIGINT handlers: each signal is recorded in `run`, and while
    the command runs (`raising`) unwound as `Terminated` / `Interrupted`; once it has
    returned or unwound, later signals are only recorded, so the exit path cannot be
    interrupted again. Library code may swallow the unwinding (a finalizer, where Python
    prints "Exception ignored" and goes on: dropped here; a C extension's catch-all) or
    turn it into an error of its own: the signal is recorded all the same, and the
    command's checkpoints (`_unwind_if_signalled`) and `main` act on the record."""

    def __init__(self, run: RunContext):
        self.run = run
        self.raising = True
        self._importing = 0  # the main thread's imports in progress, nested
        self._deferred: int | None = None  # a signal received during one, unwound after it
        self._before = (
            signal.getsignal(signal.SIGTERM),
            signal.getsignal(signal.SIGINT),
            sys.unraisablehook,
            builtins.__import__,
        )

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.received)
        signal.signal(signal.SIGINT, self.received)
        sys.unraisablehook = self._unraisable
        builtins.__import__ = self._import

    def received(self, signum: int, frame: object) -> None:
        self.run.receive(signum)
        if not self.raising:
            return
        if self._importing:
            # A module's import runs C++ that calls back into Python (torch's pybind11
            # initialisers): an exception raised there aborts the process (std::terminate,
            # status -6). The import finishes first; `_import` unwinds as it returns.
            if self._deferred is None:
                self._deferred = signum
            return
        raise _unwinding(signum)

    def _import(self, *args: Any, **kwargs: Any) -> Any:
        """`import`, with signals held until the outermost import in the main thread
        returns (signal handlers run only there)."""
        if threading.get_ident() != threading.main_thread().ident:
            return self._before[3](*args, **kwargs)
        self._importing += 1
        try:
            module = self._before[3](*args, **kwargs)
        finally:
            self._importing -= 1
        if not self._importing and self._deferred is not None and self.raising:
            signum, self._deferred = self._deferred, None
            raise _unwinding(signum)
        return module

    def _unraisable(self, unraisable: Any) -> None:
        if not (isinstance(unraisable.exc_value, Terminated) and self.run.signals):
            self._before[2](unraisable)

    def restore(self) -> None:
        """The handlers before `install` again (a program that called `main` keeps its
        own); in a process the command line owns, later signals stay recorded only."""
        self.raising = False
        if owned():
            return
        for signum, before in zip((signal.SIGTERM, signal.SIGINT), self._before[:2], strict=True):
            if before is not None:  # None: not set from Python, nothing to put back
                signal.signal(signum, before)
        sys.unraisablehook = self._before[2]
        if builtins.__import__ == self._import:
            builtins.__import__ = self._before[3]


def _handle_signals(run: RunContext) -> _Signals:
    """SIGTERM and SIGINT recorded in `run` and unwound as `Terminated` / `Interrupted`."""
    signals = _Signals(run)
    signals.install()
    return signals


def _unwinding(signum: int) -> Terminated:
    return Interrupted(signum) if signum == signal.SIGINT else Terminated(signum)


def _unwind_if_signalled(run: RunContext) -> None:
    """A checkpoint between the command's steps: a signal already received whose unwinding
    a library swallowed unwinds here, before the next step starts."""
    first = run.first_signal
    if first is not None:
        raise _unwinding(first)


def _signal_exit(run: RunContext, *, finished: bool = False) -> int | None:
    """The exit status for a signal received during the run, even if a runner wrapped it;
    `finished`: the command returned all the same (its output is complete)."""
    first = run.first_signal
    if first is None:
        return None
    what = "terminated" if first == signal.SIGTERM else "interrupted"
    when = " as the command finished" if finished else ""
    print(f"synthgen: {what}{when}; {_output_state(run, finished)}", file=sys.stderr)
    return EXIT_TERMINATED if first == signal.SIGTERM else EXIT_INTERRUPTED


def _output_state(run: RunContext, finished: bool = False) -> str:
    """What the interrupted build left: complete (manifest written) or not, and what to run
    (nothing, when the command had `finished`).

    From the output directory the run opened last (none: nothing was written), reading only
    modules already loaded, never importing one. A build on an object store is named by its
    store location (recorded in its working copy by synthgen.pipelines.remote), not the
    cache folder.
    """
    out = run.last_opened
    manifest = getattr(sys.modules.get("synthgen.schemas.manifest"), "MANIFEST_NAME", None)
    if out is None or manifest is None:
        return "nothing was written"
    where = str(out)
    record = getattr(sys.modules.get("synthgen.pipelines.remote"), "LOCATION_NAME", None)
    if record is not None:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            where = (out / record).read_text(encoding="utf-8")
    if (out / manifest).is_file():
        if finished:
            return f"the build in {where} is complete (manifest written)"
        return (
            f"the build in {where} is complete (manifest written); rerun the same command "
            "with --resume to finish its report and publishing"
        )
    return (
        f"the build in {where} is incomplete (no manifest); rerun the same command with "
        "--resume to continue it"
    )


class Terminated(BaseException):
    """SIGTERM: unwind like an interrupt so no manifest is written for an unfinished build."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Interrupted(Terminated):
    """SIGINT, unwinding the same way. Not a KeyboardInterrupt: CPython remembers one that
    passes through code a C extension runs (pybind11's exec, while torch imports) as
    unhandled, and at exit kills the process with SIGINT instead of returning 130."""


def cmd_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from synthgen.pipelines.verify import VerifyError, format_text, verify
    from synthgen.storage.store import is_remote

    path = args.path if is_remote(args.path) else str(_follow_root(Path(args.path)))
    build = args.build
    if build is not None and not is_remote(build):
        build = str(_follow_root(Path(build)))
    try:
        result = verify(path, build, trust_list=args.trust_list, regenerate=args.regenerate)
    except VerifyError as exc:
        print(f"synthgen: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(result.to_json() if args.json else format_text(result))
    return 0 if result.ok else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status. A SIGINT or SIGTERM from the moment this installs
    its handlers until it returns, imports included, ends it with 130 or 143 and one line
    saying what the build left, never a traceback: also when a library swallowed the
    unwinding or turned it into an error of its own, and when the command finished all the
    same (the line then says the build is complete). A signal after it returned (the
    interpreter's exit) is recorded and ignored: the status stands. Before the handlers
    (the interpreter's start and this module's imports), Python's defaults apply.

    The command's run context (synthgen.pipelines.runcontext) is made here, first: its clock
    starts now and it records the signals received and the output the build opened."""
    run = RunContext()
    signals = _Signals(run)
    try:
        try:
            signals.install()
            code = _main(argv, run)
            signals.raising = False
        except BaseException as exc:
            signals.raising = False  # first, before any call: the exit path is not unwound
            unwound = _unwound(run, exc)
            if unwound is None:
                raise
            return unwound
        after = _signal_exit(run, finished=True)  # swallowed, or received as it finished
        return code if after is None else after
    finally:
        signals.restore()


def _unwound(run: RunContext, exc: BaseException) -> int | None:
    """The exit status for what ended the command early: any exception once a signal was
    received (how it unwound: its own exception, a runner's error, a KeyboardInterrupt), a
    KeyboardInterrupt without one (Python's handler: one a library put back), a closed
    stdout; None for anything else (raised on: a bug's traceback, argparse's exit)."""
    if isinstance(exc, KeyboardInterrupt) and run.first_signal is None:
        run.receive(signal.SIGINT)
    code = _signal_exit(run)
    if code is not None:
        return code
    if isinstance(exc, BrokenPipeError):
        return _stdout_closed()
    return None


def _stdout_closed() -> int:
    """The reader of stdout went away (`synthgen verify --json | head`): no traceback, and
    nothing more is written there (the final flush at exit would raise again)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None, run: RunContext) -> int:
    own, beam_args = _split_beam_args(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(own)
    _setup_logging(
        getattr(args, "verbose", False),
        getattr(args, "quiet", False),
        getattr(args, "log_format", "text"),
        run,
    )
    _quiet_environment()
    from synthgen.pipelines.output import BuildError
    from synthgen.schemas.errors import ModelFolderError
    from synthgen.schemas.recipe import RecipeError
    from synthgen.storage.store import StoreError

    _unwind_if_signalled(run)
    try:
        if args.command == "build":
            return cmd_build(args, beam_args, run)
        command = _COMMANDS.get(args.command)
        return EXIT_USAGE if command is None else command(args)
    except BrokenPipeError:
        raise
    except (RecipeError, ModelFolderError, BuildError, StoreError) as exc:
        _unwind_if_signalled(run)  # an interrupt turned into one of these on its way out
        return _fail(args, str(exc), run)
    except Exception as exc:
        _unwind_if_signalled(run)  # a runner re-raised the interrupt as its own error
        logger.debug("failure", exc_info=True)
        return _fail(args, f"{type(exc).__name__}: {exc}", run)


def _fail(args: argparse.Namespace, message: str, run: RunContext) -> int:
    """Say why a command failed (stderr; with --json also one object on stdout); a build
    also records it for `synthgen status` and writes its metrics file."""
    message += _set_path_note(message, getattr(args, "overrides", []))
    print(f"synthgen: error: {message}", file=sys.stderr)
    if args.command == "build":
        _record_build_error(run, message)
        if getattr(args, "metrics_file", None):
            from synthgen.pipelines.status import write_metrics

            write_metrics(args.metrics_file, {"ok": False})
    if getattr(args, "json", False):
        _print_json({"command": args.command, "ok": False, "error": message})
    return EXIT_FAILED


def _set_path_note(message: str, overrides: list[str]) -> str:
    """For a path given with `--set` that is not found: say where it was looked for."""
    from pathlib import Path

    from synthgen.schemas.recipe import PATH_FIELDS, is_url

    if "not found" not in message:
        return ""
    for item in overrides:
        key, _, value = item.partition("=")
        path_field = tuple(key.strip().split(".")) in PATH_FIELDS and value and not is_url(value)
        if path_field and str((Path.cwd() / value).resolve()) in message:
            return (
                f" (--set {key.strip()}={value}: a path given with --set is relative to "
                f"the current directory, {Path.cwd()}, not to the recipe)"
            )
    return ""


def _record_build_error(run: RunContext, message: str) -> None:
    """The error, in the build directory this command opened last (if it opened one)."""
    out = run.last_opened
    if out is None:
        return
    from synthgen.pipelines.output import utc_now
    from synthgen.pipelines.status import record_error

    with contextlib.suppress(OSError):
        record_error(out, "build", message, utc_now())


def cmd_compare(args: argparse.Namespace) -> int:
    from dataclasses import asdict
    from pathlib import Path

    from synthgen.pipelines.compare import Candidate, run_compare, table_lines
    from synthgen.schemas.recipe import RecipeError, load_recipe

    if args.count_per_class < 1:
        raise RecipeError("--count-per-class: must be at least 1")
    candidates = [Candidate.for_model(m) for m in args.models]
    candidates += [Candidate.parse(c) for c in args.candidates]
    scratch = args.scratch
    if scratch is None:
        scratch = f"compare-{load_recipe(args.recipe, args.overrides)[0].name}"
    rows = run_compare(
        args.recipe,
        candidates,
        Path(scratch),
        overrides=args.overrides,
        count_per_class=args.count_per_class,
        price_per_hour=args.price_per_hour,
    )
    if args.json:
        _print_json({"command": "compare", "ok": True, "candidates": [asdict(r) for r in rows]})
        return EXIT_OK
    for line in table_lines(rows):
        print(line)
    print(f"calibration builds and compare.html: {scratch}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from pathlib import Path

    from synthgen.pipelines.output import BuildError
    from synthgen.pipelines.status import build_status, format_status
    from synthgen.storage.store import is_remote

    if is_remote(args.dir):
        raise BuildError(f"{args.dir}: status reads local folders only (not yet a store)")
    where = Path(args.dir)
    if not where.is_dir():
        # a scheduler's typo must not read as "a build that has not started"
        what = "not a folder" if where.exists() else "no such folder"
        raise BuildError(f"{args.dir}: {what}")
    status = build_status(where)
    # a folder that is neither a build nor a publish root is an error, not a state
    known = "root" in status or status["build"]
    if args.json:
        _print_json({"command": "status", "ok": known, **status})
    else:
        for line in format_status(status):
            print(line)
    return EXIT_OK if known else EXIT_FAILED


# The subcommands other than `build` (which also takes Beam's arguments and the run context).
_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "plan": cmd_plan,
    "prune": cmd_prune,
    "train-default": cmd_train_default,
    "regenerate": cmd_regenerate,
    "validate": cmd_validate,
    "report": cmd_report,
    "verify": cmd_verify,
    "status": cmd_status,
    "init": cmd_init,
    "compare": cmd_compare,
}


def run() -> int:
    """The `synthgen` program: `main` in a process of its own (synthgen.pipelines.gcpolicy)."""
    own_process()
    try:
        return main()
    finally:
        exiting()


if __name__ == "__main__":
    sys.exit(run())
