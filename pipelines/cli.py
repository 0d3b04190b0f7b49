"""The `synthgen` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

logger = logging.getLogger("synthgen")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _split_beam_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synthgen",
        description="Build synthetic image corpora: recipe -> diffusion -> CLIP -> shards.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser(
        "build",
        help="build a corpus from a recipe",
        description="Build a corpus. Arguments after `--` go to Beam's PipelineOptions.",
    )
    b.add_argument("recipe", help="recipe YAML file")
    b.add_argument("--output", "-o", required=True, help="output directory")
    b.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set count_per_class=100 (repeatable)",
    )
    b.add_argument("--resume", action="store_true", help="finish an interrupted build")
    b.add_argument("--no-progress", action="store_true", help="no progress display")

    t = sub.add_parser(
        "train-default",
        help="train the bundled digits models (diffusion + CLIP) on scikit-learn's digits",
    )
    t.add_argument("--output", "-o", default="models", help="folder for digits-ldm/, digits-clip/")
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("apache_beam", "diffusers", "transformers", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.ERROR)


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import warnings  # noqa: PLC0415

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        import diffusers  # noqa: PLC0415
        import transformers  # noqa: PLC0415

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def cmd_build(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipelines.build import run_build  # noqa: PLC0415

    result = run_build(
        args.recipe,
        args.output,
        overrides=args.overrides,
        resume=args.resume,
        beam_args=beam_args,
        show_progress=not args.no_progress,
    )
    counts = result.manifest["counts"]
    rate = result.generated_now / result.seconds if result.seconds > 0 else 0.0
    print(
        f"synthgen: built {result.output}: {counts['accepted']} accepted, "
        f"{counts['rejected']} rejected in {len(result.manifest['shards'])} shard(s); "
        f"{result.generated_now} generated in {result.seconds:.1f}s ({rate:.2f} images/s)"
        + (f"; reused {len(result.reused_shards)} shard(s)" if result.reused_shards else "")
    )
    return EXIT_OK


def cmd_train_default(args: argparse.Namespace) -> int:
    from pathlib import Path  # noqa: PLC0415

    from generators.training.default_models import train_default  # noqa: PLC0415

    summary = train_default(Path(args.output))
    clip = summary["clip"]["test_split"]
    wall = summary["diffusion"]["wall_seconds"] + summary["clip"]["wall_seconds"]
    print(
        f"synthgen: trained default models into {args.output} in {wall:.0f}s; "
        f"CLIP zero-shot accuracy on the test split {clip['zero_shot_accuracy']:.3f}"
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    own, beam_args = _split_beam_args(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(own)
    _setup_logging(args.verbose)
    _quiet_libraries()
    from generators.model_folder import ModelFolderError  # noqa: PLC0415
    from pipelines.build import BuildError  # noqa: PLC0415
    from schemas.recipe import RecipeError  # noqa: PLC0415

    try:
        if args.command == "build":
            return cmd_build(args, beam_args)
        if args.command == "train-default":
            return cmd_train_default(args)
    except KeyboardInterrupt:
        print("synthgen: interrupted; the build is incomplete (no manifest)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (RecipeError, ModelFolderError, BuildError) as exc:
        print(f"synthgen: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        logger.debug("failure", exc_info=True)
        print(f"synthgen: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
