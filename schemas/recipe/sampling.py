"""How each image is sampled: scheduler, steps, guidance (and its per-sample jitter), size;
for a video model, the clip's length and frame rate."""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from synthgen.schemas.recipe.common import _Frozen
from synthgen.schemas.recipe.fields import HashOmit

# How a sampler spaces its timesteps (diffusers' `timestep_spacing`): the recipe's and an
# adapter's choices, and what a LoRA file may declare.
TimestepSpacing = Literal["leading", "trailing", "linspace"]

# Sampler names a recipe may give, each with the kind of model it is for: `diffusion`
# (epsilon / v-prediction: SD 1.x/2.x, SDXL, PixArt, LCM students), `flow` (flow matching:
# SD3, Flux, SANA) or `trigflow` (sCM consistency: SANA-Sprint). `lcm`, `tcd` and `scm` are
# the few-step samplers of distilled models. `native` keeps the model folder's own scheduler.
# The diffusers classes behind the names live in synthgen.generators; this table is the one
# list of names.
SCHEDULERS: dict[str, str] = {
    "native": "any",
    "ddpm": "diffusion",
    "ddim": "diffusion",
    "dpm-solver++": "diffusion",
    "euler": "diffusion",
    "euler-ancestral": "diffusion",
    "unipc": "diffusion",
    "flow-match-euler": "flow",
    "flow-match-heun": "flow",
    "lcm": "diffusion",
    "tcd": "diffusion",
    "scm": "trigflow",
}
MAX_TRAIN_TIMESTEP = 999
DEFAULT_FPS = 8  # a clip's frame rate when the recipe gives none


class GuidanceJitter(_Frozen):
    """Per-sample guidance scale: one of `levels` evenly spaced values from `low` to `high`.

    Drawn per sample from (recipe seed, key). Images sharing a value share fixed-shape model
    calls, so a few levels keep those calls full."""

    low: float = Field(ge=0.0, le=50.0)
    high: float = Field(ge=0.0, le=50.0)
    levels: int = Field(default=5, ge=2, le=101)

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, v: Any) -> Any:
        if isinstance(v, list | tuple):
            if len(v) != 2:
                raise ValueError("give [low, high] or {low, high, levels}")
            return {"low": v[0], "high": v[1]}
        return v

    @model_validator(mode="after")
    def _ordered(self) -> GuidanceJitter:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self

    def values(self) -> list[float]:
        step = (self.high - self.low) / (self.levels - 1)
        return [round(self.low + i * step, 6) for i in range(self.levels)]


class SamplingSpec(_Frozen):
    scheduler: str = Field(
        default="native",
        description="`native` (the model folder's own) or a sampler of the model's family: "
        + ", ".join(n for n in SCHEDULERS if n != "native"),
    )
    steps: int = Field(default=20, ge=1, le=1000, description="denoising steps per image")
    guidance_scale: float = Field(
        default=1.0,
        ge=0.0,
        le=50.0,
        description="classifier-free guidance scale (<= 1: no guidance; a guidance-distilled "
        "family reads it as its guidance embedding)",
    )
    height: int = Field(default=512, ge=8, le=4096)
    width: int = Field(default=512, ge=8, le=4096)
    negative_prompt: str = ""
    max_sequence_length: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="T5 prompt length (SD3, Flux, PixArt); null keeps the pipeline's default",
    )
    guidance_jitter: Annotated[GuidanceJitter | None, HashOmit.IF_DEFAULT] = Field(
        default=None,
        description="per-sample guidance drawn from `levels` evenly spaced values in "
        "[low, high] (or `[low, high]`); a class's own guidance_scale is not jittered",
    )
    timestep_spacing: Annotated[TimestepSpacing | None, HashOmit.IF_DEFAULT] = Field(
        default=None,
        description="how the sampler spaces its timesteps (Turbo / Hyper-SD sample with "
        "`trailing`); null keeps the scheduler config's",
    )
    timesteps: Annotated[list[int] | None, HashOmit.IF_DEFAULT] = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="explicit training timesteps, strictly decreasing (DMD2-style, e.g. "
        "[999, 749, 499, 249]); `steps` must equal their number",
    )
    eta: Annotated[float | None, HashOmit.IF_DEFAULT] = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="the tcd sampler's stochasticity (gamma); null keeps the pipeline's",
    )

    num_frames: Annotated[int | None, HashOmit.IF_DEFAULT] = Field(
        default=None,
        ge=1,
        le=1024,
        description="frames per clip: a video build (a text-to-video model: Wan 4k+1, LTX and "
        "CogVideoX 8k+1, AnimateDiff any); null: an image build",
    )
    fps: Annotated[int, HashOmit.IF_DEFAULT] = Field(
        default=DEFAULT_FPS,
        ge=1,
        le=120,
        description="frames per second of each clip (only with num_frames); LTX conditions "
        "on it, every clip's container records it",
    )

    @model_validator(mode="after")
    def _fps_needs_frames(self) -> SamplingSpec:
        if self.num_frames is None and self.fps != DEFAULT_FPS:
            raise ValueError("fps: the frame rate of clips; set num_frames too, or remove fps")
        return self

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, v: str) -> str:
        if v not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {v!r}; choose one of {', '.join(SCHEDULERS)}")
        return v

    @field_validator("timesteps")
    @classmethod
    def _decreasing_timesteps(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        out = [t for t in v if not 0 <= t <= MAX_TRAIN_TIMESTEP]
        if out:
            raise ValueError(f"timestep {out[0]} is outside [0, {MAX_TRAIN_TIMESTEP}]")
        if any(a <= b for a, b in itertools.pairwise(v)):
            raise ValueError(f"timesteps must be strictly decreasing, got {v}")
        return v

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"must be a multiple of 8, got {v}")
        return v
