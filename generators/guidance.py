"""Feedback guidance: a probe classifier's criterion steers the latents while they denoise.

Every `every` denoising steps, after the scheduler's step, the callback

1. takes the noise prediction of that step, captured by a forward hook on the denoiser
   (with classifier-free guidance the UNet sees [negative; positive] and the two halves are
   combined exactly as the pipeline does: ``u + g * (c - u)``, then guidance rescale);
2. computes the predicted clean latents ``x0`` from the denoiser's input ``x_t`` and the
   scheduler's ``alphas_cumprod`` at the step's timestep (epsilon, v or sample prediction);
3. decodes ``x0`` with the VAE, maps it to [0, 1] as the pipeline's output is, preprocesses it
   with the scoring CLIP model's own transform (applied to tensors; its resize as a linear
   map), embeds it with the CLIP image tower (L2-normalised) and applies the probe;
4. differentiates the criterion (`loss`: cross-entropy to the sample's target class;
   `entropy`: the entropy of the probe's prediction) with respect to ``x_t`` through ``x0``,
   the noise prediction held fixed (no backward pass through the denoiser);
5. returns ``latents - scale * g / rms(g)`` per sample: `scale` is in latent units, the root
   mean square of the change of each latent value. A positive scale lowers the criterion
   (images the probe finds more typical of the class); a negative one raises it (images it
   finds hard, the "informative" samples of feedback-guided synthesis).

No update follows the last step (it would edit the output with no denoising step after it).
Each sample's criterion is summed, so its gradient depends on its own image only. Nothing
random is drawn, so the same call gives the same bytes (tested on CPU); on CUDA the
guidance graph runs with kernels whose backward passes are deterministic (cuDNN
deterministic, math attention, one-hot sums instead of gathers, the resize as a product).
Samplers that keep sigma-scaled latents (Euler) take the step in those units, so the same
`scale` is a smaller change early on, where the latents are large.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthgen.schemas.recipe import RecipeError

logger = logging.getLogger(__name__)

__all__ = [
    "CRITERIA",
    "DEFAULT_EVERY",
    "DEFAULT_SCALE",
    "FeedbackGuidance",
    "GuidanceCallback",
    "Probe",
    "check_guidance_clip",
    "guidance_call_kwargs",
    "guided",
    "read_probe",
    "refuse_guidance",
]

CRITERIA = ("loss", "entropy")
# Measured on models/digits-ldm + digits-clip (tests/generators/test_guidance.py).
DEFAULT_SCALE = 0.1
DEFAULT_EVERY = 2
# Families whose sampling this guidance was built and tested for (epsilon / v-prediction
# UNets whose pipelines hand `latents` to `callback_on_step_end`).
SUPPORTED_FAMILIES = (
    "StableDiffusionPipeline",
    "StableDiffusionXLPipeline",
    "LatentConsistencyModelPipeline",
)
_ACTIVATIONS = ("relu", "gelu")


# -- the probe file ------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A probe read from its safetensors bytes: ``logits = f(x)`` on L2-normalised CLIP
    image embeddings ``x``, one logit per class id in `classes` (row order)."""

    kind: str  # "linear" | "mlp"
    classes: tuple[int, ...]
    embedding: str  # the CLIP model's name the probe was trained on
    tensors: dict[str, Any] = field(repr=False)
    activation: str = "relu"

    @property
    def dim(self) -> int:
        return int(self.tensors["weight" if self.kind == "linear" else "w1"].shape[1])

    def to(self, device: Any) -> Probe:
        moved = {k: v.to(device) for k, v in self.tensors.items()}
        return Probe(self.kind, self.classes, self.embedding, moved, self.activation)

    def logits(self, x: Any) -> Any:
        """(N, C) float32 logits of (N, D) embeddings."""
        import torch

        t = self.tensors
        x = x.float()
        if self.kind == "linear":
            return x @ t["weight"].T + t["bias"]
        act = torch.nn.functional.relu if self.activation == "relu" else torch.nn.functional.gelu
        return act(x @ t["w1"].T + t["b1"]) @ t["w2"].T + t["b2"]

    def rows(self, labels: Sequence[int]) -> list[int]:
        """The logit row of each class id; a label the probe has no row for is an error."""
        if any(c is None for c in labels):
            raise ValueError("feedback guidance: every sample needs a target class id")
        missing = sorted({int(c) for c in labels} - set(self.classes))
        if missing:
            raise ValueError(
                f"feedback guidance: the probe has no row for class id(s) {missing} "
                f"(its classes: {list(self.classes)})"
            )
        return [self.classes.index(int(c)) for c in labels]


def _metadata(data: bytes) -> dict[str, str]:
    if len(data) < 8:
        raise ValueError("probe: not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as exc:
        raise ValueError(f"probe: corrupt safetensors header: {exc}") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


_SHAPES = {
    "linear": {"weight": ("C", "D"), "bias": ("C",)},
    "mlp": {"w1": ("H", "D"), "b1": ("H",), "w2": ("C", "H"), "b2": ("C",)},
}


def _check_shapes(kind: str, tensors: dict[str, Any], n_classes: int) -> None:
    import torch

    expected = _SHAPES[kind]
    if set(tensors) != set(expected):
        raise ValueError(f"probe: a {kind} probe holds {sorted(expected)}, got {sorted(tensors)}")
    sizes: dict[str, int] = {"C": n_classes}
    for name, dims in expected.items():
        t = tensors[name]
        if t.dtype != torch.float32 or t.ndim != len(dims):
            raise ValueError(f"probe: tensor {name!r} must be float32 of {len(dims)} dims")
        for d, size in zip(dims, t.shape, strict=True):
            if sizes.setdefault(d, int(size)) != int(size):
                raise ValueError(
                    f"probe: tensor {name!r} has shape {list(t.shape)}: its {d} dimension does "
                    f"not match ({sizes[d]}; C = the {n_classes} classes of the metadata)"
                )


def read_probe(data: bytes) -> Probe:
    """Parse and check a probe file (the format of validators/probe.py): tensors `weight`
    [C, D], `bias` [C] (mlp: `w1`, `b1`, `w2`, `b2`), float32; metadata `kind`, `classes`
    (JSON list of class ids in row order), `embedding`, `normalise` ("l2")."""
    from safetensors.torch import load

    meta = _metadata(data)
    kind = meta.get("kind")
    if kind not in _SHAPES:
        raise ValueError(f"probe: metadata kind {kind!r}; expected 'linear' or 'mlp'")
    if meta.get("normalise") != "l2":
        raise ValueError(f"probe: metadata normalise {meta.get('normalise')!r}; expected 'l2'")
    try:
        classes = json.loads(meta.get("classes", ""))
    except ValueError:
        classes = None
    if not isinstance(classes, list) or not classes or not all(type(c) is int for c in classes):
        raise ValueError("probe: metadata classes must be a JSON list of class ids")
    if len(set(classes)) != len(classes):
        raise ValueError(f"probe: metadata classes {classes} repeat a class id")
    activation = meta.get("activation", "relu")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"probe: activation {activation!r}; expected one of {_ACTIVATIONS}")
    tensors = load(data)
    _check_shapes(kind, tensors, len(classes))
    return Probe(kind, tuple(classes), meta.get("embedding", ""), tensors, activation)


# -- what a build asks for -------------------------------------------------------------------


@dataclass(frozen=True)
class FeedbackGuidance:
    """Feedback guidance settings with the probe's bytes (small, picklable, hashable by
    content): `criterion` loss | entropy, `scale` in latent units (sign: see the module
    docstring), applied after every `every`-th denoising step."""

    probe: bytes = field(repr=False)
    criterion: str = "loss"
    scale: float = DEFAULT_SCALE
    every: int = DEFAULT_EVERY

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise RecipeError(
                f"balance.feedback.criterion: {self.criterion!r}; expected one of {CRITERIA}"
            )
        if not math.isfinite(self.scale):
            raise RecipeError(f"balance.feedback.scale: must be finite, got {self.scale}")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise RecipeError(f"balance.feedback.every: a whole number >= 1, got {self.every!r}")
        read_probe(self.probe)  # a bad probe file fails here, before any model call

    @classmethod
    def from_file(
        cls,
        path: Path,
        criterion: str = "loss",
        scale: float = DEFAULT_SCALE,
        every: int = DEFAULT_EVERY,
        sha256: str | None = None,
    ) -> FeedbackGuidance:
        """The probe file at `path`; with `sha256` (a round's recorded `probe_sha256`) it
        must be that file."""
        guidance = cls(Path(path).read_bytes(), criterion, float(scale), every)
        if sha256 is not None and guidance.probe_sha256 != sha256:
            raise ValueError(
                f"{path}: probe sha256 {guidance.probe_sha256}, the round recorded {sha256}"
            )
        return guidance

    @property
    def probe_sha256(self) -> str:
        return hashlib.sha256(self.probe).hexdigest()

    def describe(self, probe: str | None = None) -> dict[str, Any]:
        """What provenance records: enough, with the probe file, to run it again; `probe`:
        where the file is (relative to the build, e.g. `_feedback/probe-0.safetensors`)."""
        out: dict[str, Any] = {"guidance": "feedback"}
        if probe is not None:
            out["probe"] = probe
        return out | {
            "probe_sha256": self.probe_sha256,
            "criterion": self.criterion,
            "scale": self.scale,
            "every": self.every,
        }


def _family_kind(name: str) -> tuple[str, str, str]:
    """(pipeline class, family name, kind) of a pipeline class, family name or kind."""
    from synthgen.generators.families import FAMILIES

    for cls_name, fam in FAMILIES.items():
        if name in (cls_name, fam.name):
            return cls_name, fam.name, fam.kind
    kinds = {fam.kind for fam in FAMILIES.values()}
    if name in kinds:
        return "", name, name
    raise RecipeError(
        f"balance.feedback.guidance: unknown family {name!r} (known: {', '.join(FAMILIES)})"
    )


def _has_latents_callback(class_name: str) -> bool:
    import inspect

    import diffusers

    cls = getattr(diffusers, class_name, None)
    if cls is None:
        return False
    params = inspect.signature(cls.__call__).parameters
    return "callback_on_step_end" in params and "latents" in getattr(
        cls, "_callback_tensor_inputs", ()
    )


def refuse_guidance(family: str, pipeline_class: str | None = None) -> None:
    """Raise a RecipeError naming `family` (a pipeline class, family name or kind) when
    feedback guidance cannot work with it; `pipeline_class`: the class a conditioning mode
    derives (e.g. StableDiffusionImg2ImgPipeline), which must take the callback too."""
    cls_name, name, kind = _family_kind(family)
    who = f"{cls_name} ({name}, {kind})" if cls_name else f"the {kind} families"
    where = "balance.feedback.guidance: feedback"
    if kind in ("flow", "trigflow"):
        raise RecipeError(
            f"{where} guidance does not work with {who}: its "
            "denoiser predicts a flow velocity, not the noise of a diffusion with "
            "alphas_cumprod, so no clean-image prediction is made; use guidance: none"
        )
    if cls_name not in SUPPORTED_FAMILIES:
        raise RecipeError(
            f"{where} guidance supports {', '.join(SUPPORTED_FAMILIES)}; "
            f"{who} is not one of them: use guidance: none"
        )
    for c in (cls_name, pipeline_class):
        if c and not _has_latents_callback(c):
            raise RecipeError(
                f"{where} guidance needs a pipeline whose call takes callback_on_step_end "
                f"with latents; {c} ({name}) does not"
            )


def check_guidance_clip(layout: str, name: str) -> None:
    """Refuse a scoring CLIP folder whose image transform is not a torch transform (a
    transformers CLIPModel folder preprocesses with PIL/numpy, not differentiably);
    `layout` is the folder's `ClipFolder.layout`."""
    if layout not in ("open_clip", "hub_open_clip"):
        raise RecipeError(
            f"scoring.clip_model: feedback guidance differentiates through the CLIP model's "
            f"image transform; {name} is a {layout} folder whose transform is not a torch "
            "one: use an open_clip folder (synthgen's or a Hub open_clip one)"
        )


# -- the differentiable path: latents -> x0 -> pixels -> CLIP -> probe ------------------------


def alpha_bar(scheduler: Any, timestep: Any) -> float:
    """The scheduler's alphas_cumprod at `timestep`; between integer timesteps (Euler's
    interpolated ones) from the noise level sigma interpolated as the scheduler does."""
    import numpy as np

    ac = scheduler.alphas_cumprod.detach().double().cpu().numpy()
    t = float(timestep)
    if t.is_integer() and 0 <= t < len(ac):
        return float(ac[int(t)])
    sigmas = np.sqrt((1 - ac) / ac)
    sigma = float(np.interp(t, np.arange(len(ac)), sigmas))
    return 1.0 / (1.0 + sigma * sigma)


def predicted_x0(sample: Any, output: Any, a: float, prediction_type: str) -> Any:
    """The clean latents the denoiser predicts from its input `sample` at alphas_cumprod `a`."""
    if prediction_type == "epsilon":
        return (sample - math.sqrt(1 - a) * output) / math.sqrt(a)
    if prediction_type == "v_prediction":
        return math.sqrt(a) * sample - math.sqrt(1 - a) * output
    if prediction_type == "sample":
        return output
    raise ValueError(f"feedback guidance: unsupported prediction_type {prediction_type!r}")


def decode(vae: Any, latents: Any) -> Any:
    """Pixels in [0, 1] of `latents`, as the pipeline's `output_type="pt"` gives them (a
    float16 VAE that asks for it, SDXL's, decodes in float32 as the pipeline decodes)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    z = latents / vae.config.scaling_factor + shift
    with _upcast(vae):
        image = vae.decode(z.to(vae.dtype), return_dict=False)[0]
    return (image.float() / 2 + 0.5).clamp(0, 1)


@contextmanager
def _upcast(vae: Any) -> Iterator[None]:
    import torch

    if vae.dtype != torch.float16 or not getattr(vae.config, "force_upcast", False):
        yield
        return
    vae.to(torch.float32)  # float16 -> float32 -> float16 is exact: the weights come back
    try:
        yield
    finally:
        vae.to(torch.float16)


_TENSOR_TRANSFORMS = ("CenterCrop", "CenterCropOrPad", "Normalize", "MaybeConvertMode")


def tensor_transform(preprocess: Any, height: int, width: int) -> Callable[[Any], Any]:
    """The CLIP model's own image transform (an open_clip torchvision Compose) applied to a
    (N, 3, height, width) float batch in [0, 1], differentiably: `ToTensor` steps are
    skipped (the batch is already one), a `Resize` becomes the linear map it computes
    (resize matrices made with torchvision's resize and the transform's settings), whose
    backward pass is a deterministic matrix product."""
    steps: list[Callable[[Any], Any]] = []
    size = (height, width)
    for t in getattr(preprocess, "transforms", None) or [preprocess]:
        kind = type(t).__name__
        if kind in ("MaybeToTensor", "ToTensor"):
            continue
        if kind == "Resize":
            step, size = _resize_map(t, size)
            steps.append(step)
        elif kind in _TENSOR_TRANSFORMS:
            steps.append(t)
        else:
            raise ValueError(
                f"feedback guidance: the CLIP image transform has a {kind} step, which is not "
                "a torch tensor transform (an open_clip folder's transform is needed)"
            )

    def apply(x: Any) -> Any:
        for step in steps:
            x = step(x)
        return x

    return apply


def _resize_map(t: Any, size: tuple[int, int]) -> tuple[Callable[[Any], Any], tuple[int, int]]:
    import torch
    from torchvision.transforms import functional as tvf

    h, w = size
    out_h, out_w = (int(s) for s in t(torch.zeros(1, h, w)).shape[-2:])
    if (out_h, out_w) == (h, w):
        return (lambda x: x), size
    with torch.no_grad():
        rows = tvf.resize(torch.eye(h)[None], [out_h, h], t.interpolation, antialias=t.antialias)
        cols = tvf.resize(torch.eye(w)[None], [w, out_w], t.interpolation, antialias=t.antialias)
    rh, rw = rows[0], cols[0]  # (out_h, h), (w, out_w)

    def resize(x: Any) -> Any:
        return rh.to(x) @ x @ rw.to(x)

    return resize, (out_h, out_w)


def criterion_values(logits: Any, rows: Sequence[int], criterion: str) -> Any:
    """Per-sample criterion (N,) of (N, C) logits: cross-entropy to each sample's row, or
    the prediction's entropy (nats). One-hot sums, no gather: deterministic on CUDA."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    if criterion == "loss":
        target = torch.zeros_like(logp)
        target[torch.arange(len(rows)), torch.tensor(rows)] = 1.0
        return -(target * logp).sum(dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


@dataclass
class GuidanceModels:
    """What the guidance graph runs: the pipeline's VAE, the CLIP bundle (its `model` and
    `preprocess`), the probe on the CLIP model's device."""

    vae: Any
    clip: Any
    probe: Probe
    transforms: dict[tuple[int, int], Callable[[Any], Any]] = field(default_factory=dict)

    def criterion(self, x0: Any, rows: Sequence[int], criterion: str) -> Any:
        """Per-sample criterion of the clean latents `x0` (differentiable)."""
        param = next(self.clip.model.parameters())
        image = decode(self.vae, x0)
        size = (int(image.shape[-2]), int(image.shape[-1]))
        if size not in self.transforms:
            self.transforms[size] = tensor_transform(self.clip.preprocess, *size)
        pixels = self.transforms[size](image).to(param.device, dtype=param.dtype)
        embedding = self.clip.model.encode_image(pixels, normalize=True)
        _check_dim(self.probe, int(embedding.shape[-1]))
        return criterion_values(self.probe.logits(embedding), rows, criterion)


@contextmanager
def deterministic_kernels(device: Any) -> Iterator[None]:
    """CUDA kernels whose backward passes are deterministic (cuDNN's deterministic
    algorithms, math attention); nothing changes on other devices."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with (
        torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True),
        sdpa_kernel(SDPBackend.MATH),
    ):
        yield


def normalised_step(grad: Any) -> Any:
    """`grad` scaled per sample to a root mean square of 1; a sample whose gradient is zero
    or not finite gets no update."""
    import torch

    flat = grad.flatten(1)
    rms = flat.pow(2).mean(dim=1).sqrt()
    ok = torch.isfinite(rms) & (rms > 0)
    if not bool(ok.all()):
        logger.warning(
            "feedback guidance: %d of %d samples had a zero or non-finite gradient (no update)",
            int((~ok).sum()),
            len(ok),
        )
    scale = torch.where(ok, 1.0 / torch.where(ok, rms, torch.ones_like(rms)), 0.0)
    safe = torch.where(ok[:, None], flat, torch.zeros_like(flat))
    return (safe * scale[:, None]).view_as(grad)


# -- the callback ------------------------------------------------------------------------------


class _Capture:
    """A forward hook on the denoiser that keeps its latest input sample and output."""

    def __init__(self, denoiser: Any):
        self.sample: Any = None
        self.output: Any = None
        self.calls = 0
        self.handle = denoiser.register_forward_hook(self, with_kwargs=True)

    def __call__(
        self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> None:
        self.sample = args[0] if args else kwargs["sample"]
        self.output = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
        self.calls += 1

    def close(self) -> None:
        self.handle.remove()
        self.sample = self.output = None


class GuidanceCallback:
    """diffusers' `callback_on_step_end`: the feedback guidance update after every
    `every`-th step (steps 0, every, 2 * every, ... before the last). `evaluations` counts
    the updates made; the hook is removed after the last step (or by `close`)."""

    def __init__(
        self, models: GuidanceModels, capture: _Capture, guidance: FeedbackGuidance, rows: list[int]
    ):
        self.models = models
        self.capture = capture
        self.guidance = guidance
        self.rows = rows
        self.evaluations = 0
        self.steps_seen = 0
        self._last_calls = 0

    def __call__(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> Any:
        self.steps_seen += 1
        fresh = self.capture.calls != self._last_calls
        self._last_calls = self.capture.calls
        last = step >= int(pipe.num_timesteps) - 1
        try:
            if step % self.guidance.every == 0 and not last:
                if not fresh:
                    raise RuntimeError("feedback guidance: the denoiser did not run this step")
                kwargs["latents"] = self._update(pipe, timestep, kwargs["latents"])
                self.evaluations += 1
        finally:
            if last:
                self.close()
        return kwargs

    def close(self) -> None:
        self.capture.close()

    def _update(self, pipe: Any, timestep: Any, latents: Any) -> Any:
        import torch

        if latents.ndim != 4 or len(latents) != len(self.rows):
            raise RuntimeError(
                f"feedback guidance: latents of shape {list(latents.shape)} for "
                f"{len(self.rows)} labels (image latents, one per label, are needed)"
            )
        with torch.inference_mode(False), torch.enable_grad():
            grad = self._gradient(pipe, timestep, len(latents), latents.shape[1])
        step = (self.guidance.scale * grad).to(device=latents.device, dtype=latents.dtype)
        return latents - step

    def _gradient(self, pipe: Any, timestep: Any, n: int, channels: int) -> Any:
        """d(sum of criteria)/d x_t through x0 (the noise prediction held fixed), normalised."""
        import torch

        sample = self.capture.sample.clone()[:n, :channels].float().requires_grad_(True)
        eps = _combined_output(pipe, self.capture.output.clone(), n, channels).float()
        a = alpha_bar(pipe.scheduler, timestep)
        prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
        with deterministic_kernels(sample.device):
            x0 = predicted_x0(sample, eps, a, prediction)
            values = self.models.criterion(x0, self.rows, self.guidance.criterion)
            (grad,) = torch.autograd.grad(values.sum(), [sample])
        return normalised_step(grad.detach())


def _combined_output(pipe: Any, output: Any, n: int, channels: int) -> Any:
    """The step's noise prediction as the pipeline combines it: the classifier-free
    guidance halves ([negative; positive]) mixed with the pipeline's guidance scale, then
    its guidance rescale; a learned-variance output keeps its first `channels`."""
    output = output[:, :channels]
    if len(output) == n:
        return output
    if len(output) != 2 * n:
        raise RuntimeError(f"feedback guidance: the denoiser saw {len(output)} rows for {n}")
    uncond, cond = output.chunk(2)
    combined = uncond + pipe.guidance_scale * (cond - uncond)
    rescale = float(getattr(pipe, "guidance_rescale", 0.0) or 0.0)
    if rescale > 0:
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
            rescale_noise_cfg,
        )

        combined = rescale_noise_cfg(combined, cond, guidance_rescale=rescale)
    return combined


def _denoiser(pipe: Any) -> Any:
    from synthgen.generators.families import FAMILIES

    family = FAMILIES.get(type(pipe).__name__)
    return getattr(pipe, family.denoiser if family else "unet")


def _embed_dim(model: Any) -> int | None:
    """The image embedding's width where the model says (open_clip: `visual.output_dim`)."""
    dim = getattr(model, "output_dim", None) or getattr(
        getattr(model, "visual", None), "output_dim", None
    )
    return int(dim) if dim else None


def _check_dim(probe: Probe, dim: int | None) -> None:
    if dim is not None and probe.dim != dim:
        raise ValueError(f"feedback guidance: a {probe.dim}-d probe for {dim}-d embeddings")


def guidance_call_kwargs(
    pipe: Any, guidance: FeedbackGuidance, labels: Sequence[int], clip: Any
) -> dict[str, Any]:
    """The diffusers call arguments that run `guidance` on `pipe` (or a pipeline derived
    from it with `from_pipe`: the denoiser is shared) for one call whose i-th prompt has
    target class `labels[i]`. `clip`: a loaded CLIP bundle (`model.encode_image`,
    `preprocess`), the scoring model. Registers a forward hook on the denoiser, removed
    after the call's last step; prefer `guided`, which also removes it when the call fails.
    May be called inside the caller's inference mode: the probe's tensors are made outside
    it (an inference tensor cannot take part in the guidance's backward pass)."""
    import torch

    with torch.inference_mode(False):
        probe = read_probe(guidance.probe)
        probe = probe.to(next(clip.model.parameters()).device)
    _check_dim(probe, _embed_dim(clip.model))
    if probe.embedding and probe.embedding != clip.name:
        raise ValueError(
            f"feedback guidance: the probe was trained on {probe.embedding!r} embeddings; "
            f"the CLIP model is {clip.name!r}"
        )
    rows = probe.rows(labels)
    models = GuidanceModels(pipe.vae, clip, probe)
    callback = GuidanceCallback(models, _Capture(_denoiser(pipe)), guidance, rows)
    return {"callback_on_step_end": callback, "callback_on_step_end_tensor_inputs": ["latents"]}


@contextmanager
def guided(
    pipe: Any, guidance: FeedbackGuidance | None, labels: Sequence[int], clip: Any
) -> Iterator[dict[str, Any]]:
    """`guidance_call_kwargs` as a context: the hook is removed on leaving, even when the
    call fails; a call that never ran the callback raises. With `guidance` None: no
    arguments, nothing hooked."""
    if guidance is None:
        yield {}
        return
    kwargs = guidance_call_kwargs(pipe, guidance, labels, clip)
    callback = kwargs["callback_on_step_end"]
    try:
        yield kwargs
    finally:
        callback.close()
    if callback.steps_seen == 0:  # e.g. a wrapper that dropped the argument
        raise RuntimeError("feedback guidance: the pipeline call never ran the guidance callback")
