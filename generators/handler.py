"""The Beam ModelHandler that turns GenerationRequests into encoded images with diffusers."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

if TYPE_CHECKING:
    from synthgen.generators.conditioning import ConditioningSettings

from synthgen.schemas.failures import failed_sample
from synthgen.schemas.records import GenerationRequest, Sample
from synthgen.storage.images import encode_image, to_uint8
from synthgen.storage.watermark import can_carry, embed_watermark

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
    channels_last: bool = False
    compile: bool = False
    copies: int = 1
    variant: str | None = None
    offload: str = "none"
    vae_slicing: bool = False
    vae_tiling: bool = False
    max_sequence_length: int | None = None
    # The pipeline class, known before loading; a shared model copy is a proxy whose own
    # type says nothing about the pipeline behind it.
    pipeline_class: str | None = None
    # The invisible watermark's payload (hex, `storage.watermark.watermark_payload` of the
    # recipe hash), embedded in every image large enough to carry it; None embeds nothing.
    watermark: str | None = None
    # LoRAs and embeddings to load (`generators.adapters` table JSON); "{}": none
    adapters: str = "{}"
    # Image conditioning (`generators.conditioning`): modes, settings and source images per
    # class; None: text only.
    conditioning: ConditioningSettings | None = None

    def generation_options(self) -> dict[str, Any]:
        """The settings beyond the classic ones that change what is computed (provenance)."""
        return {
            "variant": self.variant,
            "vae_slicing": self.vae_slicing,
            "vae_tiling": self.vae_tiling,
            "max_sequence_length": self.max_sequence_length,
        }


def generate_batch(
    pipe: Any, settings: GenerationSettings, requests: Sequence[GenerationRequest]
) -> list[Sample]:
    """Run the pipeline on requests in fixed-shape chunks of `compute_batch`.

    A short chunk is padded with copies of its last request, so every image is computed in a
    batch of the same shape: float rounding then does not depend on how Beam batched the work
    (an image does not depend on its neighbours, only on the batch shape). One CPU
    `torch.Generator` per image makes its noise independent of batch and worker.
    """
    import torch

    from synthgen.generators.adapters import EMPTY_TABLE, activate, call_chunks
    from synthgen.generators.conditioning import (
        assign_sources,
        conditioned_call,
        group_by_conditioning,
    )
    from synthgen.generators.families import FAMILIES, call_kwargs
    from synthgen.storage.faults import maybe_fault

    family_name = settings.pipeline_class or type(pipe).__name__
    family = FAMILIES[family_name]
    for r in requests:
        maybe_fault("generate", r.key)
    maybe_fault("generate_batch", str(len(requests)))
    pending: list[Any] = []
    encoder = _encoder()
    # Requests sharing steps, guidance and LoRAs share calls (per-class settings, jitter).
    # Image-conditioned requests: their source image picked, grouped by conditioning.
    groups = [list(requests)]
    if settings.conditioning is not None:
        requests = assign_sources(settings.conditioning, requests)
        groups = group_by_conditioning(requests)
    s = settings
    chunks = [
        chunk
        for group in groups
        for chunk in call_chunks(group, s.steps, s.guidance_scale, s.adapters, s.compute_batch)
    ]
    for padded, real, call in chunks:
        chunk = padded[:real]
        generators = [torch.Generator("cpu").manual_seed(r.seed) for r in padded]
        if settings.adapters != EMPTY_TABLE:
            activate(pipe, call.loras)
        # 1. classifier-free guidance only when the scale asks for it and the family has it
        #    (Flux is guidance-distilled: its guidance_scale is an embedding, no negatives).
        use_cfg = call.guidance_scale > 1.0 and family.negative_prompt
        # 2. family options: T5 sequence length, PixArt's exact-size switches.
        extra = call_kwargs(family, settings.max_sequence_length)
        # 3. image conditioning: the mode's pipeline (derived from `pipe`) and its images.
        run, images = conditioned_call(pipe, family_name, padded)
        with torch.inference_mode():
            out = run(
                prompt=[r.prompt for r in padded],
                negative_prompt=[r.negative_prompt for r in padded] if use_cfg else None,
                num_inference_steps=call.steps,
                guidance_scale=call.guidance_scale,
                height=settings.height,
                width=settings.width,
                generator=generators,
                output_type="np",
                **extra,
                **images,
            )
        # 4. quantise and encode on the worker (only bytes cross the Beam boundary), in threads
        #    while the next chunk is generated: PIL's encoders release the GIL.
        for request, image in zip(chunk, out.images, strict=False):
            pending.append((request, encoder.submit(_finish, request, image, settings)))
    return [_result(request, f) for request, f in pending]


_ENCODERS: list[ThreadPoolExecutor] = []


def _encoder() -> ThreadPoolExecutor:
    """One small encoding pool per process, made on first use."""
    if not _ENCODERS:
        _ENCODERS.append(ThreadPoolExecutor(max_workers=2, thread_name_prefix="synthgen-encode"))
    return _ENCODERS[0]


def _finish(request: GenerationRequest, image: Any, settings: GenerationSettings) -> Sample:
    """A decoded image -> its encoded Sample; non-finite pixels (NaN latents) raise."""
    import numpy as np

    if not np.isfinite(image).all():
        raise FloatingPointError("non-finite pixel values in the decoded image")
    return _encode(request, to_uint8(image), settings)


def _result(request: GenerationRequest, future: Any) -> Sample:
    """One image's Sample; an image that failed to finish is that sample's `failed` row."""
    try:
        return future.result()  # type: ignore[no-any-return]
    except Exception as exc:
        logger.warning("sample %s failed: %s", request.key, type(exc).__name__)
        return failed_sample(request, exc)


def _encode(request: GenerationRequest, pixels: Any, settings: GenerationSettings) -> Sample:
    """Watermark (when the settings carry a payload and the image is large enough), encode
    and hash one image; runs in the encoding threads, off the model's critical path."""
    if settings.watermark is not None and can_carry(pixels.shape[1], pixels.shape[0]):
        pixels = embed_watermark(pixels, bytes.fromhex(settings.watermark))
    data = encode_image(
        pixels, settings.image_format, settings.png_compress_level, settings.quality
    )
    return Sample(
        request=request,
        image=data,
        image_sha256=hashlib.sha256(data).hexdigest(),
        width=int(pixels.shape[1]),
        height=int(pixels.shape[0]),
    )


def pick_gpu() -> str:
    """Spread model copies over the visible GPUs (each copy is loaded by its own process)."""
    import os

    import torch

    count = torch.cuda.device_count()
    return f"cuda:{os.getpid() % count}" if count > 1 else "cuda"


def optimize_for_device(pipe: Any, s: GenerationSettings) -> Any:
    """GPU speed options. None changes what is computed, only how (layout, kernels).

    They apply to the family's denoiser, `pipe.unet` or `pipe.transformer`.
    """
    import torch

    from synthgen.generators.families import FAMILIES

    denoiser = FAMILIES[type(pipe).__name__].denoiser
    if s.channels_last:
        getattr(pipe, denoiser).to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if s.compile:
        compiled = torch.compile(
            getattr(pipe, denoiser), mode="max-autotune-no-cudagraphs", fullgraph=False
        )
        setattr(pipe, denoiser, compiled)
    return pipe


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
        from synthgen.generators.model_folder import load_pipeline

        s = self._settings
        device = s.device
        if s.copies > 1 and device == "cuda":
            device = pick_gpu()
        pipe = load_pipeline(
            Path(s.model_path),
            s.scheduler,
            s.dtype,
            device,
            s.cpu_threads,
            variant=s.variant,
            offload=s.offload,
            vae_slicing=s.vae_slicing,
            vae_tiling=s.vae_tiling,
        )
        from synthgen.generators.adapters import apply_adapters

        return optimize_for_device(apply_adapters(pipe, s.adapters), s)

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

    def share_model_across_processes(self) -> bool:
        return self._settings.copies > 1

    def model_copies(self) -> int:
        return self._settings.copies

    def get_metrics_namespace(self) -> str:
        return "synthgen_generate"
