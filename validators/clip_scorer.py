"""CLIP image-prompt similarity as a Beam ModelHandler. Scorers add columns; they never drop."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from generators.encoding import decode_image
from schemas.records import Sample, score_column
from validators.clip_folder import ClipBundle


def clip_similarity(bundle: ClipBundle, images: list[Any], texts: list[str]) -> list[float]:
    """Cosine similarity between each image and its own text, in [-1, 1]."""
    import torch  # noqa: PLC0415

    model, preprocess, tokenizer = bundle.model, bundle.preprocess, bundle.tokenizer
    device = next(model.parameters()).device
    pixels = torch.stack([preprocess(im) for im in images]).to(device)
    tokens = tokenizer(texts).to(device)
    with torch.inference_mode():
        img = model.encode_image(pixels, normalize=True)
        txt = model.encode_text(tokens, normalize=True)
    return (img * txt).sum(dim=-1).float().cpu().tolist()


class ClipScoreHandler(ModelHandler[Sample, PredictionResult, Any]):
    """Scores each sample's image against its prompt; the score lands in `clip_<model>_score`."""

    def __init__(self, clip_path: str, model_name: str, device: str, batch_size: int):
        super().__init__()
        self._path = clip_path
        self._device = device
        self._batch_size = batch_size
        self.column = score_column(model_name)

    def load_model(self) -> Any:
        from validators.clip_folder import load_clip  # noqa: PLC0415

        return load_clip(Path(self._path), self._device)

    def run_inference(
        self, batch: Sequence[Sample], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        images = [decode_image(s.image) for s in batch]
        scores = clip_similarity(model, images, [s.request.prompt for s in batch])
        for sample, score in zip(batch, scores, strict=True):
            sample.scores[self.column] = float(score)
            yield PredictionResult(example=sample, inference=score)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self._batch_size}

    def get_metrics_namespace(self) -> str:
        return "synthgen_score"
