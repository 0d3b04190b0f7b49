"""CLIP image-prompt similarity and label margin as a Beam ModelHandler.

Scorers add columns; they never drop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from synthgen.schemas.records import Sample, score_column
from synthgen.storage.images import decode_image
from synthgen.validators.clip_folder import ClipBundle


def margin_column(model_name: str) -> str:
    return score_column(model_name).removesuffix("_score") + "_label_margin"


def _padded_chunks(items: list[Any], n: int) -> Iterable[tuple[list[Any], int]]:
    for start in range(0, len(items), n):
        chunk = items[start : start + n]
        yield chunk + chunk[-1:] * (n - len(chunk)), len(chunk)


def encode_images(bundle: ClipBundle, images: list[Any], compute_batch: int) -> Any:
    """Normalised image embeddings, computed in fixed-shape batches (tail padded)."""
    import torch

    device = next(bundle.model.parameters()).device
    parts = []
    for chunk, real in _padded_chunks(images, compute_batch):
        pixels = torch.stack([bundle.preprocess(im) for im in chunk]).to(device)
        with torch.inference_mode():
            parts.append(bundle.model.encode_image(pixels, normalize=True)[:real].float().cpu())
    return torch.cat(parts)


def encode_texts(bundle: ClipBundle, texts: list[str], compute_batch: int) -> Any:
    import torch

    device = next(bundle.model.parameters()).device
    parts = []
    for chunk, real in _padded_chunks(texts, compute_batch):
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


class ClipScoreHandler(ModelHandler[Sample, PredictionResult, Any]):
    """Scores each image against its prompt (`clip_<model>_score`) and, zero-shot, against
    every class's first prompt: `clip_<model>_label_margin` is the similarity to its own
    class minus the best other class (NaN with a single class).
    """

    def __init__(
        self,
        clip_path: str,
        model_name: str,
        device: str,
        batch_size: int,
        cpu_threads: int = 1,
        class_prompts: dict[int, str] | None = None,
    ):
        super().__init__()
        self._path = clip_path
        self._device = device
        self._batch_size = batch_size
        self._cpu_threads = cpu_threads
        self._class_prompts = dict(sorted((class_prompts or {}).items()))
        self.column = score_column(model_name)
        self.margin_column = margin_column(model_name)

    def load_model(self) -> Any:
        import torch

        from synthgen.validators.clip_folder import load_clip

        if self._device == "cpu":
            torch.set_num_threads(self._cpu_threads)
        bundle = load_clip(Path(self._path), self._device)
        if len(self._class_prompts) > 1:
            texts = list(self._class_prompts.values())
            bundle.class_embeddings = encode_texts(bundle, texts, len(texts))
        return bundle

    def run_inference(
        self,
        batch: Sequence[Sample],
        model: Any,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """`batch` is one generation batch of samples, scored in place as one result."""
        yield PredictionResult(example=list(batch), inference=self.score(batch, model))

    def score(self, batch: Sequence[Sample], model: Any) -> list[Sample]:
        import torch

        images = [decode_image(s.image) for s in batch]
        img = encode_images(model, images, self._batch_size)
        txt = encode_texts(model, [s.request.prompt for s in batch], self._batch_size)
        scores = (img * txt).sum(dim=-1).tolist()
        class_ids = list(self._class_prompts)
        class_sims = img @ model.class_embeddings.T if model.class_embeddings is not None else None
        for i, sample in enumerate(batch):
            sample.scores[self.column] = float(scores[i])
            margin = float("nan")
            if class_sims is not None and sample.request.class_label in class_ids:
                own = class_ids.index(sample.request.class_label)
                others = torch.cat([class_sims[i, :own], class_sims[i, own + 1 :]])
                margin = float(class_sims[i, own] - others.max())
            sample.scores[self.margin_column] = margin
        return list(batch)

    def should_skip_batching(self) -> bool:
        return True  # elements arrive as the generation step's batches

    def get_metrics_namespace(self) -> str:
        return "synthgen_score"
