"""The Beam ModelHandler that turns GenerationRequests into encoded images with diffusers."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from generators.encoding import encode_image, to_uint8
from schemas.records import GenerationRequest, Sample

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    """What the handler needs from the recipe; small and picklable."""

    model_path: str
    scheduler: str
    steps: int
    guidance_scale: float
    height: int
    width: int
    dtype: str
    device: str
    compute_batch: int
    cpu_threads: int
    image_format: str
    png_compress_level: int
    quality: int


def generate_batch(
    pipe: Any, settings: GenerationSettings, requests: Sequence[GenerationRequest]
) -> list[Sample]:
    """Run the pipeline on requests in fixed-shape chunks of `compute_batch`.

    A short chunk is padded with copies of its last request, so every image is computed in a
    batch of the same shape: float rounding then does not depend on how Beam batched the work
    (an image does not depend on its neighbours, only on the batch shape). One CPU
    `torch.Generator` per image makes its noise independent of batch and worker.
    """
    import torch  # noqa: PLC0415

    from pipelines.faults import maybe_fault  # noqa: PLC0415

    for r in requests:
        maybe_fault("generate", r.key)
    samples: list[Sample] = []
    n = settings.compute_batch
    for start in range(0, len(requests), n):
        chunk = list(requests[start : start + n])
        padded = chunk + [chunk[-1]] * (n - len(chunk))
        generators = [torch.Generator("cpu").manual_seed(r.seed) for r in padded]
        # 1. classifier-free guidance only when the scale asks for it; negatives pass through.
        use_cfg = settings.guidance_scale > 1.0
        with torch.inference_mode():
            out = pipe(
                prompt=[r.prompt for r in padded],
                negative_prompt=[r.negative_prompt for r in padded] if use_cfg else None,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale,
                height=settings.height,
                width=settings.width,
                generator=generators,
                output_type="np",
            )
        # 2. quantise and encode on the worker: only bytes cross the Beam boundary.
        for request, image in zip(chunk, out.images, strict=False):
            pixels = to_uint8(image)
            data = encode_image(
                pixels, settings.image_format, settings.png_compress_level, settings.quality
            )
            samples.append(
                Sample(
                    request=request,
                    image=data,
                    image_sha256=hashlib.sha256(data).hexdigest(),
                    width=int(pixels.shape[1]),
                    height=int(pixels.shape[0]),
                )
            )
    return samples


class DiffusersHandler(ModelHandler[GenerationRequest, PredictionResult, Any]):
    """Loads any diffusers text-to-image pipeline folder once per worker and generates.

    Each element is already a batch: a list of up to `batch_size` requests of one shard, made
    by the planning step. Batches are formed by position, not by BatchElements' buffering, so
    no output waits for a bundle to finish (some runners, Dask among them, drop outputs
    emitted at bundle end) and the batch size is exactly the recipe's.
    """

    def __init__(self, settings: GenerationSettings, batch_size: int):
        super().__init__()
        self._settings = settings
        self._batch_size = batch_size

    def load_model(self) -> Any:
        from generators.model_folder import load_pipeline  # noqa: PLC0415

        s = self._settings
        return load_pipeline(Path(s.model_path), s.scheduler, s.dtype, s.device, s.cpu_threads)

    def run_inference(
        self,
        batch: Sequence[GenerationRequest],
        model: Any,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """`batch` is one planned batch; one result holds all of its samples."""
        yield PredictionResult(
            example=list(batch), inference=generate_batch(model, self._settings, batch)
        )

    def should_skip_batching(self) -> bool:
        return True  # elements arrive as batches (see the class docstring)

    def get_metrics_namespace(self) -> str:
        return "synthgen_generate"

    def share_model_across_processes(self) -> bool:
        return False
