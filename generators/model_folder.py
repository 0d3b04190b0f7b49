"""Checking and loading a local diffusers pipeline folder without executing anything from it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from synthgen.schemas.errors import ModelFolderError
from synthgen.storage.model_files import refuse_code_and_pickles

__all__ = ["ModelFolderError", "check_diffusers_folder", "load_pipeline"]

logger = logging.getLogger(__name__)

ALLOWED_LIBRARIES = ("diffusers", "transformers")

SCHEDULER_CLASSES = {
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpm-solver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "euler": ("EulerDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFolderError(f"{path.parent}: not a {what}: {path.name} is missing") from None
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"{path}: unreadable {path.name}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: expected a JSON object")
    return data


def check_diffusers_folder(path: Path) -> dict[str, Any]:
    """Validate a diffusers pipeline folder before loading it; returns its model_index.json.

    Refuses: a missing folder, a missing or malformed model_index.json, a pipeline class that
    diffusers does not ship, components from other libraries (custom code), Python files,
    pickle weights, and components without safetensors weights.
    """
    if not path.is_dir():
        raise ModelFolderError(f"{path}: model folder not found")
    index = _read_json(path / "model_index.json", "diffusers pipeline folder")
    refuse_code_and_pickles(path)
    import diffusers

    class_name = index.get("_class_name")
    pipeline_cls = getattr(diffusers, class_name, None) if isinstance(class_name, str) else None
    if pipeline_cls is None or not (
        isinstance(pipeline_cls, type) and issubclass(pipeline_cls, diffusers.DiffusionPipeline)
    ):
        raise ModelFolderError(
            f"{path}/model_index.json: _class_name {class_name!r} is not a diffusers pipeline class"
        )
    for name, spec in index.items():
        if name.startswith("_"):
            continue
        if spec is None or isinstance(spec, bool | int | float | str):
            continue  # pipeline config values such as requires_safety_checker
        if isinstance(spec, list) and spec and spec[0] is None:
            continue
        if not (isinstance(spec, list) and len(spec) == 2):
            raise ModelFolderError(f"{path}/model_index.json: component {name!r} is malformed")
        library, _ = spec
        if library not in ALLOWED_LIBRARIES:
            raise ModelFolderError(
                f"{path}/model_index.json: component {name!r} comes from {library!r}; "
                f"only {', '.join(ALLOWED_LIBRARIES)} components are loaded"
            )
        sub = path / name
        if not sub.is_dir():
            raise ModelFolderError(f"{path}: component folder {name}/ is missing")
        has_config = any(sub.glob("*.json")) or any(sub.glob("*.txt"))
        weights = list(sub.glob("*.safetensors"))
        if not weights and not has_config:
            raise ModelFolderError(f"{sub}: component has neither config nor weights")
        if name in ("unet", "vae", "text_encoder", "transformer") and not weights:
            raise ModelFolderError(f"{sub}: no .safetensors weights (only safetensors are loaded)")
    return index


def make_scheduler(name: str, base_config: Any) -> Any:
    """A diffusers scheduler chosen by recipe name, from the pipeline's own scheduler config."""
    import diffusers

    if name not in SCHEDULER_CLASSES:
        raise ValueError(
            f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULER_CLASSES)}"
        )
    class_name, extra = SCHEDULER_CLASSES[name]
    return getattr(diffusers, class_name).from_config(base_config, **extra)


def scheduler_config(model_path: Path, name: str) -> dict[str, Any]:
    """The effective scheduler config for `name`, read from the folder's scheduler config."""
    base = _read_json(model_path / "scheduler" / "scheduler_config.json", "scheduler folder")
    sched = make_scheduler(name, base)
    return {"class": type(sched).__name__, **dict(sched.config)}


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


def load_pipeline(
    model_path: Path, scheduler: str, dtype: str, device: str, cpu_threads: int | None = None
) -> Any:
    """Load a checked pipeline folder: safetensors only, local files only, no remote code."""
    import torch
    from diffusers import DiffusionPipeline

    quiet_hf()
    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    check_diffusers_folder(model_path)
    pipe = DiffusionPipeline.from_pretrained(
        str(model_path),
        dtype=getattr(torch, dtype),
        use_safetensors=True,
        local_files_only=True,
    )
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    logger.info("loaded %s from %s on %s (%s)", type(pipe).__name__, model_path, device, dtype)
    return pipe
