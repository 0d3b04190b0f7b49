"""Checking and loading a local diffusers pipeline folder without executing anything from it.

A folder as `huggingface-cli download` leaves it loads: `safety_checker` / `feature_extractor`
components, `.bin` / `.ckpt` pickles or ONNX / OpenVINO / Flax files beside the safetensors, a
root-level single-file checkpoint, `.gitattributes`, README. Only JSON, text, tokenizer models
and safetensors are ever read, and the loaders only ever see those: `load_pipeline` loads from
a temporary view of symlinks to the allowed files, so no pickle is visible to any loader.

Everything that can be checked without loading a model is checked in `inspect_folder`, before
any output exists: the pipeline task, the component libraries and classes, safetensors headers
(sizes and offsets), config-implied tensor shapes against the header shapes (on the meta
device: nothing is allocated), and the scheduler's config against the recipe's steps.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import math
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from synthgen.generators.families import FAMILIES, SCHEDULER_CLASSES, Family
from synthgen.schemas.errors import ModelFolderError
from synthgen.schemas.recipe import SCHEDULERS
from synthgen.storage.hashing import file_sha256
from synthgen.storage.model_files import (
    UNSAFE_WEIGHT_SUFFIXES,
    read_json_object,
    safetensors_header,
)

__all__ = [
    "ModelFolder",
    "ModelFolderError",
    "check_clip_length",
    "check_diffusers_folder",
    "check_sampling",
    "inspect_folder",
    "load_pipeline",
    "load_safety_checker",
    "make_scheduler",
    "safetensors_header",
    "scheduler_config",
]

logger = logging.getLogger(__name__)

ALLOWED_LIBRARIES = ("diffusers", "transformers")
# What loaders may read. `.model` is a sentencepiece protobuf (a T5 tokenizer), not a pickle.
READABLE_SUFFIXES = (".json", ".txt", ".safetensors", ".model")
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".so", ".dylib", ".dll", ".sh", ".ipynb")
# Weight formats never read here (listed so the log line can say what was skipped).
OTHER_WEIGHT_SUFFIXES = (*UNSAFE_WEIGHT_SUFFIXES, ".onnx", ".onnx_data", ".msgpack", ".xml", ".h5")
# Components the pipeline itself does not load (the checker is loaded on its own, see
# `load_safety_checker`: diffusers' built-in call blacks out images instead of reporting).
CHECKER_COMPONENTS = ("safety_checker", "feature_extractor")


@dataclass(frozen=True)
class Component:
    name: str
    library: str
    class_name: str
    weights: tuple[Path, ...] = ()  # the safetensors files that will be loaded


@dataclass(frozen=True)
class ModelFolder:
    """A checked diffusers folder: nothing loaded, everything loadable named."""

    path: Path
    index: dict[str, Any]
    class_name: str
    family: Family
    variant: str | None
    components: tuple[Component, ...]
    scheduler: dict[str, Any] = field(default_factory=dict)  # the folder's scheduler config

    @property
    def has_safety_checker(self) -> bool:
        return any(c.name == "safety_checker" for c in self.components)

    def readable_files(self) -> list[Path]:
        """Files a loader may see: configs, tokenizers, and the weights chosen for loading."""
        weights = {p for c in self.components for p in c.weights}
        out = [self.path / "model_index.json"]
        for c in self.components:
            sub = self.path / c.name
            for p in sorted(sub.rglob("*")):
                if not p.is_file() or p.suffix not in READABLE_SUFFIXES:
                    continue
                if p.suffix == ".safetensors" and p not in weights:
                    continue
                is_index = "safetensors.index." in p.name
                if is_index and not _index_matches(p, self.variant):
                    continue
                out.append(p)
        return out


# -- files ---------------------------------------------------------------------------------


def _hf_cache_blobs(folder: Path) -> Path | None:
    """`<repo>/blobs` when `folder` is a Hugging Face cache snapshot (`<repo>/snapshots/<rev>`)."""
    if folder.parent.name == "snapshots":
        return folder.parent.parent / "blobs"
    return None


def scan_files(folder: Path) -> None:
    """Refuse code and foreign symlinks; log (once) the weight files that will never be read."""
    blobs = _hf_cache_blobs(folder.resolve())
    skipped: list[str] = []
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            target = p.resolve()
            if blobs is None or not target.is_relative_to(blobs):
                raise ModelFolderError(
                    f"{p}: symbolic links are refused in model folders (except a Hugging Face "
                    "cache snapshot's links to its own blobs)"
                )
        if not p.is_file():
            continue
        if p.suffix in CODE_SUFFIXES:
            raise ModelFolderError(
                f"{p}: model folder contains code ({p.suffix}); custom pipeline code is never run"
            )
        if p.suffix in OTHER_WEIGHT_SUFFIXES:
            skipped.append(str(p.relative_to(folder)))
    if skipped:
        shown = ", ".join(skipped[:6]) + (
            f" and {len(skipped) - 6} more" if len(skipped) > 6 else ""
        )
        logger.info(
            "%s: ignoring %d non-safetensors file(s), never read: %s", folder, len(skipped), shown
        )


_SHARD = r"(-\d{5}-of-\d{5})?"


def _weight_files(sub: Path, variant: str | None) -> tuple[list[Path], list[Path]]:
    """(files for `variant`, files of other variants) among sub's safetensors."""
    mine: list[Path] = []
    other: list[Path] = []
    for p in sorted(sub.glob("*.safetensors")):
        m = re.fullmatch(
            rf"(?P<stem>[^.]+?)(\.(?P<variant>[a-z0-9_]+))?{_SHARD}\.safetensors", p.name
        )
        v = m.group("variant") if m else None
        (mine if v == variant else other).append(p)
    return mine, other


def _index_matches(path: Path, variant: str | None) -> bool:
    suffix = f".safetensors.index.{variant}.json" if variant else ".safetensors.index.json"
    return path.name.endswith(suffix)


# -- components ----------------------------------------------------------------------------


def _component_class(path: Path, name: str, library: Any, class_name: Any) -> type:
    """The class a component names, from diffusers (or one of its pipeline sub-modules) or
    transformers only."""
    where = f"{path}/model_index.json: component {name!r}"
    if not isinstance(library, str) or not isinstance(class_name, str):
        raise ModelFolderError(f"{where} is malformed")
    if library in ALLOWED_LIBRARIES:
        module = importlib.import_module(library)
    elif re.fullmatch(r"[a-z][a-z0-9_]*", library):
        # diffusers' own sub-modules, e.g. ["stable_diffusion", "StableDiffusionSafetyChecker"]
        try:
            module = importlib.import_module(f"diffusers.pipelines.{library}")
        except ImportError:
            module = None
    else:
        module = None
    if module is None:
        raise ModelFolderError(
            f"{where} comes from {library!r}; only {', '.join(ALLOWED_LIBRARIES)} components "
            "are loaded (and diffusers' own pipeline modules, e.g. stable_diffusion)"
        )
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ModelFolderError(f"{where}: {library} has no class {class_name!r}")
    return cls


def _needs_weights(cls: type) -> bool:
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    return issubclass(cls, ModelMixin | PreTrainedModel)


def _check_component(path: Path, name: str, spec: Any, variant: str | None) -> Component | None:
    if not (isinstance(spec, list) and len(spec) == 2):
        raise ModelFolderError(f"{path}/model_index.json: component {name!r} is malformed")
    if spec[0] is None:
        return None
    library, class_name = spec
    cls = _component_class(path, name, library, class_name)
    sub = path / name
    if not sub.is_dir():
        raise ModelFolderError(f"{path}: component folder {name}/ is missing")
    if not _needs_weights(cls):
        if not any(p.suffix in READABLE_SUFFIXES for p in sub.iterdir()):
            raise ModelFolderError(f"{sub}: component has no config")
        return Component(name, library, class_name)
    mine, other = _weight_files(sub, variant)
    if not mine:
        pickles = [p.name for p in sub.iterdir() if p.suffix in OTHER_WEIGHT_SUFFIXES]
        if other:
            names = sorted(
                {re.sub(r"^[^.]+\.?|-\d{5}-of-\d{5}|\.safetensors$", "", p.name) for p in other}
            )
            want = f"variant {variant!r}" if variant else "the default (no variant)"
            raise ModelFolderError(
                f"{sub}: no safetensors weights for {want}; found variant(s) "
                f"{', '.join(repr(n or 'default') for n in names)} (set model.variant)"
            )
        if pickles:
            raise ModelFolderError(
                f"{sub}: only pickle-based weights ({', '.join(sorted(pickles))}); they are "
                "never loaded. Convert them to safetensors, e.g. load the component once in a "
                "trusted environment and `save_pretrained(..., safe_serialization=True)`"
            )
        raise ModelFolderError(f"{sub}: no .safetensors weights (only safetensors are loaded)")
    _check_shapes(sub, cls, mine)
    return Component(name, library, class_name, tuple(mine))


def _check_shapes(sub: Path, cls: type, weights: list[Path]) -> None:
    """Compare each tensor's shape in the safetensors headers with the shape the component's
    config implies, building the model on the meta device (no memory is allocated)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for w in weights:
        shapes.update({k: s for k, (_, s) in safetensors_header(w).items()})
    expected = _meta_shapes(sub, cls)
    if expected is None:
        return
    for key, shape in expected.items():
        got = shapes.get(key)
        if got is not None and got != shape:
            raise ModelFolderError(
                f"{sub}: config.json does not match the weights: tensor {key!r} has shape "
                f"{list(got)} in the safetensors file, the config implies {list(shape)}"
            )


def _meta_shapes(sub: Path, cls: Any) -> dict[str, tuple[int, ...]] | None:
    """The tensor shapes `sub/config.json` implies for `cls`. They depend on the config's
    bytes and the class alone, so a build's driver and an in-process worker, which both
    inspect the folder, build the meta-device model once (about 0.3 s of a tiny build)."""
    try:
        digest = file_sha256(sub / "config.json")
    except OSError:  # no config to build from: the loader reports it
        return _build_meta_shapes(sub, cls)
    shapes = _implied_shapes(sub, cls, digest)
    return None if shapes is None else dict(shapes)


@functools.lru_cache(maxsize=64)
def _implied_shapes(
    sub: Path, cls: Any, digest: str
) -> tuple[tuple[str, tuple[int, ...]], ...] | None:
    shapes = _build_meta_shapes(sub, cls)
    return None if shapes is None else tuple(shapes.items())


def _build_meta_shapes(sub: Path, cls: Any) -> dict[str, tuple[int, ...]] | None:
    import torch
    from diffusers import ModelMixin

    try:
        with torch.device("meta"):
            if issubclass(cls, ModelMixin):
                config = cls.load_config(str(sub), local_files_only=True)
                model = cls.from_config(config)
            else:
                config = cls.config_class.from_pretrained(str(sub), local_files_only=True)
                model = cls._from_config(config)
    except Exception as exc:  # a class that cannot be built on meta: the loader still checks
        logger.debug("%s: no meta-device shape check (%s)", sub, exc)
        return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# -- the folder ----------------------------------------------------------------------------


def _pipeline_class(path: Path, class_name: Any) -> str:
    if isinstance(class_name, str) and class_name in FAMILIES:
        return class_name  # known without importing diffusers (a plan stays fast)
    import diffusers

    cls = getattr(diffusers, class_name, None) if isinstance(class_name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
        raise ModelFolderError(
            f"{path}/model_index.json: _class_name {class_name!r} is not a diffusers pipeline class"
        )
    assert isinstance(class_name, str)
    if class_name not in FAMILIES:
        raise ModelFolderError(
            f"{path}/model_index.json: {class_name} is not a text-to-image pipeline synthgen "
            f"builds with; supported: {', '.join(FAMILIES)}"
        )
    return class_name


def read_model_index(path: Path) -> dict[str, Any]:
    """A diffusers folder's `model_index.json`, after the folder's files are scanned (links
    out, code files) and a custom pipeline is refused: nothing in the folder runs."""
    if not path.is_dir():
        raise ModelFolderError(f"{path}: model folder not found")
    index = read_json_object(path / "model_index.json", "diffusers pipeline folder")
    scan_files(path)
    if "_custom_pipeline" in index or "custom_pipeline" in index:
        raise ModelFolderError(f"{path}/model_index.json: custom pipeline code is never run")
    return index


def inspect_folder(
    path: Path, variant: str | None = None, safety_checker: bool = True
) -> ModelFolder:
    """Check a diffusers folder down to safetensors headers and shapes; load nothing.

    `safety_checker=False` leaves the folder's checker components unchecked (never loaded).
    """
    index = read_model_index(path)
    class_name = _pipeline_class(path, index.get("_class_name"))
    components = []
    for name, spec in index.items():
        if name.startswith("_"):
            continue
        if spec is None or isinstance(spec, bool | int | float | str):
            continue  # pipeline config values such as requires_safety_checker
        if not safety_checker and name in CHECKER_COMPONENTS:
            continue
        c = _check_component(path, name, spec, variant)
        if c is not None:
            components.append(c)
    scheduler: dict[str, Any] = {}
    if any(c.name == "scheduler" for c in components):
        scheduler = read_json_object(
            path / "scheduler" / "scheduler_config.json", "scheduler folder"
        )
        _check_scheduler_config(path / "scheduler" / "scheduler_config.json", scheduler)
    return ModelFolder(
        path, index, class_name, FAMILIES[class_name], variant, tuple(components), scheduler
    )


def check_diffusers_folder(path: Path, variant: str | None = None) -> dict[str, Any]:
    """Validate a diffusers pipeline folder before loading it; returns its model_index.json."""
    return inspect_folder(path, variant).index


# -- schedulers ----------------------------------------------------------------------------


def _check_scheduler_config(path: Path, config: dict[str, Any]) -> None:
    n = config.get("num_train_timesteps", 1000)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ModelFolderError(f"{path}: num_train_timesteps must be a positive integer, got {n!r}")
    for key in ("beta_start", "beta_end", "shift"):
        v = config.get(key)
        if v is not None and (not isinstance(v, int | float) or not math.isfinite(v) or v < 0):
            raise ModelFolderError(f"{path}: {key} must be a finite non-negative number, got {v!r}")


def make_scheduler(name: str, base_config: Any, timestep_spacing: str | None = None) -> Any:
    """A diffusers scheduler chosen by recipe name from a scheduler config; `native` keeps
    the config's own class. `timestep_spacing` (leading / trailing / linspace) overrides the
    config's spacing."""
    import diffusers

    extra: dict[str, Any] = {}
    if timestep_spacing is not None:
        extra["timestep_spacing"] = timestep_spacing
    if name == "native":
        config = dict(base_config)
        cls = getattr(diffusers, str(config.get("_class_name")), None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
            raise ModelFolderError(
                f"scheduler class {config.get('_class_name')!r} is not a diffusers scheduler"
            )
        return cls.from_config(config, **extra)
    if name not in SCHEDULER_CLASSES:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    class_name, overrides = SCHEDULER_CLASSES[name]
    return getattr(diffusers, class_name).from_config(base_config, **overrides, **extra)


def _config_dict(sched: Any) -> dict[str, Any]:
    return {"class": type(sched).__name__, **dict(sched.config)}


def scheduler_config(model_path: Path, name: str) -> dict[str, Any]:
    """The effective scheduler config for `name`, read from the folder's scheduler config."""
    base = read_json_object(model_path / "scheduler" / "scheduler_config.json", "scheduler folder")
    return _config_dict(make_scheduler(name, base))


def check_sampling(
    folder: ModelFolder, scheduler: str, steps: int, sampling: Any = None
) -> dict[str, Any]:
    """Build the effective scheduler (no model) and dry-run its timesteps for `steps`.

    Refuses a scheduler whose `set_timesteps` cannot take what the family's pipeline passes
    (Flux passes flow sigmas and `mu`, LCM `original_inference_steps`) and a step count the
    scheduler cannot sample (more steps than training timesteps, or timesteps outside the
    trained range). `sampling` (the recipe's `SamplingSpec`) adds its `timestep_spacing`,
    explicit `timesteps` and `eta`, each checked against the effective scheduler. Returns
    the effective config (recorded in provenance).
    """
    where = f"{folder.path}/scheduler/scheduler_config.json"
    spacing = getattr(sampling, "timestep_spacing", None)
    timesteps = getattr(sampling, "timesteps", None)
    try:
        sched = make_scheduler(scheduler, folder.scheduler, spacing)
    except (ValueError, TypeError) as exc:
        raise ModelFolderError(f"{where}: cannot make scheduler {scheduler!r}: {exc}") from None
    who = f"{scheduler!r} ({type(sched).__name__})"
    _check_spacing(sched, who, spacing)
    if getattr(sampling, "eta", None) is not None and type(sched).__name__ != "TCDScheduler":
        from synthgen.schemas.recipe import RecipeError

        raise RecipeError(f"sampling.eta: is the tcd sampler's; {who} takes none")
    kwargs = _timestep_kwargs(folder, sched, scheduler, steps)
    if timesteps:
        _check_explicit_timesteps(sched, who)
        kwargs = {"num_inference_steps": None, "timesteps": list(timesteps)}
    try:
        sched.set_timesteps(**kwargs)
    except Exception as exc:
        raise ModelFolderError(
            f"{where}: {type(sched).__name__} cannot sample {steps} steps: {exc}"
        ) from None
    if folder.family.kind == "diffusion":
        _check_timestep_range(where, sched, steps, timesteps)
    _check_student(folder, sched, sampling)
    check_clip_length(folder, getattr(sampling, "num_frames", None))
    return _config_dict(sched)


def check_clip_length(folder: ModelFolder, num_frames: int | None) -> None:
    """A clip no longer than the folder's model can make: an AnimateDiff motion module
    attends over at most its positional embedding's `motion_max_seq_length` frames."""
    if num_frames is None or folder.family.name != "animatediff":
        return
    config = folder.path / folder.family.denoiser / "config.json"
    denoiser = read_json_object(config, "denoiser") if config.is_file() else {}
    limit = denoiser.get("motion_max_seq_length", 32)
    if isinstance(limit, int) and num_frames > limit:
        from synthgen.schemas.recipe import RecipeError

        raise RecipeError(
            f"sampling.num_frames: {folder.class_name} ({folder.family.name}) at "
            f"{folder.path}: its motion module makes clips of at most {limit} frames "
            f"(motion_max_seq_length); got {num_frames}"
        )


def _timestep_kwargs(folder: ModelFolder, sched: Any, scheduler: str, steps: int) -> dict[str, Any]:
    """What the family's pipeline passes to `set_timesteps` besides the step count (flow
    sigmas, `mu`); refuses a scheduler that takes no such argument."""
    import inspect

    import numpy as np

    family = folder.family
    params = set(inspect.signature(sched.set_timesteps).parameters)
    needed = [
        a for a in family.timestep_args if a != "mu" or sched.config.get("use_dynamic_shifting")
    ]
    missing = [a for a in needed if a not in params]
    if missing:
        from synthgen.schemas.recipe import RecipeError

        raise RecipeError(
            f"sampling.scheduler: {scheduler!r} ({type(sched).__name__}) cannot be used with "
            f"{folder.class_name} ({family.name}): its set_timesteps takes no "
            f"{', '.join(missing)}, which the pipeline passes; use `native`"
            + (" or flow-match-euler" if family.kind == "flow" else "")
        )
    kwargs: dict[str, Any] = {"num_inference_steps": None if "sigmas" in needed else steps}
    if "sigmas" in needed:
        kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps)
    if "mu" in needed:
        kwargs["mu"] = 1.0
    return kwargs


def _check_spacing(sched: Any, who: str, spacing: str | None) -> None:
    """A spacing only for a scheduler whose `set_timesteps` reads it (LCM / TCD / sCM keep
    a config field they never read: the option would be silently ignored)."""
    import inspect

    if spacing is None:
        return
    try:
        honoured = "timestep_spacing" in inspect.getsource(type(sched).set_timesteps)
    except (OSError, TypeError):
        honoured = False
    if not honoured:
        from synthgen.schemas.recipe import RecipeError

        raise RecipeError(
            f"sampling.timestep_spacing: {who} does not space its timesteps by "
            "`timestep_spacing`; remove the option"
        )


def _check_explicit_timesteps(sched: Any, who: str) -> None:
    import inspect

    takes = "timesteps" in inspect.signature(sched.set_timesteps).parameters
    if not takes or type(sched).__name__ == "SCMScheduler":  # sCM's are TrigFlow angles
        from synthgen.schemas.recipe import RecipeError

        raise RecipeError(
            f"sampling.timesteps: {who} takes no explicit training timesteps; use "
            "sampling.steps, or a sampler that does (lcm, tcd, ddpm, euler, unipc, ...)"
        )


def _check_timestep_range(
    where: str, sched: Any, steps: int, timesteps: tuple[int, ...] | None
) -> None:
    n_train = int(sched.config.get("num_train_timesteps", 1000))
    ts = sched.timesteps
    if len(ts) and (float(ts.max()) >= n_train or float(ts.min()) < 0):
        what = f"sampling.timesteps {list(timesteps)}" if timesteps else f"sampling.steps {steps}"
        raise ModelFolderError(
            f"{where}: {what} gives timesteps outside the trained range "
            f"[0, {n_train}) with {type(sched).__name__} "
            f"(num_train_timesteps {n_train}); use fewer steps"
        )


def _check_student(folder: ModelFolder, sched: Any, sampling: Any) -> None:
    """Conventions of a distilled model, read from its configs: warned by name."""
    if sampling is None:
        return
    guidance = float(sampling.guidance_scale)
    config = folder.path / folder.family.denoiser / "config.json"
    denoiser = read_json_object(config, "denoiser") if config.is_file() else {}
    if folder.family.name == "flux" and denoiser.get("guidance_embeds") is False:
        if guidance not in (0.0, 1.0):
            logger.warning(
                "sampling.guidance_scale %s: %s's transformer has no guidance embedding (a "
                "timestep-distilled model such as FLUX.1-schnell): the scale is ignored; set 0",
                guidance,
                folder.path,
            )
        if sampling.steps > 4:
            logger.warning(
                "sampling.steps %d: a timestep-distilled Flux (schnell) samples in 1-4 steps",
                sampling.steps,
            )
    _check_adversarial_student(folder, sched, sampling)
    few_step = type(sched).__name__ in ("LCMScheduler", "TCDScheduler")
    if few_step and folder.family.embedded_guidance is None and guidance > 2.0:
        logger.warning(
            "sampling.guidance_scale %s with %s on %s: LCM / TCD students take guidance_scale "
            "0-2 (the guidance is distilled into the model)",
            guidance,
            type(sched).__name__,
            folder.class_name,
        )


# Adversarially distilled SD / SDXL students (SD-Turbo, SDXL-Turbo, SDXL-Lightning, Hyper-SD
# full checkpoints): a standard pipeline folder whose only marks are its name (a hub snapshot
# keeps the repository's: models--stabilityai--sdxl-turbo/...) and a trailing-spaced scheduler.
_ADVERSARIAL_STUDENTS = {"turbo": "Turbo", "lightning": "Lightning", "hyper-sd": "Hyper-SD"}


def adversarial_student(folder: ModelFolder) -> str | None:
    """'Turbo' / 'Lightning' / 'Hyper-SD' for such a student (its folder or hub repository
    name says so), else None."""
    if folder.family.name not in ("sd", "sdxl"):
        return None
    path = folder.path
    names = [path.name, str(folder.index.get("_name_or_path", ""))]
    if path.parent.name == "snapshots":  # a hub cache: models--<owner>--<repo>/snapshots/<rev>
        names.append(path.parent.parent.name)
    names = [n.lower() for n in names]
    for mark, name in _ADVERSARIAL_STUDENTS.items():
        if any(mark in n for n in names):
            return name
    return None


def _check_adversarial_student(folder: ModelFolder, sched: Any, sampling: Any) -> None:
    """A Turbo / Lightning student samples in 1-8 steps, without classifier-free guidance,
    with trailing timesteps (a 1-step call at `leading` spacing starts from a timestep the
    student never saw): each convention broken is warned by name."""
    student = adversarial_student(folder)
    if student is None:
        return
    who = f"{folder.path.name} (a {student} student, by its name)"
    guidance = float(sampling.guidance_scale)
    if guidance > 1.0:
        logger.warning(
            "sampling.guidance_scale %s: %s samples without classifier-free guidance; set 0 "
            "(guidance doubles every call's cost and over-saturates its images)",
            guidance,
            who,
        )
    if sampling.steps > 8:
        logger.warning("sampling.steps %d: %s was distilled for 1-8 steps", sampling.steps, who)
    spacing = getattr(sched.config, "timestep_spacing", None)
    if spacing is not None and spacing != "trailing":
        logger.warning(
            "timestep spacing %r: %s samples with trailing timesteps; set "
            "sampling.timestep_spacing: trailing",
            spacing,
            who,
        )


# -- loading -------------------------------------------------------------------------------


def quiet_hf() -> None:
    """No hub access and no progress bars in worker processes."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


@contextlib.contextmanager
def readable_view(folder: ModelFolder) -> Iterator[Path]:
    """A temporary folder of symlinks to only the files loaders may read.

    Pickles, ONNX and the like are simply absent, so no loader can fall back to them.
    """
    with tempfile.TemporaryDirectory(prefix="synthgen-model-") as tmp:
        root = Path(tmp)
        for p in folder.readable_files():
            link = root / p.relative_to(folder.path)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(p.resolve())
        yield root


def load_pipeline(
    model_path: Path,
    scheduler: str,
    dtype: str,
    device: str,
    cpu_threads: int | None = None,
    *,
    variant: str | None = None,
    offload: str = "none",
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    timestep_spacing: str | None = None,
) -> Any:
    """Load a checked pipeline folder: safetensors only, local files only, no remote code.

    The folder's safety checker is not part of the pipeline (diffusers would black out
    flagged images); `load_safety_checker` loads it separately. `offload` is diffusers'
    CPU offload (`model`: whole components, `sequential`: layer by layer), for GPUs.
    `scheduler` (a recipe sampler name, or `native`) and `timestep_spacing` make the
    sampler from the folder's scheduler config.
    """
    import torch
    from diffusers import DiffusionPipeline

    quiet_hf()
    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    folder = inspect_folder(model_path, variant, safety_checker=False)
    extra: dict[str, Any] = {}
    for name in CHECKER_COMPONENTS:
        if isinstance(folder.index.get(name), list) and folder.index[name][0] is not None:
            extra[name] = None
    if "requires_safety_checker" in folder.index:
        extra["requires_safety_checker"] = False
    extra.update(folder.family.extra_load)  # e.g. SDXL: no watermark of diffusers' own
    with readable_view(folder) as view:
        pipe = DiffusionPipeline.from_pretrained(
            str(view),
            dtype=getattr(torch, dtype),
            use_safetensors=True,
            local_files_only=True,
            variant=variant,
            **extra,
        )
    if scheduler != "native" or timestep_spacing is not None:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config, timestep_spacing)
    pipe.set_progress_bar_config(disable=True)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe = pipe.to(device)
    vae = getattr(pipe, "vae", None)
    if vae is not None and vae_slicing:
        vae.enable_slicing()
    if vae is not None and vae_tiling:
        vae.enable_tiling()
    logger.info("loaded %s from %s on %s (%s)", type(pipe).__name__, model_path, device, dtype)
    return pipe


def load_safety_checker(model_path: Path, device: str = "cpu", dtype: str = "float32") -> Any:
    """The folder's own safety checker and feature extractor, from safetensors, or None.

    Returns `(checker, feature_extractor)`: a `StableDiffusionSafetyChecker` (call it as
    diffusers does: `checker(images=np_images, clip_input=extractor(pil_images,
    return_tensors="pt").pixel_values)` returns `(images, has_nsfw_concept)`; its
    `concept_embeds_weights` / `special_care_embeds_weights` are the thresholds) and a
    `CLIPImageProcessor`. None when the folder has no checker.
    """
    import torch

    quiet_hf()
    folder = inspect_folder(model_path, None, safety_checker=True)
    if not folder.has_safety_checker:
        return None
    by_name = {c.name: c for c in folder.components}
    checker_cls = _component_class(
        model_path,
        "safety_checker",
        by_name["safety_checker"].library,
        by_name["safety_checker"].class_name,
    )
    with readable_view(folder) as view:
        checker = cast(Any, checker_cls).from_pretrained(
            str(view / "safety_checker"),
            dtype=getattr(torch, dtype),
            use_safetensors=True,
            local_files_only=True,
        )
        extractor = None
        if "feature_extractor" in by_name:
            fe = by_name["feature_extractor"]
            fe_cls = _component_class(model_path, "feature_extractor", fe.library, fe.class_name)
            loader: Any = fe_cls
            extractor = loader.from_pretrained(
                str(view / "feature_extractor"), local_files_only=True
            )
    return checker.to(device).eval(), extractor
