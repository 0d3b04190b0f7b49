"""The diffusers text-to-image and text-to-video families synthgen loads, and what each
one's call accepts.

One row per pipeline class: its family name, whether it samples by epsilon/v-prediction
(`diffusion`), flow matching (`flow`, SD3/Flux/SANA/Wan/LTX) or TrigFlow consistency
(`trigflow`, SANA-Sprint), which component denoises, whether it makes clips (`video`, with
the frame counts it makes exactly) and the recipe options its `__call__` supports. A
recipe option a family does not support is refused by `check_recipe_options` before any model
loads, and so is a convention a distilled family was trained for (its step range, its guidance
embedding, its prompt length). Sampler names and their kind live in
`synthgen.schemas.recipe.SCHEDULERS`; the diffusers classes behind them are here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from synthgen.schemas.recipe import SCHEDULERS, Recipe, RecipeError

logger = logging.getLogger(__name__)

__all__ = [
    "FAMILIES",
    "FEW_STEP_SAMPLERS",
    "SCHEDULER_CLASSES",
    "VIDEO_FAMILIES",
    "Family",
    "FrameRule",
    "call_kwargs",
    "check_frames",
    "check_recipe_options",
    "family_for",
]


@dataclass(frozen=True)
class FrameRule:
    """The clip lengths a video family makes exactly: `step * k + offset` frames (k >= 0,
    at least `minimum`, at most `maximum` when the model has a limit). Any other count is
    silently rounded by the pipeline (Wan), or decoded to another length (LTX, CogVideoX)."""

    step: int = 1
    offset: int = 0
    minimum: int = 1
    maximum: int | None = None
    why: str = ""  # the reason, for messages

    def allows(self, n: int) -> bool:
        if n < self.minimum or (self.maximum is not None and n > self.maximum):
            return False
        return n % self.step == self.offset % self.step

    def describe(self) -> str:
        limit = f", at most {self.maximum}" if self.maximum is not None else ""
        if self.step == 1:
            return f"any number of frames (at least {self.minimum}{limit})"
        form = f"{self.step}k+{self.offset}" if self.offset else f"{self.step}k"
        near = ", ".join(str(self.step * k + self.offset) for k in range(1, 4))
        return f"{form} frames (e.g. {near}; at least {self.minimum}{limit})"


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # "diffusion" (epsilon / v-prediction), "flow" or "trigflow" (sCM)
    denoiser: str  # the pipeline attribute that holds the UNet or the transformer
    negative_prompt: bool = True  # classifier-free guidance with a negative prompt
    max_sequence_length: bool = False  # the call takes a T5 / Gemma sequence length
    latent_pack: int = 1  # Flux packs 2x2 latent patches: sizes are a multiple of vae * 2
    # the scheduler's set_timesteps arguments the pipeline passes (flow pipelines, LCM)
    timestep_args: tuple[str, ...] = ()
    extra_call: dict[str, Any] = field(default_factory=dict)
    # `from_pretrained` arguments: SDXL's own invisible watermark is switched off (synthgen's
    # watermark is the only one; diffusers' would run inside the GPU call, on the thread that
    # drives the device, and leave every image with a second payload)
    extra_load: dict[str, Any] = field(default_factory=dict)
    # conventions of the model: the longest text sequence it was trained with, the most
    # steps a distilled student samples well (refused above), sides the pipeline requires
    max_tokens: int | None = None
    # False: a longer prompt is warned about, not refused (a family whose recipes built with
    # longer ones before the limit was checked, and whose pipeline accepts them)
    refuse_long_prompts: bool = True
    max_steps: int | None = None
    size_multiple: int = 8
    # samplers the pipeline's denoising loop works with (empty: every sampler of its kind)
    samplers: tuple[str, ...] = ()
    # the guidance scale is an embedding of the distilled denoiser, not classifier-free
    # guidance: what it means, for messages
    embedded_guidance: str | None = None
    # a text-to-video pipeline: the call takes `num_frames` and returns `.frames`; None: an
    # image family (a recipe with `sampling.num_frames` is refused)
    frames: FrameRule | None = None
    # the call also takes the clip's frame rate (LTX conditions on it): its argument name
    fps_argument: str | None = None

    @property
    def video(self) -> bool:
        return self.frames is not None


_EXACT = {"use_resolution_binning": False, "clean_caption": False}

FAMILIES: dict[str, Family] = {
    "StableDiffusionPipeline": Family("sd", "diffusion", "unet"),
    "StableDiffusionXLPipeline": Family(
        "sdxl", "diffusion", "unet", extra_load={"add_watermarker": False}
    ),
    "StableDiffusion3Pipeline": Family(
        "sd3",
        "flow",
        "transformer",
        max_sequence_length=True,
        timestep_args=("mu",),
        max_tokens=512,
    ),
    "FluxPipeline": Family(
        "flux",
        "flow",
        "transformer",
        negative_prompt=False,
        max_sequence_length=True,
        latent_pack=2,
        timestep_args=("sigmas", "mu"),
        max_tokens=512,
        embedded_guidance="Flux's guidance embedding",
    ),
    "PixArtSigmaPipeline": Family(
        "pixart-sigma",
        "diffusion",
        "transformer",
        max_sequence_length=True,
        # the image is made at exactly the recipe's size (no aspect-ratio bins + resize), and
        # captions are not "cleaned" (that needs bs4/ftfy and changes the prompt silently)
        extra_call=_EXACT,
        max_tokens=300,
        refuse_long_prompts=False,
    ),
    "PixArtAlphaPipeline": Family(
        "pixart-alpha",
        "diffusion",
        "transformer",
        max_sequence_length=True,
        extra_call=_EXACT,
        max_tokens=120,
    ),
    "LatentConsistencyModelPipeline": Family(
        "lcm",
        "diffusion",
        "unet",
        negative_prompt=False,
        timestep_args=("original_inference_steps",),
        max_steps=8,
        samplers=("lcm",),
        embedded_guidance="the LCM student's guidance embedding (w)",
    ),
    "SanaPipeline": Family(
        "sana",
        "flow",
        "transformer",
        max_sequence_length=True,
        extra_call=_EXACT,
        max_tokens=300,
        size_multiple=32,
    ),
    "SanaSprintPipeline": Family(
        "sana-sprint",
        "trigflow",
        "transformer",
        negative_prompt=False,
        max_sequence_length=True,
        extra_call=_EXACT,
        max_tokens=300,
        max_steps=4,
        size_multiple=32,
        embedded_guidance="SANA-Sprint's distilled guidance embedding",
    ),
}

# Video families: every sampler of their kind runs their denoising loop (each one tried on the
# tiny builds), except flow-match-heun on LTX, whose set_timesteps takes no flow sigmas.
VIDEO_FAMILIES: dict[str, Family] = {
    "WanPipeline": Family(
        "wan",
        "flow",
        "transformer",
        max_sequence_length=True,
        max_tokens=512,
        size_multiple=16,  # the VAE's 8 x the transformer's 2x2 patches
        frames=FrameRule(4, 1, why="Wan's VAE compresses time 4x; the pipeline rounds others"),
    ),
    "LTXPipeline": Family(
        "ltx",
        "flow",
        "transformer",
        max_sequence_length=True,
        timestep_args=("sigmas", "mu"),
        max_tokens=128,
        size_multiple=32,
        samplers=("flow-match-euler",),
        frames=FrameRule(8, 1, why="LTX-Video's VAE compresses time 8x"),
        fps_argument="frame_rate",
    ),
    "CogVideoXPipeline": Family(
        "cogvideox",
        "diffusion",
        "transformer",
        max_sequence_length=True,
        max_tokens=226,
        size_multiple=16,  # the VAE's 8 x the transformer's 2x2 patches
        frames=FrameRule(
            8, 1, why="CogVideoX's VAE compresses time 4x and decodes latent frames in pairs"
        ),
    ),
    "AnimateDiffPipeline": Family(
        "animatediff",
        "diffusion",
        "unet",
        # the length limit is the folder's motion module's (`model_folder.check_frames`)
        frames=FrameRule(1, 0, why="the motion module attends over any number of frames"),
    ),
}
FAMILIES.update(VIDEO_FAMILIES)

# recipe sampler name -> (diffusers class, config overrides)
SCHEDULER_CLASSES: dict[str, tuple[str, dict[str, Any]]] = {
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpm-solver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "flow-match-euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "flow-match-heun": ("FlowMatchHeunDiscreteScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
    "scm": ("SCMScheduler", {}),
}
# Samplers of distilled students (few steps, little or no classifier-free guidance).
FEW_STEP_SAMPLERS = ("lcm", "tcd", "scm")
assert set(SCHEDULER_CLASSES) == set(SCHEDULERS) - {"native"}, "one list of sampler names"


def family_for(class_name: str) -> Family | None:
    return FAMILIES.get(class_name)


def check_recipe_options(recipe: Recipe, class_name: str, family: Family) -> None:
    """Refuse a recipe option the family does not support, naming family and option."""
    s = recipe.sampling
    who = f"{class_name} ({family.name}, {family.kind})"
    _check_sampler(s.scheduler, who, family)
    check_frames(s.num_frames, who, family)
    if s.negative_prompt and not family.negative_prompt:
        raise RecipeError(
            f"sampling.negative_prompt: {who} is guidance-distilled and takes no negative "
            "prompt; remove it (guidance_scale is the distilled guidance embedding)"
        )
    max_len = getattr(s, "max_sequence_length", None)
    if max_len is not None and not family.max_sequence_length:
        raise RecipeError(
            f"sampling.max_sequence_length: {who} has no T5 text encoder; remove the option"
        )
    if max_len is not None and family.max_tokens is not None and max_len > family.max_tokens:
        message = (
            f"sampling.max_sequence_length: {who} was trained with prompts of at most "
            f"{family.max_tokens} tokens; got {max_len}"
        )
        if family.refuse_long_prompts:
            raise RecipeError(message)
        logger.warning("%s (the tokens past it are noise to the model)", message)
    if s.height % family.size_multiple or s.width % family.size_multiple:
        raise RecipeError(
            f"sampling.height/width: {who} needs sides that are multiples of "
            f"{family.size_multiple}; got {s.height}x{s.width}"
        )
    _check_steps(recipe, who, family)
    _check_timesteps(recipe, class_name, who, family)


def check_frames(num_frames: int | None, who: str, family: Family) -> None:
    """A video family needs `sampling.num_frames` in its frame rule; an image family none."""
    if family.frames is None:
        if num_frames is not None:
            videos = ", ".join(VIDEO_FAMILIES)
            raise RecipeError(
                f"sampling.num_frames: {who} is an image model and makes no clips; remove "
                f"num_frames (and fps), or use a text-to-video model ({videos})"
            )
        return
    rule = family.frames
    if num_frames is None:
        raise RecipeError(
            f"sampling.num_frames: {who} is a text-to-video model; a video recipe gives "
            f"num_frames: {rule.describe()}"
        )
    if not rule.allows(num_frames):
        raise RecipeError(
            f"sampling.num_frames: {who} makes clips of exactly {rule.describe()} "
            f"({rule.why}); got {num_frames}"
        )


def _check_sampler(name: str, who: str, family: Family) -> None:
    wanted = SCHEDULERS.get(name, "any")
    if wanted not in ("any", family.kind):
        kinds = ", ".join(n for n, k in SCHEDULERS.items() if k == family.kind)
        raise RecipeError(
            f"sampling.scheduler: {name!r} is a {wanted} sampler; {who} needs "
            f"`native` or one of: {kinds}"
        )
    if family.samplers and name not in ("native", *family.samplers):
        raise RecipeError(
            f"sampling.scheduler: {name!r} does not work with {who}'s denoising loop; use "
            f"`native` or one of: {', '.join(family.samplers)}"
        )


def _check_steps(recipe: Recipe, who: str, family: Family) -> None:
    """A distilled student samples well only in the step range it was trained for."""
    if family.max_steps is None:
        return
    steps = [("sampling.steps", recipe.sampling.steps)]
    steps += [(f"classes[{c.name}].steps", c.steps) for c in recipe.classes if c.steps]
    for where, n in steps:
        if n > family.max_steps:
            raise RecipeError(
                f"{where}: {who} is a few-step distilled model trained for 1-"
                f"{family.max_steps} steps; got {n}"
            )


def _check_timesteps(recipe: Recipe, class_name: str, who: str, family: Family) -> None:
    """Explicit timesteps: the pipeline's call must take them, and they fix the step count."""
    s = recipe.sampling
    timesteps = getattr(s, "timesteps", None)
    eta = getattr(s, "eta", None)
    if eta is not None and s.scheduler not in ("tcd", "native"):
        raise RecipeError(
            f"sampling.eta: the stochasticity of the tcd sampler; {s.scheduler!r} takes none"
        )
    if eta is not None and "eta" not in _call_parameters(class_name):
        raise RecipeError(f"sampling.eta: {who}'s call takes no eta; remove it")
    if not timesteps:
        return
    if "sigmas" in family.timestep_args or "timesteps" not in _call_parameters(class_name):
        raise RecipeError(
            f"sampling.timesteps: {who} takes no explicit timesteps; use sampling.steps"
        )
    if s.steps != len(timesteps):
        raise RecipeError(
            f"sampling.timesteps: {len(timesteps)} timesteps are {len(timesteps)} steps; "
            f"sampling.steps is {s.steps} (set it to {len(timesteps)})"
        )
    own = [c.name for c in recipe.classes if c.steps not in (None, s.steps)]
    if own:
        raise RecipeError(
            f"classes[{own[0]}].steps: with sampling.timesteps every class samples those "
            "timesteps; remove the class's steps"
        )


def _call_parameters(class_name: str) -> set[str]:
    import inspect

    import diffusers

    return set(inspect.signature(getattr(diffusers, class_name).__call__).parameters)


def call_kwargs(
    family: Family,
    max_sequence_length: int | None,
    timesteps: tuple[int, ...] | None = None,
    eta: float | None = None,
) -> dict[str, Any]:
    """Family-specific keyword arguments for the pipeline call (besides prompt, size, steps)."""
    kwargs: dict[str, Any] = dict(family.extra_call)
    if max_sequence_length is not None and family.max_sequence_length:
        kwargs["max_sequence_length"] = max_sequence_length
    if timesteps:
        kwargs["timesteps"] = list(timesteps)
    if eta is not None:
        kwargs["eta"] = eta
    return kwargs
