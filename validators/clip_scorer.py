"""CLIP image-prompt similarity as a Beam ModelHandler. Scorers add columns; they never drop."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from generators.encoding import decode_image
from schemas.records import Sample, score_column
from validators.clip_folder import ClipBundle


def clip_similarity(
    bundle: ClipBundle, images: list[Any], texts: list[str], compute_batch: int | None = None
) -> list[float]:
    """Cosine similarity between each image and its own text, in [-1, 1].

    With `compute_batch`, the model always sees batches of exactly that many (the tail is
    padded), so a score does not depend on how the work was batched.
    """
    import torch  # noqa: PLC0415

    model, preprocess, tokenizer = bundle.model, bundle.preprocess, bundle.tokenizer
    device = next(model.parameters()).device
    n = compute_batch or len(images)
    scores: list[float] = []
    for start in range(0, len(images), n):
        ims = images[start : start + n]
        txts = texts[start : start + n]
        pad = n - len(ims)
        pixels = torch.stack([preprocess(im) for im in ims + ims[-1:] * pad]).to(device)
        tokens = tokenizer(txts + txts[-1:] * pad).to(device)
        with torch.inference_mode():
            img = model.encode_image(pixels, normalize=True)
            txt = model.encode_text(tokens, normalize=True)
        scores.extend((img * txt).sum(dim=-1).float().cpu().tolist()[: len(ims)])
    return scores


class ClipScoreHandler(ModelHandler[Sample, PredictionResult, Any]):
    """Scores each sample's image against its prompt; the score lands in `clip_<model>_score`."""

    def __init__(
        self, clip_path: str, model_name: str, device: str, batch_size: int, cpu_threads: int = 1
    ):
        super().__init__()
        self._path = clip_path
        self._device = device
        self._batch_size = batch_size
        self._cpu_threads = cpu_threads
        self.column = score_column(model_name)

    def load_model(self) -> Any:
        import torch  # noqa: PLC0415

        from validators.clip_folder import load_clip  # noqa: PLC0415

        if self._device == "cpu":
            torch.set_num_threads(self._cpu_threads)
        return load_clip(Path(self._path), self._device)

    def run_inference(
        self, batch: Sequence[Sample], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        images = [decode_image(s.image) for s in batch]
        scores = clip_similarity(
            model, images, [s.request.prompt for s in batch], compute_batch=self._batch_size
        )
        for sample, score in zip(batch, scores, strict=True):
            sample.scores[self.column] = float(score)
            yield PredictionResult(example=sample, inference=score)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}

    def get_metrics_namespace(self) -> str:
        return "synthgen_score"
