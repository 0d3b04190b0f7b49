"""The Beam ModelHandler that turns GenerationRequests into encoded images (or clips, with a
text-to-video family: `generators.video`) with diffusers."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

if TYPE_CHECKING:
    from synthgen.generators.conditioning import ConditioningSettings
    from synthgen.generators.families import Family
    from synthgen.generators.modes.worker import WorkerInputs

from synthgen.schemas.failures import failed_sample
from synthgen.schemas.media import DEFAULT_VIDEO_FORMAT, Shape
from synthgen.schemas.recipe.sampling import DEFAULT_FPS
from synthgen.schemas.records import GenerationRequest, Sample
from synthgen.storage.codecs import image_codec
from synthgen.storage.host import pin_torch_threads
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
    # Few-step sampling: the scheduler's timestep spacing, explicit timesteps, TCD's eta.
    timestep_spacing: str | None = None
    timesteps: tuple[int, ...] | None = None
    eta: float | None = None
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
    # A video build (a text-to-video family): frames per clip, their rate and the clip's
    # codec (`output.video_format`); None: images.
    num_frames: int | None = None
    fps: int = DEFAULT_FPS
    video_format: str = DEFAULT_VIDEO_FORMAT
    # Feedback guidance of this round (`generators.guidance.FeedbackGuidance`, the probe's
    # bytes with it), where its probe file is (relative to the build: the record), the CLIP
    # folder it differentiates through (local path, recorded path, sha256) and the loader
    # that reads that folder (`validators.clip_folder.load_clip`: generators do not import
    # validators); None: no guidance.
    guidance: Any = None
    guidance_probe: str | None = None
    guidance_clip: tuple[str, str, str] | None = None
    clip_loader: Any = None

    @property
    def video(self) -> bool:
        return self.num_frames is not None

    def generation_options(self) -> dict[str, Any]:
        """The settings beyond the classic ones that change what is computed (provenance)."""
        options = {
            "variant": self.variant,
            "vae_slicing": self.vae_slicing,
            "vae_tiling": self.vae_tiling,
            "max_sequence_length": self.max_sequence_length,
        } | {  # recorded only when set: older records keep their options as they were
            k: v
            for k, v in (
                ("timestep_spacing", self.timestep_spacing),
                ("timesteps", list(self.timesteps) if self.timesteps else None),
                ("eta", self.eta),
            )
            if v is not None
        }
        if self.guidance is not None:  # a guided round: its probe and the CLIP it steers by
            assert self.guidance_clip is not None
            _, clip_recorded, clip_sha = self.guidance_clip
            options["guidance"] = self.guidance.describe(self.guidance_probe) | {
                "clip": clip_recorded,
                "clip_sha256": clip_sha,
            }
        if not self.video:  # an image build records no clip options
            return options
        return options | {
            "num_frames": self.num_frames,
            "fps": self.fps,
            "video_format": self.video_format,
        }


@dataclass(frozen=True)
class ModelCall:
    """One pipeline call: `padded` requests (a fixed `compute_batch` shape), the first `real`
    of which are kept, and the parameters every one of them shares."""

    padded: list[GenerationRequest]
    real: int
    params: Any  # generators.adapters.CallParams: steps, guidance, LoRAs

    @property
    def requests(self) -> list[GenerationRequest]:
        return self.padded[: self.real]


@dataclass
class CallOutput:
    """What one model call leaves on the host: uint8 pixels (N, H, W, C) of its real requests
    (clips: (N, F, H, W, C)) and, per image, whether every value the pipeline produced was
    finite."""

    pixels: Any  # numpy uint8 array
    finite: list[bool]


class LoadedModel:
    """What `DiffusersHandler.load_model` returns: one loaded pipeline and its conditioning
    state (`WorkerInputs`: the pipelines each mode derived from it, the source images and
    masks read for it), so nothing of one model lives in module globals."""

    def __init__(self, pipe: Any, conditioning: ConditioningSettings | None = None):
        from synthgen.generators.modes.worker import WorkerInputs

        self.pipe = pipe
        self.inputs: WorkerInputs = WorkerInputs(conditioning)
        self.guidance_clip: Any = None  # feedback guidance's CLIP, loaded on first guided call
        # path -> the worker's scorers' float32 copy of that CLIP folder or None, where the
        # model runs beside them (pipelines.generate.Worker): guidance uses it, not another
        self.scorer_clip: Callable[[str], Any] | None = None


def guidance_clip(loaded: LoadedModel, settings: GenerationSettings) -> Any:
    """The CLIP model feedback guidance differentiates through: the scorers' copy of the
    same folder where it is float32 (the same bytes as `regenerate`, which loads its own),
    else one loaded per model copy (a GPU's scorers run in half precision)."""
    if loaded.guidance_clip is None:
        assert settings.clip_loader is not None and settings.guidance_clip is not None
        path = Path(settings.guidance_clip[0])
        shared = None if loaded.scorer_clip is None else loaded.scorer_clip(str(path))
        loaded.guidance_clip = shared or settings.clip_loader(path, settings.device)
    return loaded.guidance_clip


def as_loaded(model: Any, settings: GenerationSettings) -> LoadedModel:
    """`model` as a LoadedModel under `settings`' conditioning: itself, or a bare pipeline
    with fresh conditioning state."""
    if not isinstance(model, LoadedModel):
        return LoadedModel(model, settings.conditioning)
    if model.inputs.settings is not settings.conditioning:  # e.g. a copy with other steps
        model.inputs.settings = settings.conditioning
    return model


def plan_calls(
    settings: GenerationSettings, requests: Sequence[GenerationRequest]
) -> list[ModelCall]:
    """The pipeline calls that generate `requests`: grouped by what a call shares (image
    conditioning, steps, guidance, LoRAs; first appearance first), each group cut into
    fixed-shape chunks of `compute_batch`, a short one padded with copies of its last request.

    Every image is computed in a batch of the same shape, so float rounding does not depend
    on how the work was grouped (an image depends on its own request and the call's shape,
    never on its neighbours). Grouping a whole shard before cutting makes as few padded
    calls as the shard's mix of call parameters allows.
    """
    from synthgen.generators.adapters import call_chunks
    from synthgen.generators.conditioning import assign_sources, group_by_conditioning

    groups = [list(requests)]
    if settings.conditioning is not None:
        requests = assign_sources(settings.conditioning, requests)
        groups = group_by_conditioning(settings.conditioning, requests)
    s = settings
    return [
        ModelCall(padded, real, params)
        for group in groups
        for padded, real, params in call_chunks(
            group, s.steps, s.guidance_scale, s.adapters, s.compute_batch
        )
    ]


def run_call(model: Any, settings: GenerationSettings, call: ModelCall) -> CallOutput:
    """One pipeline call on `model` and its images as uint8 (`call_model`, then `to_host`)."""
    return to_host(call_model(model, settings, call), settings)


def to_host(images: Any, settings: GenerationSettings) -> CallOutput:
    """A call's output on the host: images through `to_pixels`, clips through
    `generators.video.to_frames`."""
    if settings.video:
        from synthgen.generators.video import to_frames

        return to_frames(images)
    return to_pixels(images)


def call_model(model: Any, settings: GenerationSettings, call: ModelCall) -> Any:
    """One pipeline call on `model` (a LoadedModel, or a bare pipeline; the caller holds the
    model copy: one call at a time); the call's real images, (N, C, H, W) in [0, 1], still on
    the model's device (a video family: clips, (N, F, C, H, W))."""
    import torch

    from synthgen.generators import conditioning
    from synthgen.generators.adapters import EMPTY_TABLE, activate
    from synthgen.generators.families import FAMILIES, call_kwargs
    from synthgen.generators.guidance import guided
    from synthgen.storage.faults import maybe_fault

    loaded = as_loaded(model, settings)
    pin_torch_threads(settings.device, settings.cpu_threads)  # in the thread that calls
    pipe = loaded.pipe
    family_name = settings.pipeline_class or type(pipe).__name__
    family = FAMILIES[family_name]
    for r in call.requests:
        maybe_fault("generate", r.key)
    maybe_fault("generate_batch", str(call.real))
    generators = [torch.Generator("cpu").manual_seed(r.seed) for r in call.padded]
    if settings.adapters != EMPTY_TABLE:
        activate(pipe, call.params.loras)
    # 1. classifier-free guidance only when the scale asks for it and the family has it
    #    (Flux is guidance-distilled: its guidance_scale is an embedding, no negatives).
    use_cfg = call.params.guidance_scale > 1.0 and family.negative_prompt
    # 2. family options: T5 sequence length, PixArt's exact-size switches.
    extra = call_kwargs(family, settings.max_sequence_length, settings.timesteps, settings.eta)
    if use_cfg:  # a guidance-distilled call (SANA-Sprint) takes no negative_prompt at all
        extra["negative_prompt"] = [r.negative_prompt for r in call.padded]
    if family.video:  # 2b. clips: their length, and their rate where the model takes it
        extra |= video_kwargs(family, settings)
    # 3. image conditioning: the mode's pipeline (derived from `pipe`) and its images.
    run, images = conditioning.conditioned_call(loaded, family_name, call.padded)
    # 4. feedback guidance: each sample steered toward its own class by the round's probe
    #    (a hook on the shared denoiser, for this call only).
    clip = guidance_clip(loaded, settings) if settings.guidance is not None else None
    labels = [r.class_label for r in call.padded]
    with guided(pipe, settings.guidance, labels, clip) as steer, torch.inference_mode():
        out = run(
            prompt=[r.prompt for r in call.padded],
            num_inference_steps=call.params.steps,
            guidance_scale=call.params.guidance_scale,
            height=settings.height,
            width=settings.width,
            generator=generators,
            output_type="pt",
            **extra,
            **images,
            **steer,
        )
    return (out.frames if family.video else out.images)[: call.real]


def video_kwargs(family: Family, settings: GenerationSettings) -> dict[str, Any]:
    """A video family's call arguments: `num_frames`, and the frame rate if it takes one."""
    if settings.num_frames is None:
        raise ValueError(f"{family.name} makes clips: the settings give no num_frames")
    kwargs: dict[str, Any] = {"num_frames": settings.num_frames}
    if family.fps_argument is not None:
        kwargs[family.fps_argument] = settings.fps
    return kwargs


def to_pixels(images: Any) -> CallOutput:
    """A call's images -> finite flags and uint8 (N, H, W, C) pixels on the host.

    Quantisation happens on the images' device, as diffusers' `numpy_to_pil` rounds (clip to
    [0, 1], times 255 in float32, round half to even), so a quarter of the bytes cross to
    the host and the host never converts floats. clamp(x * 255, 0, 255) equals
    clamp(x, 0, 1) * 255 bit for bit; in place, one temporary. A sum is finite exactly when
    every (bounded) value is.
    """
    import torch

    with torch.inference_mode():
        x = images.float()
        finite = torch.isfinite(x.flatten(1).sum(dim=1)).tolist()
        pixels = x.mul(255).clamp_(0.0, 255.0).round_().to(torch.uint8).permute(0, 2, 3, 1)
    return CallOutput(pixels.cpu().numpy(), [bool(f) for f in finite])


def finish_image(
    request: GenerationRequest, pixels: Any, finite: bool, settings: GenerationSettings
) -> tuple[Sample, Any]:
    """A generated image's host work: watermark (when the settings carry a payload and the
    image is large enough), encode and hash; returns the Sample and the pixels it encodes
    (what a lossless file decodes to). An image with non-finite values (NaN latents) raises
    FloatingPointError, which makes it a `failed` sample. A clip (a video build) is finished
    by `generators.video.finish_clip`: the pixels it returns are the stored frames."""
    if settings.video:
        from synthgen.generators.video import finish_clip

        return finish_clip(request, pixels, finite, settings)
    if not finite:
        raise FloatingPointError("non-finite pixel values in the decoded image")
    if settings.watermark is not None and can_carry(pixels.shape[1], pixels.shape[0]):
        pixels = embed_watermark(pixels, bytes.fromhex(settings.watermark))
    codec = image_codec(settings.image_format, settings.png_compress_level, settings.quality)
    data = codec.encode(pixels)
    sample = Sample(
        request=request,
        image_sha256=hashlib.sha256(data).hexdigest(),
        media=codec.media(data, Shape(1, int(pixels.shape[0]), int(pixels.shape[1]))),
    )
    return sample, pixels


def finish_or_fail(
    request: GenerationRequest, pixels: Any, finite: bool, settings: GenerationSettings
) -> Sample:
    """`finish_image`, or the sample's `failed` row when its host work raised."""
    try:
        return finish_image(request, pixels, finite, settings)[0]
    except Exception as exc:
        logger.warning("sample %s failed: %s", request.key, type(exc).__name__)
        return failed_sample(request, exc)


def generate_batch(
    model: Any, settings: GenerationSettings, requests: Sequence[GenerationRequest]
) -> list[Sample]:
    """Generate and finish `requests` here, in order: `plan_calls`, `run_call`, `finish_image`.

    The synchronous path (regeneration, estimates, tests); a build streams the same steps
    (pipelines.generate). One CPU `torch.Generator` per image makes its noise independent of
    batch and worker; fixed-shape calls make its rounding independent of its neighbours.
    """
    loaded = as_loaded(model, settings)  # a bare pipeline: one conditioning state for all
    by_key: dict[str, Sample] = {}
    for call in plan_calls(settings, requests):
        out = run_call(loaded, settings, call)
        for i, r in enumerate(call.requests):
            by_key[r.key] = finish_or_fail(r, out.pixels[i], out.finite[i], settings)
    return [by_key[r.key] for r in requests]


class DeviceOutOfMemory(RuntimeError):
    """The model's device ran out of memory: the build stops at once, with advice."""

    PREFIX = "the device ran out of memory"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an accelerator out-of-memory error (CUDA's, or a backend's text)."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError | DeviceOutOfMemory):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def out_of_memory(settings: GenerationSettings, exc: BaseException, what: str) -> DeviceOutOfMemory:
    """The error a build stops with when `what` ran out of device memory: what to change.

    A call that does not fit is never retried in smaller pieces: every piece is padded back
    to the same fixed shape (`compute_batch`), so it would fail again, 2B - 1 times."""
    s = settings
    return DeviceOutOfMemory(
        f"{DeviceOutOfMemory.PREFIX} ({s.device}, {what}: a call of {s.compute_batch} "
        f"images at {s.width}x{s.height}, {s.dtype}): {type(exc).__name__}. Lower "
        f"model.compute_batch (now {s.compute_batch}), or set model.vae_slicing: true, "
        "model.vae_tiling: true or model.offload: model. Every shard already generated is "
        "kept: run the same command with --resume to continue."
    )


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


def check_media_kind(class_name: str, settings: GenerationSettings) -> None:
    """Settings for clips (`num_frames`) exactly when the pipeline makes clips: a worker
    stops here, before any call, rather than failing every sample."""
    from synthgen.generators.families import FAMILIES

    family = FAMILIES[class_name]
    if family.video != settings.video:
        makes = "clips" if family.video else "images"
        raise ValueError(
            f"{class_name} ({family.name}) makes {makes}; the generation settings give "
            f"num_frames {settings.num_frames}"
        )


class DiffusersHandler(ModelHandler[GenerationRequest, PredictionResult, LoadedModel]):
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

    def load_model(self) -> LoadedModel:
        from synthgen.generators.model_folder import load_pipeline

        s = self._settings
        pipe = load_pipeline(
            Path(s.model_path),
            s.scheduler,
            s.dtype,
            s.device,
            s.cpu_threads,
            variant=s.variant,
            offload=s.offload,
            vae_slicing=s.vae_slicing,
            vae_tiling=s.vae_tiling,
            timestep_spacing=s.timestep_spacing,
        )
        from synthgen.generators.adapters import apply_adapters

        pipe = optimize_for_device(apply_adapters(pipe, s.adapters), s)
        check_media_kind(s.pipeline_class or type(pipe).__name__, s)
        return LoadedModel(pipe, s.conditioning)

    def run_inference(
        self,
        batch: Sequence[GenerationRequest],
        model: LoadedModel,
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
