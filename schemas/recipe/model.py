"""The model a recipe generates with, and the adapters (LoRA, textual inversion) on top."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from synthgen.schemas.recipe.common import _Frozen
from synthgen.schemas.recipe.fields import HashOmit, RecipePath
from synthgen.schemas.recipe.sampling import TimestepSpacing


class ModelSpec(_Frozen):
    """A local diffusers pipeline folder (safetensors weights, standard pipeline class)."""

    path: RecipePath = Field(min_length=1)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:\d+)?|mps)$")
    compute_batch: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="images per pipeline call; fixed-shape, so part of what the bytes depend on",
    )
    accelerator: str | None = Field(
        default=None,
        description="Beam resource hint for the model steps, e.g. "
        "'type:nvidia-l4;count:1;install-nvidia-driver' (Dataflow GPU workers)",
    )
    channels_last: bool = Field(default=False, description="UNet/VAE in channels_last (GPU)")
    compile: bool = Field(default=False, description="torch.compile the UNet (GPU)")
    copies: int = Field(
        default=1,
        ge=1,
        le=64,
        description="model copies in each worker process, all on its device; the process's "
        "threads take turns on them, one call at a time per copy",
    )
    cpu_threads: int = Field(
        default=1,
        ge=1,
        le=256,
        description="torch threads per worker on CPU; float rounding depends on it",
    )
    variant: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9_]+$",
        description="weight variant files to load, e.g. 'fp16' for *.fp16.safetensors",
    )
    offload: Literal["none", "model", "sequential"] = Field(
        default="none", description="diffusers CPU offload (GPU memory saver)"
    )
    vae_slicing: bool = Field(default=False, description="decode the batch one image at a time")
    vae_tiling: bool = Field(default=False, description="decode large images in tiles")
    safety_checker: bool = Field(
        default=True,
        description="run the folder's own safety checker (when it has one) as a scorer",
    )
    license: str | None = Field(
        default=None,
        max_length=200,
        description="the model's licence when its folder has no model card (README.md) saying it",
    )
    license_ack: str | None = Field(
        default=None,
        max_length=200,
        description="the licence of the model card you have read and accept; a card declaring "
        "another licence fails the build before anything is generated",
    )


class AdapterSpec(_Frozen):
    """A LoRA or a textual-inversion embedding (a `.safetensors` file) on top of the model."""

    kind: Literal["lora", "textual_inversion"] = "lora"
    path: RecipePath = Field(min_length=1, description="a .safetensors file")
    scale: float = Field(default=1.0, ge=-10.0, le=10.0, description="LoRA weight")
    token: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="textual inversion: the token prompts use; null: the file's one token",
    )
    # A distillation LoRA's own sampler, for a file that does not declare it in its metadata
    # (LCM-LoRA, TCD-LoRA and Hyper-SD as published): the build is refused unless the
    # recipe samples with it. A file that declares another is refused.
    sampler: Annotated[str | None, HashOmit.IF_DEFAULT] = Field(
        default=None,
        description="a distillation LoRA: the sampler it was distilled for (lcm, tcd, ...)",
    )
    timestep_spacing: Annotated[TimestepSpacing | None, HashOmit.IF_DEFAULT] = Field(
        default=None,
        description="a distillation LoRA: the timestep spacing it samples with (Hyper-SD: "
        "trailing)",
    )

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, v: str | None) -> str | None:
        from synthgen.schemas.recipe.sampling import SCHEDULERS

        if v is not None and (v not in SCHEDULERS or v == "native"):
            known = ", ".join(n for n in SCHEDULERS if n != "native")
            raise ValueError(f"sampler {v!r}: a LoRA declares one of {known}")
        return v

    @field_validator("path")
    @classmethod
    def _safetensors_only(cls, v: str) -> str:
        if not v.endswith(".safetensors"):
            raise ValueError(f"{v}: adapters are loaded from .safetensors files only")
        return v

    @model_validator(mode="after")
    def _fields_of_kind(self) -> AdapterSpec:
        if self.kind == "lora" and self.token is not None:
            raise ValueError(f"{self.path}: `token` is for textual_inversion adapters")
        if self.kind == "textual_inversion" and self.scale != 1.0:
            raise ValueError(f"{self.path}: `scale` is for lora adapters")
        if self.kind == "textual_inversion" and (self.sampler or self.timestep_spacing):
            raise ValueError(f"{self.path}: `sampler` / `timestep_spacing` are for lora adapters")
        return self
