"""The diffusers text-to-image families synthgen loads, and what each one's call accepts.

One row per pipeline class: its family name, whether it samples by epsilon/v-prediction
(`diffusion`) or flow matching (`flow`, SD3/Flux), which component denoises, and the recipe
options its `__call__` supports. A recipe option a family does not support is refused by
`check_recipe_options` before any model loads. Sampler names and their kind live in
`synthgen.schemas.recipe.SCHEDULERS`; the diffusers classes behind them are here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from synthgen.schemas.recipe import SCHEDULERS, Recipe, RecipeError

__all__ = [
    "FAMILIES",
    "SCHEDULER_CLASSES",
    "Family",
    "call_kwargs",
    "check_recipe_options",
    "family_for",
]


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # "diffusion" (epsilon / v-prediction) or "flow" (flow matching)
    denoiser: str  # the pipeline attribute that holds the UNet or the transformer
    negative_prompt: bool = True  # classifier-free guidance with a negative prompt
    max_sequence_length: bool = False  # the call takes a T5 sequence length
    latent_pack: int = 1  # Flux packs 2x2 latent patches: sizes are a multiple of vae * 2
    # the scheduler's set_timesteps arguments the pipeline passes (flow pipelines)
    timestep_args: tuple[str, ...] = ()
    extra_call: dict[str, Any] = field(default_factory=dict)
    # `from_pretrained` arguments: SDXL's own invisible watermark is switched off (synthgen's
    # watermark is the only one; diffusers' would run inside the GPU call, on the thread that
    # drives the device, and leave every image with a second payload)
    extra_load: dict[str, Any] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    "StableDiffusionPipeline": Family("sd", "diffusion", "unet"),
    "StableDiffusionXLPipeline": Family(
        "sdxl", "diffusion", "unet", extra_load={"add_watermarker": False}
    ),
    "StableDiffusion3Pipeline": Family(
        "sd3", "flow", "transformer", max_sequence_length=True, timestep_args=("mu",)
    ),
    "FluxPipeline": Family(
        "flux",
        "flow",
        "transformer",
        negative_prompt=False,
        max_sequence_length=True,
        latent_pack=2,
        timestep_args=("sigmas", "mu"),
    ),
    "PixArtSigmaPipeline": Family(
        "pixart-sigma",
        "diffusion",
        "transformer",
        max_sequence_length=True,
        # the image is made at exactly the recipe's size (no aspect-ratio bins + resize), and
        # captions are not "cleaned" (that needs bs4/ftfy and changes the prompt silently)
        extra_call={"use_resolution_binning": False, "clean_caption": False},
    ),
}

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
}
assert set(SCHEDULER_CLASSES) == set(SCHEDULERS) - {"native"}, "one list of sampler names"


def family_for(class_name: str) -> Family | None:
    return FAMILIES.get(class_name)


def check_recipe_options(recipe: Recipe, class_name: str, family: Family) -> None:
    """Refuse a recipe option the family does not support, naming family and option."""
    s = recipe.sampling
    who = f"{class_name} ({family.name}, {family.kind})"
    wanted = SCHEDULERS.get(s.scheduler, "any")
    if wanted not in ("any", family.kind):
        kinds = ", ".join(n for n, k in SCHEDULERS.items() if k == family.kind)
        raise RecipeError(
            f"sampling.scheduler: {s.scheduler!r} is a {wanted} sampler; {who} needs "
            f"`native` or one of: {kinds}"
        )
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


def call_kwargs(family: Family, max_sequence_length: int | None) -> dict[str, Any]:
    """Family-specific keyword arguments for the pipeline call (besides prompt, size, steps)."""
    kwargs: dict[str, Any] = dict(family.extra_call)
    if max_sequence_length is not None and family.max_sequence_length:
        kwargs["max_sequence_length"] = max_sequence_length
    return kwargs
