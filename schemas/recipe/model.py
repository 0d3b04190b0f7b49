"""The model a recipe generates with, and the adapters (LoRA, textual inversion) on top."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from synthgen.schemas.recipe.common import _Frozen
from synthgen.schemas.recipe.fields import RecipePath


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
        return self
