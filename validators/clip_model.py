"""The CLIP model the CLIP-based scorers share: checked once, loaded once per worker,
image embeddings computed once per batch."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthgen.schemas.batches import padded_chunks
from synthgen.schemas.recipe import Recipe, resolve_path
from synthgen.schemas.scores import safe_name
from synthgen.validators.clip_folder import ClipBundle, ClipFolder, check_clip_folder, clip_sha256
from synthgen.validators.scorers.base import ScoreBatch, WorkerModels


def encode_images(bundle: ClipBundle, images: Sequence[Any], compute_batch: int) -> Any:
    """Normalised image embeddings (float32, CPU), computed in fixed-shape padded batches."""
    return encode_pixels(bundle, [bundle.preprocess(im) for im in images], compute_batch)


def encode_pixels(bundle: ClipBundle, pixels: Sequence[Any], compute_batch: int) -> Any:
    """`encode_images` from already preprocessed images (one (3, S, S) tensor each, made by
    the host work): only the forward pass runs here, on the model's device and dtype."""
    import torch

    param = next(bundle.model.parameters())
    parts = []
    for chunk, real in padded_chunks(pixels, compute_batch):
        batch = torch.stack(list(chunk)).to(param.device, dtype=param.dtype)
        with torch.inference_mode():
            parts.append(bundle.model.encode_image(batch, normalize=True)[:real].float().cpu())
    return torch.cat(parts)


def encode_texts(bundle: ClipBundle, texts: Sequence[str], compute_batch: int) -> Any:
    """Normalised text embeddings (float32, CPU), computed in fixed-shape padded batches."""
    import torch

    device = next(bundle.model.parameters()).device
    parts = []
    for chunk, real in padded_chunks(texts, compute_batch):
        tokens = bundle.tokenizer(chunk).to(device)
        with torch.inference_mode():
            parts.append(bundle.model.encode_text(tokens, normalize=True)[:real].float().cpu())
    return torch.cat(parts)


def clip_similarity(
    bundle: ClipBundle, images: list[Any], texts: list[str], compute_batch: int | None = None
) -> list[float]:
    """Cosine similarity between each image and its own text, in [-1, 1].

    With `compute_batch`, the model always sees batches of exactly that many (the tail is
    padded), so a score does not depend on how the work was batched.
    """
    n = compute_batch or len(images)
    img = encode_images(bundle, images, n)
    txt = encode_texts(bundle, texts, n)
    return [float(v) for v in (img * txt).sum(dim=-1).tolist()]


@dataclass(frozen=True)
class ClipRef:
    """A checked CLIP folder as the scorers that share it hold it: small and picklable."""

    path: str
    name: str
    sha256: str
    embed_dim: int
    compute_batch: int

    @property
    def column_prefix(self) -> str:
        """`clip_<model>`: score columns are named after their model."""
        return f"clip_{safe_name(self.name)}"

    def load(self, models: WorkerModels) -> ClipBundle:
        """The worker's one copy of this model (loaded on first use)."""
        return models.get(_key(self.path), lambda: _load(self.path, models))

    @property
    def pixels_key(self) -> tuple[str, str]:
        return ("clip_pixels", self.path)

    def prepare(self, image: Any, bundle: ClipBundle, inputs: dict[Any, Any]) -> None:
        """Host work: the image preprocessed for this model (shared by its scorers)."""
        if self.pixels_key not in inputs:
            inputs[self.pixels_key] = bundle.preprocess(image)

    def image_embeddings(self, batch: ScoreBatch, bundle: ClipBundle) -> Any:
        """Normalised embeddings of the batch's images: computed once per batch, from the
        pixels the host work prepared."""
        key = ("clip_image_embeddings", self.path, self.compute_batch)

        def compute() -> Any:
            pixels = batch.inputs(self.pixels_key, bundle.preprocess)
            return encode_pixels(bundle, pixels, self.compute_batch)

        return batch.shared(key, compute)


def _key(path: str) -> tuple[str, str]:
    return ("clip", path)


def float32_copy(models: WorkerModels, path: str) -> ClipBundle | None:
    """The scorers' loaded copy of the CLIP folder at `path` where it is in float32 (on a
    GPU they score in half precision), else None: for work that must compute exactly as a
    freshly loaded copy does (feedback guidance, which `regenerate` repeats)."""
    import torch

    bundle: ClipBundle | None = models.loaded(_key(path))
    if bundle is None or next(bundle.model.parameters()).dtype != torch.float32:
        return None
    return bundle


def _load(path: str, models: WorkerModels) -> ClipBundle:
    from synthgen.validators.clip_folder import load_clip

    if models.device.startswith("cpu"):
        import torch

        torch.set_num_threads(models.cpu_threads)  # float rounding depends on it
    bundle = load_clip(Path(path), models.device)
    if models.device.startswith("cuda"):
        bundle.model.half()  # scoring on the GPU in half precision, as generation runs
    return bundle


def clip_ref(recipe: Recipe, base_dir: Path) -> ClipRef:
    """The recipe's `scoring.clip_model`, checked (raises ModelFolderError); nothing loaded."""
    path = resolve_path(base_dir, recipe.scoring.clip_model)
    folder = check_clip_folder(path)
    stat = folder.weights.stat()
    sha256, dim = _fingerprint(folder, stat.st_mtime_ns, stat.st_size)
    return ClipRef(str(path), folder.name, sha256, dim, recipe.scoring_batch)


@functools.lru_cache(maxsize=16)
def _fingerprint(folder: ClipFolder, mtime_ns: int, size: int) -> tuple[str, int]:
    """(weights sha256, embed_dim); cached so scorers sharing a folder hash it once."""
    config = json.loads(folder.config.read_text(encoding="utf-8"))
    return clip_sha256(folder), int(config["embed_dim"])
