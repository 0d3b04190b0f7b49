"""Per-class LoRAs for a balancing build (`balance.adapt: lora`): trained on the driver,
once the output directory is open and before the first round, then generated with.

1. each class still short reads its real images from the balance source (up to
   `balance.lora.max_images`, in source order)
2. its LoRA is reused when an earlier run of this build left one whose training key
   (recipe, model, class, settings, images) and file hash match; otherwise trained
3. the session generates with the table of adapters extended by them; the manifest lists
   them (`adapters`, and under `files` with their sha256)
"""

from __future__ import annotations

import logging
from typing import Any

from synthgen.generators import lora_training
from synthgen.generators.adapters import AdapterRef, adapter_name, with_class_adapters
from synthgen.generators.sources.open import label_resolver
from synthgen.generators.templates import all_prompts
from synthgen.pipelines.resolve import ResolvedRecipe
from synthgen.pipelines.session import BuildSession
from synthgen.schemas.manifest import AdapterInfo, FileInfo
from synthgen.schemas.recipe import BalanceSpec, Recipe, RecipeError

logger = logging.getLogger(__name__)


def check_trainable(resolved: ResolvedRecipe) -> None:
    """Per-class LoRAs train a UNet with peft: refuse other models before anything runs."""
    import importlib.util

    folder = resolved.model
    if folder is not None and folder.family.denoiser != "unet":
        raise RecipeError(
            f"balance.adapt: lora trains a LoRA on a UNet; {folder.class_name} "
            f"({folder.family.name}) denoises with a {folder.family.denoiser}"
        )
    if importlib.util.find_spec("peft") is None:
        raise RecipeError("balance.adapt: lora needs the `peft` library: pip install peft")


def class_images(
    source: Any, recipe: Recipe, classes: set[int], limit: int
) -> dict[int, list[bytes]]:
    """Encoded real images of `classes` from a balance source, at most `limit` per class."""

    resolve = label_resolver(recipe)
    out: dict[int, list[bytes]] = {c: [] for c in classes}
    for image in source.iter_images():
        label, data = image.label, image.data
        class_id = resolve(label)
        if class_id in out and len(out[class_id]) < limit:
            out[class_id].append(data)
    return out


def train_class_adapters(
    session: BuildSession, source: Any, short: set[int]
) -> tuple[dict[str, AdapterInfo], dict[str, FileInfo]]:
    """Train (or reuse) a LoRA for every class id in `short`; the session generates with
    them from now on. Returns the manifest's `adapters` and `files` entries."""
    from synthgen.generators.model_folder import load_pipeline

    recipe = session.recipe
    spec: BalanceSpec = recipe.balance  # type: ignore[assignment]
    settings = spec.lora_settings
    images = class_images(source, recipe, short, settings.max_images)
    names = {c.id: c.name for c in recipe.classes}
    empty = sorted(names[c] for c, imgs in images.items() if not imgs)
    if empty:
        logger.warning("no real images to train a LoRA on for %s", ", ".join(empty))
    by_name = {names[c]: imgs for c, imgs in images.items() if imgs}
    prompts = {
        n: list(all_prompts(recipe, recipe.classes[_index(recipe, n)], limit=1000)) for n in by_name
    }
    m = recipe.model

    def load() -> Any:
        return load_pipeline(session.resolved.model_path, "native", m.dtype, m.device)

    assert session.ctx is not None
    trained = lora_training.class_loras(
        session.out,
        load,
        by_name,
        prompts,
        settings,
        recipe.seed,
        recipe.hash,
        session.ctx.model_sha256,
        recipe.sampling.height,
        recipe.sampling.width,
    )
    refs = {
        name: [AdapterRef("lora", adapter_name(t.sha256), str(t.path), t.sha256, settings.scale)]
        for name, t in trained.items()
    }
    session.use_adapters(with_class_adapters(session.resolved.adapters, refs))
    infos: dict[str, AdapterInfo] = {}
    files: dict[str, FileInfo] = {}
    for name, t in trained.items():
        rel = t.path.relative_to(session.out).as_posix()
        infos[name] = AdapterInfo(
            path=rel,
            sha256=t.sha256,
            images=t.images,
            steps=t.steps,
            rank=settings.rank,
            learning_rate=settings.learning_rate,
            scale=settings.scale,
        )
        files[rel] = FileInfo(sha256=t.sha256, bytes=t.path.stat().st_size)
    return infos, files


def _index(recipe: Recipe, name: str) -> int:
    return next(i for i, c in enumerate(recipe.classes) if c.name == name)
