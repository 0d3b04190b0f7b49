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
    import torch

    device = next(bundle.model.parameters()).device
    parts = []
    for chunk, real in padded_chunks(images, compute_batch):
        pixels = torch.stack([bundle.preprocess(im) for im in chunk]).to(device)
        with torch.inference_mode():
            parts.append(bundle.model.encode_image(pixels, normalize=True)[:real].float().cpu())
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
        return models.get(("clip", self.path), lambda: _load(self.path, models))

    def image_embeddings(self, batch: ScoreBatch, bundle: ClipBundle) -> Any:
        """Normalised embeddings of the batch's images: computed once per batch."""
        key = ("clip_image_embeddings", self.path, self.compute_batch)
        return batch.shared(key, lambda: encode_images(bundle, batch.images, self.compute_batch))


def _load(path: str, models: WorkerModels) -> ClipBundle:
    from synthgen.validators.clip_folder import load_clip

    if models.device == "cpu":
        import torch

        torch.set_num_threads(models.cpu_threads)  # float rounding depends on it
    return load_clip(Path(path), models.device)


def clip_ref(recipe: Recipe, base_dir: Path) -> ClipRef:
    """The recipe's `scoring.clip_model`, checked (raises ModelFolderError); nothing loaded."""
    path = resolve_path(base_dir, recipe.scoring.clip_model)
    folder = check_clip_folder(path)
    stat = folder.weights.stat()
    sha256, dim = _fingerprint(folder, stat.st_mtime_ns, stat.st_size)
    return ClipRef(str(path), folder.name, sha256, dim, recipe.scoring.batch_size)


@functools.lru_cache(maxsize=16)
def _fingerprint(folder: ClipFolder, mtime_ns: int, size: int) -> tuple[str, int]:
    """(weights sha256, embed_dim); cached so scorers sharing a folder hash it once."""
    config = json.loads(folder.config.read_text(encoding="utf-8"))
    return clip_sha256(folder), int(config["embed_dim"])
